"""Calls in the main thread, and ``threading`` imported without stealing "main thread".

:func:`call_soon_in_main` is the one way anything of ours runs in the main
thread (``Py_AddPendingCall``, the documented C API for running a call there
at its next bytecode boundary): this module's import of ``threading``, the
sleep's untrace and the wake's trace on 3.10/3.11 (``_pydevd``), the restart
of the control thread after a fork on 3.13+ (``_runtime``). One ctypes
callback serves them all, and at most one pending call of ours is queued or
running at any time (why: :func:`call_soon_in_main`).

Before Python 3.13, whichever thread first imports ``threading`` becomes its
``main_thread()``. If that is our control thread, two things break in the
host: interpreter exit waits forever for our (never-ending) thread, and
``threading.current_thread() is threading.main_thread()`` turns false in the
real main thread (asyncio's ``get_event_loop()`` then refuses to make a loop).

Importing ``threading`` in the main thread at start-up would avoid this but
costs about 4 ms, most of our start-up budget, for something the host nearly
always does itself soon after (``logging`` and ``asyncio`` import it). A
status request needs no ``threading`` at all; the control thread calls
:func:`ensure_threading` before it first needs it (the first wake or sleep
starts a worker thread, and builds the client):

1. If the main thread already imported ``threading``, nothing to do.
2. Otherwise it asks the main thread (:func:`call_soon_in_main`) to import
   it, and waits briefly.
3. If the main thread is busy in C code (a long ``time.sleep()``), or its
   import failed (the pending call landed in the middle of one of the main
   thread's own imports, found under load), it imports ``threading`` itself,
   takes its own thread out of the shutdown join, and leaves a pending call
   to rebuild the real ``MainThread`` object in the main thread as soon as it
   runs Python code again, the way ``threading._after_fork`` rebuilds it
   after a fork.
"""

from __future__ import annotations

import _thread
import sys

from . import _native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["call_soon_in_main", "ensure_threading", "forget_after_fork"]


def ensure_threading(wait: float = 0.25) -> None:
    """Call from a thread started with ``_thread`` before anything imports ``threading``."""
    if sys.version_info >= (3, 13) or "threading" in sys.modules:
        return  # 3.13 asks the runtime which thread is main
    done = _thread.allocate_lock()
    done.acquire()
    if call_soon_in_main(lambda: _import_in_main(done)):
        done.acquire(timeout=wait)
    # Whatever happened above, this thread must not end up "main": the main
    # thread may be busy in C, or its import may have failed (a pending call
    # can land in the middle of one of the main thread's own imports, and
    # threading then sees a half-initialised functools).
    import threading

    if threading.main_thread().ident == _thread.get_ident():
        _demote_current_thread(threading)
        # Rebuild the real one once the main thread runs Python again. Also
        # when the call above already ran: it found no threading to repair.
        call_soon_in_main(_repair_in_main)


def _import_in_main(done: _thread.LockType) -> None:
    """Runs in the main thread: import threading (which then knows who is main)."""
    try:
        import threading  # noqa: F401 - imported for its side effect
    except BaseException:  # noqa: BLE001, S110 - the control thread checks and falls back
        pass
    finally:
        done.release()
    _repair_in_main()


def _repair_in_main() -> None:
    """Runs in the main thread: fix who threading thinks is main, if it is wrong.

    Imports nothing: it may run in the middle of any import of the main thread.
    """
    threading = sys.modules.get("threading")
    bogus = getattr(threading, "_main_thread", None)
    if bogus is not None and bogus.ident != _thread.get_ident():
        threading._main_thread = threading._MainThread()  # type: ignore[union-attr]


def _demote_current_thread(threading: object) -> None:
    """We imported threading off the main thread: do not be waited for at exit."""
    current = threading.main_thread()  # type: ignore[attr-defined]
    if current.ident != _thread.get_ident():
        return
    current._daemonic = True
    current._name = "detrix-control"
    lock = getattr(current, "_tstate_lock", None)
    locks = getattr(threading, "_shutdown_locks", None)
    guard = getattr(threading, "_shutdown_locks_lock", None)
    if lock is not None and locks is not None and guard is not None:
        with guard:
            locks.discard(lock)


