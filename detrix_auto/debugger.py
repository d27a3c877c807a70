"""debugpy on demand, the truth about its listener, and tracing only while needed.

debugpy is imported only on wake (or on ``warm``). ``debugpy.listen()`` can be
called once per process and its listener cannot be closed, so this module
remembers the one port it opened and reports ``debug_port_active`` from that:
with the in-process adapter the listener lives and dies with this process, so
no probe is needed (and a probe would be mistaken for a DAP client, see
CONTRACT.md section 7).

The adapter runs in-process (``in_process_debug_adapter=True``): it answers the
daemon's attach faster than the separate adapter process, and it spawns no
child interpreter that would inherit ``DETRIX_ENABLE``. See docs/performance.md.

Disarm and rearm
----------------
``listen()`` installs pydevd's tracer for good: on 3.10/3.11 (``sys.settrace``)
pure-Python code then runs 2-4x slower for the rest of the process's life. And
with the in-process adapter a daemon that just closes its socket (which is
what unregister does) leaves pydevd half-attached: the logpoints stay
installed and keep being evaluated, output stays redirected, and every event
is queued for a writer whose socket is gone; the queue grows without bound and
pydevd's non-daemon ``CheckAliveThread`` then blocks interpreter exit forever.

:meth:`Debugger.disarm` (called by ``sleep()`` and by a failed wake) undoes
all of it once no DAP client is attached, the way pydevd itself handles a DAP
``disconnect`` request, and then stops tracing:

* always: output redirection off, breakpoints and exception breakpoints
  removed, thread notifications off (pydevd's ``request_disconnect``), the dead
  writer's queue dropped, pydevd's thread-start patch undone;
* ``sys.settrace`` mode (3.10/3.11): ``threading.settrace(None)`` for future
  threads; on every existing thread a tiny self-removing trace function
  replaces pydevd's (through pydevd's helper library) and is set as
  ``f_trace`` of every running frame, so that each thread drops tracing
  entirely at its next Python event; the calling thread drops it at once,
  the main thread through a pending call (``Py_AddPendingCall``);
* ``sys.monitoring`` mode (3.12+): with no breakpoint left, pydevd's own
  ``update_monitor_events()`` sets the DEBUGGER tool's global events to none
  and unregisters its callbacks; the tool id stays pydevd's, so the next attach
  needs no re-registration.

:meth:`Debugger.rearm` (called by ``wake()`` before registering) re-applies
tracing the way ``pydevd.settrace`` does on the first listen, and then the
main thread checks its own tracer: pydevd's all-threads helper can miss a
thread that is starting another one (``_trace_main_thread_itself``; this is
what made re-wakes lose logpoints under load before, and it affects debugpy's
own first ``listen()`` just the same). If a DAP client
attaches while disarmed without a wake (a daemon that restarted re-attaches to
stored connections), a DAP-message listener re-arms on its ``initialize`` and
a watcher disarms again once it leaves, so logpoints always work while a
client is attached and nothing is traced while none is.

Nothing here raises: failures are logged, and the worst case is the
behaviour of debugpy alone (tracing stays on).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from . import _log
from .errors import DebuggerError

__all__ = ["Debugger", "pydevd_loaded"]

#: How long ``disarm()`` waits for pydevd to notice that the daemon closed its
#: socket (the daemon closes it before answering the unregister).
DETACH_WAIT = 0.5


class Debugger:
    """The process's single debug listener."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._module: Any = None
        self.host = ""
        self.port = 0
        #: Set in a forked child whose parent had already opened the listener.
        self.forked_after_listen = False
        #: Is pydevd's tracer in place (it is right after ``listen()``)?
        self.armed = False
        #: What the client wants: traced while awake, not while asleep.
        self._want_armed = True
        self._hooks_installed = False
        self._watching: Any = None  # the reader a watcher thread waits for

    @property
    def imported(self) -> bool:
        return self._module is not None

    @property
    def listening(self) -> bool:
        return self.port != 0

    def prepare(self) -> Any:
        """Import debugpy and the debugger core it loads on listen (the warm state)."""
        with self._lock:
            return self._prepare_locked()

    def _prepare_locked(self) -> Any:
        if self._module is not None:
            return self._module
        # pydevd otherwise prints a frozen-modules warning on the host's stderr.
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        try:
            import debugpy

            # Loading the server side now is what makes a later listen() fast.
            import debugpy.server.api
        except Exception as exc:  # noqa: BLE001 - any import failure means "no debugger"
            raise DebuggerError(
                f"cannot import debugpy ({type(exc).__name__}: {exc}); "
                "install it in this environment: pip install debugpy"
            ) from None
        self._module = debugpy
        return debugpy

    def listen(self, host: str, port: int) -> int:
        """Open the listener once; later calls return the port already open."""
        with self._lock:
            if self.port:
                return self.port
            if self.forked_after_listen:
                raise DebuggerError(
                    "this process was forked after its parent opened the debugger, and debugpy "
                    "cannot listen again in a fork; wake the parent, or wake workers before "
                    "the parent is ever woken"
                )
            debugpy = self._prepare_locked()
            _skip_environment_report()
            try:
                bound = debugpy.listen((host, port), in_process_debug_adapter=True)
            except Exception as exc:  # noqa: BLE001 - debugpy raises RuntimeError, OSError, ...
                raise DebuggerError(
                    f"debugpy could not listen on {host}:{port} ({type(exc).__name__}: {exc}); "
                    "choose another DETRIX_DEBUG_PORT or leave it at 0"
                ) from None
            try:
                self.host, self.port = str(bound[0]), int(bound[1])
            except (TypeError, ValueError, IndexError):
                raise DebuggerError(f"debugpy.listen returned {bound!r}, not a port") from None
            self.armed = True
            self._want_armed = True
            self._install_hooks()
            _trace_main_thread_itself()
            return self.port

    # -- disarm / rearm ---------------------------------------------------------

    def disarm(self) -> None:
        """Stop tracing the host while no DAP client is attached. Never raises.

        Idempotent. If a client is still attached (after waiting briefly for the
        daemon's socket close to reach pydevd), a watcher thread disarms once it
        leaves, unless a wake wants tracing back first.
        """
        try:
            with self._lock:
                self._want_armed = False
                if not self.port or self._module is None:
                    return
                if not self.armed and self._reader() is None:
                    # Already disarmed; still drop anything a late event queued.
                    self._forget_session(_py_db())
                    return
            reader = self._wait_detached(DETACH_WAIT)
            if reader is not None:
                _log.debug("disarm: a DAP client is still attached; disarming when it leaves")
                self._watch(reader)
                return
            with self._lock:
                if self._want_armed:
                    return  # a wake came in meanwhile
                self._disarm_locked()
        except Exception as exc:  # noqa: BLE001 - must never fail sleep()
            _log.warn(
                f"could not stop debugpy's tracing after sleep ({type(exc).__name__}: "
                f"{exc}); the application runs on, possibly slower"
            )

    def rearm(self) -> None:
        """Undo :meth:`disarm` before the daemon attaches again. Never raises."""
        try:
            with self._lock:
                self._want_armed = True
                if not self.port or self.armed:
                    return
                self._arm_locked()
        except Exception as exc:  # noqa: BLE001 - logged; a wake then reports missing hits
            _log.warn(
                f"could not re-enable debugpy's tracing ({type(exc).__name__}: {exc}); "
                "logpoints may not report until the process restarts"
            )

    def _reader(self) -> Any:
        """pydevd's reader thread of the attached DAP client, or ``None``."""
        py_db = _py_db()
        reader = getattr(py_db, "reader", None) if py_db is not None else None
        if reader is None or not reader.is_alive():
            return None
        return reader

    def _wait_detached(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            reader = self._reader()
            remaining = deadline - time.monotonic()
            if reader is None or remaining <= 0:
                return reader
            reader.join(min(remaining, 0.05))

    def _watch(self, reader: Any) -> None:
        with self._lock:
            if self._watching is reader:
                return
            self._watching = reader
        thread = threading.Thread(
            target=self._disarm_after, args=(reader,), name="detrix-disarm", daemon=True
        )
        thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
        thread.start()

    def _disarm_after(self, reader: Any) -> None:
        try:
            reader.join()
            with self._lock:
                if self._watching is reader:
                    self._watching = None
                if self._want_armed or self._reader() is not None:
                    return
                self._disarm_locked()
        except Exception as exc:  # noqa: BLE001 - a background thread must stay quiet
            _log.debug("disarm watcher failed: %s", exc)

    def _disarm_locked(self) -> None:
        py_db = _py_db()
        if py_db is None:
            return
        self._forget_session(py_db)
        if not self.armed:
            return
        constants = _pydevd("_pydevd_bundle.pydevd_constants")
        if constants.PYDEVD_USE_SYS_MONITORING:
            monitoring = _pydevd("_pydevd_sys_monitoring.pydevd_sys_monitoring")
            # No breakpoint is left, so pydevd turns every global event off and
            # unregisters its callbacks; local events left on code objects that
            # held logpoints had returned DISABLE for every other line.
            monitoring.update_monitor_events()
            _disable_local_events()
        elif getattr(py_db, "frame_eval_func", None) is not None:
            _log.debug("disarm: pydevd uses frame evaluation here; tracing left as is")
            return
        else:
            _stop_settrace(py_db)
        self.armed = False
        _log.debug("disarm: debugpy's tracing stopped")

    def _forget_session(self, py_db: Any) -> None:
        """What pydevd does on a DAP ``disconnect``, which a closing daemon never sends."""
        if py_db is None:
            return
        api = _pydevd("_pydevd_bundle.pydevd_api").PyDevdAPI()
        io = _pydevd("_pydevd_bundle.pydevd_io")
        py_db.enable_output_redirection(False, False)
        for std in ("stdout", "stderr"):
            # Keep the wrapper alive: before 3.12.10/3.13.3 print() holds only a
            # borrowed reference to sys.stdout (CPython gh-130163), so freeing it
            # while the host prints in another thread crashed the host.
            _RETIRED_STREAMS.append(getattr(sys, std, None))
            io.stop_redirect_stream_to_pydb_io_messages(std)
        # Resume only if something is suspended (a logpoint never suspends): pydevd's
        # resume-all races with threads being started and then logs to stderr.
        api.request_disconnect(py_db, resume_threads=_any_suspended())
        _drop_dead_writer(py_db)
        _unpatch_thread_start()

    def _arm_locked(self) -> None:
        py_db = _py_db()
        if py_db is None:
            return
        constants = _pydevd("_pydevd_bundle.pydevd_constants")
        if constants.PYDEVD_USE_SYS_MONITORING:
            monitoring = _pydevd("_pydevd_sys_monitoring.pydevd_sys_monitoring")
            _pydevd("_pydev_bundle.pydev_monkey").patch_thread_modules()
            monitoring.start_monitoring(all_threads=True)  # no-op while the tool is ours
            monitoring.update_monitor_events()
        else:
            _clear_removers()
            # Exactly what pydevd.settrace() does on the first listen.
            py_db.patch_threads()
            py_db.enable_tracing(py_db.trace_dispatch, apply_to_all_threads=True)
            py_db.set_tracing_for_untraced_contexts()
            _trace_main_thread_itself()
        self.armed = True
        _log.debug("rearm: debugpy's tracing re-applied")

    # -- hooks ------------------------------------------------------------------

    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return
        self._hooks_installed = True
        try:
            py_db = _py_db()
            if py_db is not None:
                py_db.add_dap_messages_listener(_AttachListener(self))
                _send_without_delay(py_db)
        except Exception as exc:  # noqa: BLE001
            _log.debug("could not hook pydevd's connection handling: %s", exc)
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            try:
                register(self._before_exit)
            except Exception as exc:  # noqa: BLE001 - at worst exit waits for pydevd
                _log.debug("could not register the exit hook: %s", exc)

    def _on_client_initialize(self) -> None:
        """A DAP client started a session (runs on pydevd's reader thread)."""
        try:
            with self._lock:
                if self.armed:
                    return
                self._arm_locked()
                stray = not self._want_armed
            if stray:
                # Attached without a wake: trace while it stays, stop when it goes.
                reader = threading.current_thread()
                self._watch(reader)
        except Exception as exc:  # noqa: BLE001 - never break pydevd's reader
            _log.debug("rearm on attach failed: %s", exc)

    def _before_exit(self) -> None:
        """Before threading joins non-daemon threads: unblock pydevd's CheckAliveThread.

        With no client attached, pydevd's non-daemon CheckAliveThread has nothing
        to flush; left alone it waits for a writer that can never drain (exit
        hangs) or, at best, for its next 0.2 s poll. Told to stop now, it
        disposes pydevd's threads at once.
        """
        try:
            py_db = _py_db()
            if py_db is None or self._reader() is not None:
                return
            _drop_dead_writer(py_db)
            checker = getattr(py_db, "check_alive_thread", None)
            if checker is None or _other_user_threads():
                return  # pydevd keeps the process up for those: not ours to change
            # What the checker would do at its next poll, without its polling:
            # end pydevd's threads now (its accept thread only ends once accept()
            # returns, which closing the socket does not cause on Linux), give
            # them a moment, then let the checker find nothing left to wait for.
            waiting = getattr(py_db, "_waiting_for_connection_thread", None)
            server = getattr(waiting, "_server_socket", None)
            if server is not None:
                _shutdown(server, waiting)
            py_db.dispose_and_kill_all_pydevd_threads(wait=False)
            deadline = time.monotonic() + 0.1
            for thread in list(getattr(py_db, "created_pydb_daemon_threads", ())):
                if thread is not checker and thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
            event = getattr(checker, "_wait_event", None)
            if event is not None:
                event.set()
        except Exception:  # noqa: BLE001, S110 - exit must go on
            pass


class _AttachListener:
    """pydevd ``IDAPMessagesListener``: notices a client's ``initialize``."""

    def __init__(self, debugger: Debugger) -> None:
        self._debugger = debugger

    def before_send(self, message_as_dict: Any) -> None:
        pass

    def after_receive(self, message_as_dict: Any) -> None:
        try:
            if (
                message_as_dict.get("type") == "request"
                and message_as_dict.get("command") == "initialize"
                and not self._debugger.armed
            ):
                self._debugger._on_client_initialize()
        except Exception:  # noqa: BLE001, S110 - never break pydevd's reader
            pass


# -- pydevd plumbing (everything here runs only after listen) --------------------


#: Streams pydevd had put in place and that we took out: never freed (see above).
_RETIRED_STREAMS: list[Any] = []


def _pydevd(name: str) -> Any:
    return importlib.import_module(name)


def _py_db() -> Any:
    pydevd = sys.modules.get("pydevd")
    if pydevd is None:
        return None
    return pydevd.get_global_debugger()


def _other_user_threads() -> bool:
    """Is a non-daemon thread other than this (exiting main) one still running?

    A thread marked ``__pydevd_main_thread`` stands in for the main thread
    (lifecycle.keep_host_visible_to_pydevd), which is the one exiting now.
    """
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is me or getattr(thread, "is_pydev_daemon_thread", False):
            continue
        if hasattr(thread, "__pydevd_main_thread"):
            continue
        if not thread.daemon:
            return True
    return False


def _skip_environment_report() -> None:
    """Don't let the first listen() read every installed package's metadata.

    debugpy's ``ensure_logging()`` builds a report of the environment (paths,
    and the name and version of every installed distribution) even when no log
    directory is set and the report goes nowhere. That is hundreds of small
    file reads on the wake path; with a CPU-bound host thread each one waits
    for the GIL, and a wake was seen to take over 10 s. Only when debugpy
    logging is off (``DEBUGPY_LOG_DIR`` unset) is the step marked as done.
    """
    try:
        api = sys.modules.get("debugpy.server.api")
        log = sys.modules.get("debugpy.common.log")
        ensure = getattr(api, "ensure_logging", None)
        if ensure is not None and log is not None and getattr(log, "log_dir", "") is None:
            ensure.ensured = True
    except Exception as exc:  # noqa: BLE001 - debugpy internals moved: just slower
        _log.debug("could not skip debugpy's environment report: %s", exc)


def _shutdown(server: Any, thread: Any) -> None:
    """End pydevd's accept loop: flag it, then wake the blocked accept()."""
    thread._kill_received = True
    try:
        import socket

        server.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001, S110 - already closed
        pass


def _send_without_delay(py_db: Any) -> None:
    """TCP_NODELAY on every DAP connection pydevd accepts.

    pydevd writes each DAP message as two ``sendall`` calls (header, then
    body) on a socket with Nagle's algorithm on, and the daemon delays its ACKs
    on an interactive connection: the body then waits ~40 ms for an ACK. The
    daemon's attach (a dozen messages) took ~45 ms against ~3 ms without it,
    and every logpoint hit arrived late by as much.
    """
    original = py_db.initialize_network
    if getattr(original, "_detrix_nodelay", False):
        return

    def initialize_network(sock: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:  # noqa: BLE001, S110 - not TCP (or wrapped): unchanged behaviour
            pass
        return original(sock, *args, **kwargs)

    initialize_network._detrix_nodelay = True  # type: ignore[attr-defined]
    py_db.initialize_network = initialize_network


def _drop_dead_writer(py_db: Any) -> None:
    """Make the writer of a closed session drop what it holds and accept nothing.

    ``initialize_network`` creates a fresh writer for the next client.
    """
    writer = getattr(py_db, "writer", None)
    if writer is None:
        return
    reader = getattr(py_db, "reader", None)
    if reader is not None and reader.is_alive():
        return  # a client is attached: its writer is alive and needed
    writer._kill_received = True  # PyDBDaemonThread's flag; add_command then drops
    queue = getattr(writer, "_cmd_queue", None)
    if queue is None:
        return
    while True:
        try:
            queue.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty
            return


def _any_suspended() -> bool:
    suspend = _pydevd("_pydevd_bundle.pydevd_constants").STATE_SUSPEND
    for thread in threading.enumerate():
        info = getattr(thread, "additional_info", None)
        if info is not None and getattr(info, "pydev_state", None) == suspend:
            return True
    return False


_THREAD_START_ATTRS = (
    ("_start_new_thread", "_original_start_new_thread"),
    ("start_new_thread", "_original_start_new_thread"),
    ("start_new", "_original_start_new_thread"),
    ("start_joinable_thread", "_original_start_joinable_thread"),
    ("_start_joinable_thread", "_original_start_joinable_thread"),
)


def _unpatch_thread_start() -> None:
    """Undo pydevd's thread-start patch, touching only the attributes it replaced."""
    import _thread

    for module in (_thread, threading):
        for attr, original_attr in _THREAD_START_ATTRS:
            current = getattr(module, attr, None)
            if getattr(current, "__name__", "") not in (
                "pydev_start_new_thread",
                "pydev_start_joinable_thread",
            ):
                continue
            original = getattr(module, original_attr, None)
            if original is not None:
                setattr(module, attr, original)


def _remove_trace(frame: FrameType, event: str, arg: Any) -> None:
    """Trace function that switches tracing off in the thread that calls it."""
    with _REMOVER_LOCK:  # a rearm in between must not be undone here
        active = _REMOVER_ACTIVE[0]
        if active:
            _original_settrace()(None)
    for f in _stack(frame):
        if active or f.f_trace is _remove_trace:
            f.f_trace = None  # if rearmed since: pydevd decides anew for the frame


def _stack(frame: FrameType | None) -> Iterator[FrameType]:
    """``frame`` and its callers, innermost first."""
    while frame is not None:
        yield frame
        frame = frame.f_back


#: Whether ``_remove_trace`` should still remove (False once rearmed).
_REMOVER_ACTIVE = [False]
_REMOVER_LOCK = threading.Lock()


def _original_settrace() -> Any:
    """``sys.settrace`` as it was before pydevd replaced it with a warning wrapper."""
    tracing = sys.modules.get("pydevd_tracing")
    holder = getattr(tracing, "TracingFunctionHolder", None)
    original = getattr(holder, "_original_tracing", None)
    return original if original is not None else sys.settrace


def _stop_settrace(py_db: Any) -> None:
    """3.10/3.11: pydevd's tracer off on every thread, now or at its next event."""
    tracing = _pydevd("pydevd_tracing")
    with _REMOVER_LOCK:
        _REMOVER_ACTIVE[0] = True
    try:
        threading.settrace(None)
    except Exception:  # noqa: BLE001, S110 - only future threads are concerned
        pass
    me = threading.get_ident()
    # Existing threads: the global trace function (called for 'call' events)...
    try:
        helper = _set_global_trace(tracing, _remove_trace, me)
    except Exception as exc:  # noqa: BLE001 - no helper library on this platform
        helper = -1
        _log.debug("disarm: pydevd's all-threads helper failed: %s", exc)
    if helper != 0:
        _log.debug("disarm: some threads stop tracing only at their next line")
    # ...and every running frame's local one (called for 'line' and 'return').
    for ident, top in sys._current_frames().items():
        for frame in _stack(top):
            frame.f_trace = None if ident == me else _remove_trace
    tracing.SetTrace(None)  # this thread: at once
    if me != threading.main_thread().ident:
        _in_main_thread(_untrace_main)  # the main thread without waiting for its next line


def _set_global_trace(tracing: Any, func: Any, me: int) -> int:
    """Set ``func`` as the trace function of every other thread running Python code.

    pydevd's helper library does the work in C, under the GIL, one thread at a
    time, by thread id. pydevd's own ``set_trace_to_threads`` also starts a
    short-lived thread per target to bump a counter that only CPython <= 3.9
    had; on a busy host each of those waits for the GIL, which made a sleep
    take ~150 ms instead of a few. Returns how many threads it could not reach.
    """
    import ctypes

    lib = tracing._load_python_helper_lib()
    if lib is None:
        result: int = tracing.set_trace_to_threads(func, create_dummy_thread=False)
        return result
    skip = {t.ident for t in threading.enumerate() if getattr(t, "pydev_do_not_trace", False)}
    holder = getattr(tracing, "TracingFunctionHolder", None)
    set_trace = getattr(holder, "_original_tracing", None) or sys.settrace
    failed = 0
    for ident in list(sys._current_frames()):
        if ident == me or ident in skip:
            continue
        code = lib.AttachDebuggerTracing(
            ctypes.c_int(0),
            ctypes.py_object(set_trace),
            ctypes.py_object(func),
            ctypes.c_uint(ident),
            ctypes.py_object(None),
        )
        failed += code != 0
    return failed


def _in_main_thread(func: Any) -> None:
    """Run ``func`` in the main thread at its next bytecode boundary (Py_AddPendingCall)."""
    try:
        from ._mainthread import _schedule_in_main

        _schedule_in_main(func)
    except Exception as exc:  # noqa: BLE001 - no ctypes: the all-threads helper alone
        _log.debug("could not schedule a call in the main thread: %s", exc)


def _trace_main_thread_itself() -> None:
    """3.10/3.11: have the main thread install pydevd's tracer on itself.

    pydevd's all-threads helper finds a thread's state by thread id, and the
    state of a thread being started carries its creator's id until the new
    thread runs: while the main thread starts a thread, the helper can put the
    tracer on the newborn thread and miss the main thread, whose logpoints
    then never fire (1 to 5% of attaches of an app that starts threads, on
    debugpy's first listen() as on a re-arm). The main thread setting its own
    tracer, at its next bytecode boundary, cannot miss. Other threads that
    start threads keep that small debugpy race.
    """
    if sys.version_info >= (3, 12) or threading.current_thread() is threading.main_thread():
        return

    def trace_me() -> None:
        py_db = _py_db()
        if py_db is None or _REMOVER_ACTIVE[0] or sys.gettrace() is not None:
            return
        py_db.enable_tracing()  # pydevd's way (its faster trampoline)...
        if sys.gettrace() is None:  # ...which can miss this very thread the same way
            _original_settrace()(py_db.get_thread_local_trace_func())

    _in_main_thread(trace_me)


def _untrace_main() -> None:
    """Runs in the main thread (pending call): have it drop tracing in its own frames.

    Not ``settrace(None)`` here: before 3.12 "tracing is on" is also a flag of
    each C-level evaluation loop, and ``settrace`` updates only the current
    one, which for a pending call is a nested loop. The loop the main thread
    returns to would keep the flag, and with it a slower instruction dispatch
    (measured 1.2-1.6x) with no tracer at all. Instead the main thread gets
    ``_remove_trace`` as its tracer and on its frames: at its next event, in
    its own loop, the tracer goes and the interpreter recomputes that loop's
    flag on the way out of the trace call.
    """
    if not _REMOVER_ACTIVE[0]:
        return
    # From the frame the pending call interrupted: this function and
    # _mainthread's trampoline run in the nested loop, and an event of theirs
    # reaching _remove_trace would remove the tracer in the wrong loop.
    try:
        interrupted = sys._getframe(2)
    except ValueError:  # not called through the trampoline: nothing to mark
        interrupted = None
    for frame in _stack(interrupted):
        frame.f_trace = _remove_trace
    # Last: once this thread has a tracer, any Python call here would be a
    # 'call' event, and the removal would happen in this nested loop after all.
    with _REMOVER_LOCK:
        if _REMOVER_ACTIVE[0]:
            _original_settrace()(_remove_trace)


def _clear_removers() -> None:
    with _REMOVER_LOCK:
        _REMOVER_ACTIVE[0] = False
    for top in sys._current_frames().values():
        for frame in _stack(top):
            if frame.f_trace is _remove_trace:
                frame.f_trace = None


def _disable_local_events() -> None:
    """3.12+: let code objects that held logpoints shed their local events.

    pydevd leaves ``LINE``/``JUMP``/``PY_RETURN`` enabled on the code objects
    that had breakpoints, with no callback once none is left: every line of
    such a function still goes through the instrumentation (1.2-1.5x measured).
    A callback that answers ``DISABLE`` removes that per location on its next
    hit, without having to find the code objects. pydevd registers its own
    callbacks again when breakpoints come back.
    """
    monitoring: Any = getattr(sys, "monitoring", None)
    if monitoring is None:
        return
    tool = monitoring.DEBUGGER_ID
    if monitoring.get_tool(tool) != "pydevd":
        return
    events = monitoring.events
    for event in (events.LINE, events.JUMP, events.PY_RETURN, events.PY_START, events.PY_RESUME):
        monitoring.register_callback(tool, event, _disable_event)


def _disable_event(*args: Any) -> Any:
    return _DISABLE


_DISABLE: Any = getattr(getattr(sys, "monitoring", None), "DISABLE", None)


def pydevd_loaded() -> bool:
    return "pydevd" in sys.modules
