"""Let the control thread import ``threading`` without stealing "main thread".

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
2. Otherwise it asks the main thread, through ``Py_AddPendingCall`` (the
   documented C API for running a call in the main thread at its next
   bytecode boundary), to import it, and waits briefly.
3. If the main thread is busy in C code (a long ``time.sleep()``), or its
   import failed (the pending call landed in the middle of one of the main
   thread's own imports, found under load), it imports ``threading`` itself,
   takes its own thread out of the shutdown join, and leaves a pending call
   to rebuild the real ``MainThread`` object in the main thread as soon as it
   runs Python code again, the way ``threading._after_fork`` rebuilds it
   after a fork.

:func:`call_soon_in_main` is the same pending-call mechanism for calls that
recur (one per fork, see ``control/server.py``): one ctypes callback for all.
"""

from __future__ import annotations

import _thread
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["call_soon_in_main", "ensure_threading", "forget_after_fork"]

_callbacks: list[object] = []  # keep ctypes callbacks alive


def ensure_threading(wait: float = 0.25) -> None:
    """Call from a thread started with ``_thread`` before anything imports ``threading``."""
    if sys.version_info >= (3, 13) or "threading" in sys.modules:
        return  # 3.13 asks the runtime which thread is main
    done = _thread.allocate_lock()
    done.acquire()
    if _schedule_in_main(lambda: _import_in_main(done)):
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
        _schedule_in_main(_repair_in_main)


def _schedule_in_main(func: object) -> bool:
    try:
        import ctypes

        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

        def trampoline(_arg: object) -> int:
            try:
                func()  # type: ignore[operator]
            except BaseException:  # noqa: BLE001, S110 - must not raise in the main thread
                pass
            return 0

        callback = callback_type(trampoline)
        _callbacks.append(callback)
        return bool(ctypes.pythonapi.Py_AddPendingCall(callback, None) == 0)
    except Exception:  # noqa: BLE001 - no ctypes (some embedded builds): fall back
        return False


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


#: Functions waiting for the main thread (:func:`call_soon_in_main`).
_soon: list[Callable[[], object]] = []
_soon_trampoline: list[object] = []  # the one ctypes callback, made once


def call_soon_in_main(func: Callable[[], object]) -> bool:
    """Run ``func`` in the main thread at its next bytecode boundary; False if impossible.

    For calls that may repeat all through a process's life (one per fork):
    one ctypes callback serves them all, and calls made while one is pending
    ride along with it, so nothing accumulates.
    """
    _soon.append(func)
    if len(_soon) > 1:
        return True  # the pending call already scheduled runs this one too
    try:
        if not _soon_trampoline:
            _soon_trampoline.append(_make_trampoline(_run_soon))
        import ctypes

        if ctypes.pythonapi.Py_AddPendingCall(_soon_trampoline[0], None) == 0:
            return True
    except Exception:  # noqa: BLE001, S110 - no ctypes or a full queue: the caller decides
        pass
    _soon.clear()
    return False


def forget_after_fork() -> None:
    """In a forked child: calls the parent scheduled are the parent's business."""
    del _soon[:]


def _run_soon() -> None:
    # Only what was waiting when this call began: a function that schedules
    # itself again runs at a later pending call, not in a loop here.
    batch = _soon[:]
    del _soon[:]
    for func in batch:
        try:
            func()
        except BaseException:  # noqa: BLE001, S110 - must not raise in the main thread
            pass


def _make_trampoline(func: Callable[[], object]) -> object:
    import ctypes

    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def trampoline(_arg: object) -> int:
        try:
            func()
        except BaseException:  # noqa: BLE001, S110 - must not raise in the main thread
            pass
        return 0

    return callback_type(trampoline)