#: Functions waiting for the main thread (:func:`call_soon_in_main`), in order.
_soon: list[Callable[[], object]] = []
#: Whether a pending call of ours is queued or running: at most one at any time.
_soon_pending = [False]
_soon_lock = _native.Lock()
_soon_trampoline: list[object] = []  # the one ctypes callback, made once


def call_soon_in_main(func: Callable[[], object]) -> bool:
    """Run ``func`` in the main thread at its next bytecode boundary; False if impossible.

    All of ours go through one pending call at a time (``Py_AddPendingCall``):
    a call asked for while one is queued or running joins it. Besides keeping
    the queue short, this avoids a CPython 3.11 hang: a pending call that runs
    in a traced thread while another pending call is queued spins forever at
    its next Python function call (the eval breaker stays set for the nested
    call, and traced calls re-check it without moving on). That is what held
    the main thread of a 3.11 process at 100% CPU when a wake followed a sleep
    (the sleep's call still running, the wake's queued). A function already
    waiting is not queued twice.
    """
    with _soon_lock:
        if func in _soon:
            return True
        _soon.append(func)
        if _soon_pending[0]:
            return True  # the pending call queued or running now runs it too
        _soon_pending[0] = True
    _wait_until_main_left_ours()
    _native.wait_for_ended_threads()
    # Not under the lock: 3.13 may run the call at once, inside Py_AddPendingCall.
    if _add_pending_call():
        return True
    _forget_queued()
    return False


def _wait_until_main_left_ours(bound: float = 1.0) -> None:
    """Until the main thread is out of our last pending call (a few bytecodes at most).

    The last one may have finished its work, and be returning, when a new call
    is asked for: CPython would run a pending call queued now at once, inside
    that one, where 3.11 spins. While this thread holds the GIL, the main
    thread is in our pending call only if its stack shows it: between the
    queue and our Python code CPython never lets the GIL go.
    """
    main = _main_ident[0]
    if main is None or main == _native.get_ident():
        return
    deadline = None
    while True:
        frame = sys._current_frames().get(main)
        while frame is not None and frame.f_code not in _our_codes:
            frame = frame.f_back
        if frame is None:
            return
        del frame
        import time

        now = time.monotonic()
        deadline = deadline if deadline is not None else now + bound
        if now > deadline:
            return  # not seen in practice; better a rare spin than a lost call
        _native.sleep(0.001)


def _forget_queued() -> None:
    with _soon_lock:
        del _soon[:]
        _soon_pending[0] = False


def _add_pending_call() -> bool:
    try:
        if not _soon_trampoline:
            _soon_trampoline.append(_make_trampoline(_run_soon))
        import ctypes

        return bool(ctypes.pythonapi.Py_AddPendingCall(_soon_trampoline[0], None) == 0)
    except Exception:  # noqa: BLE001 - no ctypes (some embedded builds), or a full queue
        return False


def forget_after_fork() -> None:
    """In a forked child: calls the parent scheduled are the parent's business."""
    global _soon_lock
    _soon_lock = _native.Lock()
    del _soon[:]
    _soon_pending[0] = False
    _native.forget_ending_after_fork()


#: CPython 3.11 only: while the main thread runs a pending call of ours and is traced
#: (pydevd's tracer, a coverage tool), another pending call queued meanwhile leaves the
#: eval breaker set, and the main thread then spins for ever at its next Python
#: function call (3.11's traced function entry checks the eval breaker and comes back
#: to itself; 3.10 and 3.12+ move on). Our own calls never overlap (one at a time);
#: greenlet queues one whenever a thread that used it dies, and under gevent every
#: thread that imports uses it. Seen as a gevent app's main thread at 100% CPU for
#: good, no logpoint ever reporting, in 2% of first wakes under load (the wake's own
#: threads ended while its call ran). Two guards on 3.11: our pending call runs with
#: tracing paused for this thread (an untraced function entry moves on), and it is not
#: queued while an OS thread of ours is still ending (``_native``), which covers the
#: call's first instruction, before the pause (the listen() helper ends just before
#: the wake's call is queued).
_PENDING_CALL_SPIN = sys.version_info[:2] == (3, 11)
if _PENDING_CALL_SPIN:
    _native.track_ending_threads[0] = True


def _run_soon() -> None:
    """The pending call: what was waiting when it began, and what joined meanwhile.

    Before 3.13 it runs until nothing is left, also what a function queued
    again: a pending call asked for from inside this one would be run by
    CPython at once, still inside it, where 3.11 spins (see
    :func:`call_soon_in_main`). From 3.13 on, a function that asks again
    after it ran here (one waiting for a later bytecode boundary, as the
    after-fork restart does) gets a pending call of its own, asked for as the
    very last thing here.
    """
    _main_ident[0] = _native.get_ident()
    done: list[Callable[[], object]] = []
    later = sys.version_info >= (3, 13)
    hold = _pause[0] if _pause else None
    for _ in range(_MAX_ROUNDS):
        with _soon_lock:
            ready = [func for func in _soon if not (later and func in done)]
            for func in ready:
                _soon.remove(func)
            if not ready:
                again = bool(_soon)
                if not again:
                    _soon_pending[0] = False
                break
        for func in ready:
            done.append(func)
            try:
                func()
            except BaseException:  # noqa: BLE001, S110 - must not raise in the main thread
                pass
            if hold is not None:  # a tracer func() set (the wake's) waits for the end
                tstate = hold.current()
                hold.leave(tstate)
                hold.enter(tstate)
    else:
        again = True  # a function that keeps asking: at a later pending call
    if again and not _add_pending_call():
        _forget_queued()


#: Rounds of one pending call (calls that joined while the previous round ran).
_MAX_ROUNDS = 64
#: The main thread's id, once a pending call of ours ran there.
_main_ident: list[int | None] = [None]


def _make_trampoline(func: Callable[[], object]) -> object:
    import ctypes

    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    if _PENDING_CALL_SPIN and not _pause:
        _pause.append(_tracing_pause())
    hold = _pause[0] if _pause else None

    def trampoline(_arg: object) -> int:
        # C calls only until the pause holds: a Python call here would be a traced one.
        if hold is not None:
            hold.enter(hold.current())
        try:
            func()
        except BaseException:  # noqa: BLE001, S110 - must not raise in the main thread
            pass
        finally:
            if hold is not None:
                hold.leave(hold.current())
        return 0

    return callback_type(trampoline)


class _Pause:
    """ctypes functions: this thread's state, and pausing and resuming its tracing."""

    __slots__ = ("current", "enter", "leave")

    def __init__(
        self, current: Callable[[], int], enter: Callable[[int], None], leave: Callable[[int], None]
    ) -> None:
        self.current = current
        self.enter = enter
        self.leave = leave


def _tracing_pause() -> _Pause:
    """3.11: tracing of the main thread paused while our pending call runs.

    ``PyThreadState_EnterTracing`` is what CPython does around a trace call: the
    thread's events reach no tracer or profiler, and its evaluation loop leaves
    the traced path. ctypes function objects of our own (``pythonapi[...]``, not
    the shared attributes others may set types on), taking a C argument: calling
    them runs no Python function. A tracer set under the pause (the wake's) takes
    effect when it ends.
    """
    import ctypes

    api = ctypes.pythonapi
    current = api["PyThreadState_Get"]
    current.restype = ctypes.c_void_p
    current.argtypes = []
    enter = api["PyThreadState_EnterTracing"]
    leave = api["PyThreadState_LeaveTracing"]
    for function in (enter, leave):
        function.restype = None
        function.argtypes = [ctypes.c_void_p]
    return _Pause(current, enter, leave)


#: The one :class:`_Pause` (3.11), made with the trampoline, outside the main thread.
_pause: list[_Pause] = []


#: The code of our pending call: seen on the main thread's stack while it runs.
_our_codes = (
    _run_soon.__code__,
    *(c for c in _make_trampoline.__code__.co_consts if getattr(c, "co_name", "") == "trampoline"),
)
