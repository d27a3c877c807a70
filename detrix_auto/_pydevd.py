"""Every private debugpy/pydevd access of detrix-auto, probed once, never raising.

debugpy's public API is ``listen()``. Everything else detrix-auto does with the
debugger (gate the listener, see the attached session, stop tracing after
sleep, let exit go on) reaches into pydevd's private modules, which change
between releases without notice. So all of it lives here, and nowhere else
(``tests/test_pydevd_boundary.py`` checks that no other module names a pydevd
internal):

* :func:`capabilities` probes, once, right after debugpy is imported, which of
  the private names each capability needs this debugpy has, and records the
  reason for every one that is missing (the way coverage.py records why it
  cannot use ``sys.monitoring``). ``doctor`` prints the record.
* Every function here returns whether it worked and never raises; the caller
  falls back to debugpy's own behaviour.

The capabilities, and what happens without each:

``gate``
    pydevd creates its debug listener through ``pydevd.create_server_socket``
    (called from ``PyDB._WaitForConnectionThread.run``), so we can hand it a
    socket we bound ourselves and whose every ``accept()`` we check.
    *Required*: without it a wake is refused, because an ungated debugger is
    code execution for any local user.
``session``
    which DAP session is attached (pydevd's reader thread). Without it the
    keeper asks the daemon over the network instead.
``forget``
    what pydevd does on a DAP ``disconnect``, done for a daemon that just
    closes its socket. Without it logpoints may keep being evaluated after
    sleep until the process exits.
``untrace``
    stop tracing after sleep (``sys.monitoring`` events off on 3.12+, the
    trace functions removed before) and restart it on wake. Without it tracing
    stays after the first wake, as with debugpy alone.
``attach_watch``
    notice a DAP ``initialize`` (to re-arm tracing for it). Without it a
    client that attaches without a wake sees no logpoints fire.
``nodelay``
    ``TCP_NODELAY`` on DAP sockets. Without it DAP messages wait for delayed
    ACKs (~40 ms each).
``exit``
    unblock pydevd's ``CheckAliveThread`` at exit when nothing is attached.
    Without it exit may wait for pydevd.
``quiet_listen``
    skip debugpy's environment report on the first ``listen()`` (hundreds of
    file reads). Without it the first wake is slower.
``resume``
    3.12+ (``sys.monitoring``): trace the lines of coroutines and generators
    that were suspended when the breakpoints came (:func:`_watch_resumes`).
    pydevd turns on line events for the code on every thread's stack and for
    code that starts later, but a suspended frame is on no stack and only
    resumes, which pydevd does not watch. Without it the logpoints in an
    ``async`` loop (or a paused generator) that began before the wake never
    fire. Not needed by ``sys.settrace`` tracing, which sees resumed frames.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from . import _log, _native

__all__ = [
    "UNKNOWN",
    "Capabilities",
    "capabilities",
    "current_session",
    "forget_session",
    "hand_listener",
    "import_debugpy",
    "is_debugpy_missing",
    "install_hooks",
    "release_at_exit",
    "release_session_socket",
    "stand_in_main_thread",
    "start_tracing",
    "stop_tracing",
    "trace_main_thread_itself",
    "wait_detached",
]

#: :func:`current_session` could not tell (debugpy internals not as expected).
UNKNOWN: Any = object()

#: Capability names, in the order ``doctor`` lists them.
CAPABILITY_NAMES = (
    "gate",
    "session",
    "forget",
    "untrace",
    "attach_watch",
    "nodelay",
    "exit",
    "quiet_listen",
    "resume",
    "lean_settrace",
    "quiet_pollers",
)

#: What happens without each capability, in a sentence (``doctor`` prints it).
FALLBACKS = {
    "gate": "wake is refused: an ungated debugger would be code execution for any local user",
    "session": "the keeper asks the daemon over the network whether it still holds the process",
    "forget": "after sleep, logpoints may keep being evaluated until the process exits",
    "untrace": "tracing stays after the first wake, as with debugpy alone (slower code)",
    "attach_watch": "a client that attaches without a wake sees no logpoints fire",
    "nodelay": "each DAP message waits for a delayed ACK (~40 ms)",
    "exit": "interpreter exit may wait for debugpy's threads",
    "quiet_listen": "the first wake reads every installed package's metadata (slower)",
    "resume": "coroutines and generators suspended before the wake are not observed "
    "until their function is called again (3.12+)",
    "lean_settrace": "each re-trace of a thread starts and waits for a thread of its own: "
    "under gevent an awake process runs tens of times slower (3.10/3.11)",
    "quiet_pollers": "after the first wake, two of debugpy's threads wake every 0.2-0.3 s "
    "for good, also asleep, each time taking the GIL from a computing host",
}

#: The debugpy releases this version of detrix-auto was tested with (bench/debugpy_range.py).
TESTED_DEBUGPY = ("1.8.0", "1.8.22")

#: Environment variables debugpy's import sets for pydevd (``force_pydevd``), and the
#: one we set for it: all put back as they were once the import is done.
_IMPORT_ENV = {
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # else a frozen-modules warning on the host's stderr
}
_DEBUGPY_SETS = ("PYDEVD_USE_FRAME_EVAL", "PYDEVD_DEBUG", "PYDEVD_DEBUG_FILE")
#: pydevd's gevent mode, read once as pydevd is imported: set for that import when gevent
#: has patched threading (pydevd then keeps unpatched copies of threading, socket, time,
#: select and queue for its own threads, and re-applies tracing on greenlet switches).
_GEVENT_ENV = {"GEVENT_SUPPORT": "True"}


class Capabilities:
    """What this debugpy offers detrix-auto: fixed once probed."""

    __slots__ = ("debugpy_version", "missing", "tracing")

    def __init__(self, debugpy_version: str, tracing: str, missing: dict[str, str]) -> None:
        self.debugpy_version = debugpy_version
        #: ``sys.monitoring``, ``settrace`` or ``unknown``: how pydevd traces here.
        self.tracing = tracing
        #: capability name -> why it is missing.
        self.missing = dict(missing)

    def has(self, name: str) -> bool:
        return name not in self.missing

    def as_dict(self) -> dict[str, Any]:
        return {
            "debugpy": self.debugpy_version,
            "tracing": self.tracing,
            "missing": dict(self.missing),
        }

    def __repr__(self) -> str:
        return f"Capabilities({self.as_dict()})"


_probed: Capabilities | None = None
_probe_lock = _native.Lock()


def forget_after_fork() -> None:
    """In a forked child: locks a thread of the parent may have held are fresh again.

    (debugpy itself cannot listen again in such a child; ``Debugger`` says so.)
    """
    global _probe_lock, _REMOVER_LOCK, _pollers_parked
    _probe_lock = _native.Lock()
    _REMOVER_LOCK = _native.RLock()
    _pollers_parked = False  # the parent's pydevd threads are not in this process


# -- import ----------------------------------------------------------------------


def import_debugpy() -> Any:
    """Import debugpy and the server side a ``listen()`` needs; returns the module.

    Raises whatever the import raises (the caller turns it into a
    :class:`~detrix_auto.errors.DebuggerError`). debugpy's import writes
    ``PYDEVD_*`` variables into ``os.environ`` for pydevd, which reads them
    while it is imported; we add ``PYDEVD_DISABLE_FILE_VALIDATION``. Each of
    them is put back as it was once the import is done: the environment is the
    host's, and its child processes must not inherit our choices.
    """
    wanted = dict(_IMPORT_ENV)
    if _native.gevent_patched("threading"):
        wanted.update(_GEVENT_ENV)
    names = (*_IMPORT_ENV, *_GEVENT_ENV, *_DEBUGPY_SETS)
    environ = os.environ
    before = {name: environ.get(name) for name in names}
    try:
        for name, value in wanted.items():
            if before[name] is None:
                environ[name] = value
        import debugpy
        import debugpy.server.api

        return debugpy
    finally:
        for name, previous in before.items():
            if environ.get(name) != previous:
                if previous is None:
                    environ.pop(name, None)
                else:
                    environ[name] = previous


def is_debugpy_missing(exc: ModuleNotFoundError) -> bool:
    """Did the import fail because debugpy itself is absent (not something it imports)?"""
    name = str(exc.name or "")
    return name in ("debugpy", "pydevd") or name.startswith("debugpy.")


# -- the probe -----------------------------------------------------------------------


def capabilities() -> Capabilities:
    """The record of what this debugpy offers; probed on first call after the import."""
    global _probed
    probed = _probed
    if probed is not None:
        return probed
    with _probe_lock:
        if _probed is None:
            try:
                _probed = _probe()
            except Exception as exc:  # noqa: BLE001 - a probe that fails means "nothing"
                reason = f"probe failed: {type(exc).__name__}: {exc}"
                _probed = Capabilities("?", "unknown", dict.fromkeys(CAPABILITY_NAMES, reason))
        return _probed


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - absent or broken: the probe says so
        return None


def _code_names(owner: Any, function: str) -> tuple[str, ...]:
    code = getattr(getattr(owner, function, None), "__code__", None)
    return tuple(getattr(code, "co_names", ()))


def _code_args(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    count = getattr(code, "co_argcount", 0)
    return tuple(getattr(code, "co_varnames", ())[:count])


def _lacking(owner: Any, *names: str) -> list[str]:
    return [name for name in names if not callable(getattr(owner, name, None))]


def _probe() -> Capabilities:
    debugpy = sys.modules.get("debugpy")
    version = str(getattr(debugpy, "__version__", "?"))
    pydevd = sys.modules.get("pydevd")
    if pydevd is None:
        nothing = dict.fromkeys(CAPABILITY_NAMES, "pydevd not loaded")
        return Capabilities(version, "unknown", nothing)
    missing: dict[str, str] = {}
    py_db_class = getattr(pydevd, "PyDB", None)

    waiter = getattr(py_db_class, "_WaitForConnectionThread", None)
    run_names = _code_names(waiter, "run")
    if not callable(getattr(pydevd, "create_server_socket", None)):
        missing["gate"] = "pydevd.create_server_socket is missing"
    elif "create_server_socket" not in run_names or "accept" not in run_names:
        missing["gate"] = "pydevd no longer creates its listener in _WaitForConnectionThread.run"

    if "reader" not in _code_names(py_db_class, "initialize_network"):
        missing["session"] = "PyDB.initialize_network no longer sets PyDB.reader"

    api = _module("_pydevd_bundle.pydevd_api")
    io = _module("_pydevd_bundle.pydevd_io")
    lacking = _lacking(getattr(api, "PyDevdAPI", None), "request_disconnect")
    lacking += _lacking(io, "stop_redirect_stream_to_pydb_io_messages")
    lacking += _lacking(py_db_class, "enable_output_redirection")
    if lacking:
        missing["forget"] = "missing: " + ", ".join(lacking)

    constants = _module("_pydevd_bundle.pydevd_constants")
    if getattr(constants, "PYDEVD_USE_SYS_MONITORING", False):
        tracing = "sys.monitoring"
        monitoring = _module("_pydevd_sys_monitoring.pydevd_sys_monitoring")
        lacking = _lacking(monitoring, "update_monitor_events", "start_monitoring")
        lacking += _lacking(_module("_pydev_bundle.pydev_monkey"), "patch_thread_modules")
    else:
        tracing = "settrace"
        tracer = _module("pydevd_tracing")
        lacking = _lacking(tracer, "SetTrace")
        if not hasattr(getattr(tracer, "TracingFunctionHolder", None), "_original_tracing"):
            lacking.append("TracingFunctionHolder._original_tracing")
        if _lacking(tracer, "_load_python_helper_lib") and _lacking(tracer, "set_trace_to_threads"):
            lacking.append("pydevd_tracing's all-threads helper")
        lacking += _lacking(
            py_db_class,
            "enable_tracing",
            "set_tracing_for_untraced_contexts",
            "patch_threads",
            "get_thread_local_trace_func",
        )
        if "trace_dispatch" not in _code_names(py_db_class, "__init__"):
            lacking.append("PyDB.trace_dispatch")
    if lacking:
        missing["untrace"] = "missing: " + ", ".join(lacking)
    if tracing == "settrace" and sys.version_info < (3, 12):
        arguments = _code_args(getattr(tracer, "set_trace_to_threads", None))
        if arguments[:3] != ("tracing_func", "thread_idents", "create_dummy_thread"):
            missing["lean_settrace"] = "pydevd_tracing.set_trace_to_threads is not as known"
        elif _lacking(tracer, "_load_python_helper_lib"):
            missing["lean_settrace"] = "pydevd_tracing._load_python_helper_lib is missing"
    if tracing == "sys.monitoring":
        lacking = _lacking(monitoring, "update_monitor_events", "enable_code_tracing")
        if not hasattr(getattr(getattr(sys, "monitoring", None), "events", None), "PY_RESUME"):
            lacking.append("sys.monitoring.events.PY_RESUME")
        if lacking:
            missing["resume"] = "missing: " + ", ".join(lacking)

    if _lacking(py_db_class, "add_dap_messages_listener"):
        missing["attach_watch"] = "PyDB.add_dap_messages_listener is missing"
    if _lacking(py_db_class, "initialize_network"):
        missing["nodelay"] = "PyDB.initialize_network is missing"
    if _lacking(py_db_class, "dispose_and_kill_all_pydevd_threads"):
        missing["exit"] = "PyDB.dispose_and_kill_all_pydevd_threads is missing"
    lacking = [
        f"{owner}.{attr}"
        for _, owner, attr in _POLLERS
        if attr not in _code_names(getattr(pydevd, owner, None), "_on_run")
    ]
    if lacking or "check_alive_thread" not in _code_names(py_db_class, "__init__"):
        missing["quiet_pollers"] = "pydevd's polling threads are not as known: " + (
            ", ".join(lacking) or "PyDB.check_alive_thread"
        )
    server_api = sys.modules.get("debugpy.server.api")
    log = sys.modules.get("debugpy.common.log")
    if getattr(server_api, "ensure_logging", None) is None or not hasattr(log, "log_dir"):
        missing["quiet_listen"] = "debugpy.server.api.ensure_logging is missing"
    return Capabilities(version, tracing, missing)


# -- the listener ----------------------------------------------------------------------


def hand_listener(sock: Any) -> _native.Event | None:
    """Make pydevd use ``sock`` (bound and listening) as its debug listener.

    Returns an event set once pydevd has taken it, or ``None`` when this
    debugpy does not create its listener where we can hand it one (the
    ``gate`` capability): the caller must then not listen at all.
    """
    if not capabilities().has("gate"):
        return None
    pydevd: Any = sys.modules["pydevd"]
    original = pydevd.create_server_socket
    taken = _native.Event()  # set on pydevd's thread, waited for on ours (never gevent's)

    def create_server_socket(host: str, port: int) -> Any:
        if taken.is_set():
            return original(host=host, port=port)
        taken.set()
        return sock

    create_server_socket._detrix_original = original  # type: ignore[attr-defined]
    pydevd.create_server_socket = create_server_socket
    return taken


def listener_taken_back(taken: _native.Event) -> None:
    """After ``listen()``: pydevd's own factory again for anything later."""
    pydevd = sys.modules.get("pydevd")
    current = getattr(pydevd, "create_server_socket", None)
    original = getattr(current, "_detrix_original", None)
    if taken.is_set() and original is not None:
        pydevd.create_server_socket = original  # type: ignore[union-attr]


def quiet_first_listen() -> None:
    """Don't let the first ``listen()`` read every installed package's metadata.

    debugpy's ``ensure_logging()`` builds a report of the environment (paths,
    and the name and version of every installed distribution) even when no log
    directory is set and the report goes nowhere. That is hundreds of small
    file reads on the wake path; beside a CPU-bound host thread each one waits
    for the GIL, and a wake was seen to take over 10 s. Only when debugpy
    logging is off (``DEBUGPY_LOG_DIR`` unset) is the step marked as done.
    """
    if not capabilities().has("quiet_listen"):
        return
    try:
        ensure = sys.modules["debugpy.server.api"].ensure_logging
        if sys.modules["debugpy.common.log"].log_dir is None:
            ensure.ensured = True
    except Exception as exc:  # noqa: BLE001 - just slower
        _log.debug("could not skip debugpy's environment report: %s", exc)


# -- the session ----------------------------------------------------------------------


def _py_db() -> Any:
    pydevd = sys.modules.get("pydevd")
    if pydevd is None:
        return None
    try:
        return pydevd.get_global_debugger()
    except Exception:  # noqa: BLE001
        return None


def current_session() -> Any:
    """The live DAP session: pydevd's reader thread of the attached client.

    That object is the same for the whole session and new for every attach.
    Returns ``None`` when no client is attached, or :data:`UNKNOWN` when this
    cannot be told. Costs a few attribute reads: no I/O, no lock, and it never
    connects to the port (a connection would be taken for a DAP client).
    """
    if not capabilities().has("session"):
        return UNKNOWN
    py_db = _py_db()
    if py_db is None:
        return UNKNOWN
    try:
        reader = getattr(py_db, "reader", None)
        if reader is None:
            return None
        if reader.is_alive() and not getattr(reader, "_kill_received", False):
            return reader
        return None
    except Exception:  # noqa: BLE001 - pydevd internals moved: the network decides
        return UNKNOWN


def _attached_reader() -> Any:
    """The reader thread of an attached client, or ``None`` (also when unknown)."""
    session = current_session()
    return None if session is UNKNOWN else session


def wait_detached(timeout: float) -> Any:
    """Wait up to ``timeout`` s for the attached client to leave; returns it if it stays."""
    deadline = time.monotonic() + timeout
    while True:
        reader = _attached_reader()
        remaining = deadline - time.monotonic()
        if reader is None or remaining <= 0:
            return reader
        reader.join(min(remaining, 0.05))


def release_session_socket(session: Any) -> None:
    """Close the socket of a DAP session whose reader thread has ended.

    pydevd (debugpy 1.8) shuts an ended session's socket down but leaves it
    open, held by a reference cycle, until the garbage collector runs: one file
    descriptor per wake/sleep cycle in a host that rarely collects.
    """
    try:
        if session.is_alive():
            return
        sock = getattr(session, "sock", None)
        if sock is not None:
            sock.close()
    except Exception:  # noqa: BLE001, S110 - best effort; the collector does it eventually
        pass


def stand_in_main_thread() -> None:
    """Stop pydevd from ending every debug session while the host's main thread is in C.

    pydevd ends a session (DAP ``terminated``, ~0.2 s after the attach) when
    ``threading`` lists no live non-daemon thread. When ``threading`` was first
    imported by our control thread while the main thread sat in a long C call
    (see ``_mainthread``), the thread ``threading`` calls "main" is that control
    thread, demoted to a daemon, and the real main thread is not listed at all:
    pydevd concludes the program has ended, though it has not. The stand-in is
    given pydevd's main-thread marker for exactly as long as it stands in: once
    the main thread runs Python again and ``_mainthread`` installs the real one,
    the marker is gone, so pydevd still notices the real end of the program.
    A no-op in the usual case, where the main thread is the real one.
    """
    main = threading.main_thread()
    if not main.daemon or isinstance(main, _StandInMain):
        return
    try:
        main.__class__ = type("_StandInMain", (_StandInMain, type(main)), {})
    except TypeError:
        pass  # an unusual thread class: pydevd may end sessions early, as before


class _StandInMain:
    """Mixin for the stand-in main thread; see :func:`stand_in_main_thread`."""

    def __getattr__(self, name: str) -> Any:
        current: Any = threading.main_thread()
        if name == "__pydevd_main_thread" and current is self:
            return True
        raise AttributeError(name)


def not_traced(thread: Any) -> None:
    """Mark one of our threads so that pydevd never traces it."""
    thread.pydev_do_not_trace = True


# -- forgetting a session the daemon just closed -----------------------------------------

#: Streams pydevd had put in place and that we took out: never freed (see below).
_RETIRED_STREAMS: list[Any] = []


def forget_session() -> bool:
    """What pydevd does on a DAP ``disconnect``, which a closing daemon never sends.

    Output redirection off, breakpoints and exception breakpoints removed,
    thread notifications off (pydevd's ``request_disconnect``), the dead
    writer's queue dropped, pydevd's thread-start patch undone.
    """
    py_db = _py_db()
    if py_db is None or not capabilities().has("forget"):
        return False
    try:
        api = _module("_pydevd_bundle.pydevd_api").PyDevdAPI()
        io = _module("_pydevd_bundle.pydevd_io")
        for path in list(getattr(py_db, "breakpoints", None) or ()):
            if isinstance(path, str) and len(_BREAKPOINT_FILES) < _MAX_BREAKPOINT_FILES:
                _BREAKPOINT_FILES.add(_same_file_key(path))
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
        drop_dead_writer()
        _unpatch_thread_start()
        return True
    except Exception as exc:  # noqa: BLE001
        _log.debug("could not forget the DAP session: %s", exc)
        return False


def drop_dead_writer() -> None:
    """Make the writer of a closed session drop what it holds and accept nothing.

    Without this every event is queued for a writer whose socket is gone, the
    queue grows without bound, and pydevd's non-daemon ``CheckAliveThread``
    blocks interpreter exit forever. ``initialize_network`` creates a fresh
    writer for the next client.
    """
    py_db = _py_db()
    writer = getattr(py_db, "writer", None)
    if writer is None or _attached_reader() is not None:
        return  # nothing, or a client is attached: its writer is alive and needed
    try:
        writer._kill_received = True  # PyDBDaemonThread's flag; add_command then drops
        queue = getattr(writer, "_cmd_queue", None)
        while queue is not None:
            try:
                queue.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                return
    except Exception as exc:  # noqa: BLE001
        _log.debug("could not drop the dead DAP writer: %s", exc)


def _any_suspended() -> bool:
    suspend = getattr(_module("_pydevd_bundle.pydevd_constants"), "STATE_SUSPEND", object())
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


# -- tracing off and on ------------------------------------------------------------------


def stop_tracing() -> bool:
    """Stop tracing the host (nothing attached, no breakpoint left). Never raises.

    * ``sys.monitoring`` (3.12+): with no breakpoint left, pydevd's own
      ``update_monitor_events()`` sets the DEBUGGER tool's global events to
      none and unregisters its callbacks; the code objects that held logpoints
      then shed their local events (:func:`_disable_local_events`). The tool
      id stays pydevd's, so the next attach needs no re-registration.
    * ``settrace`` (3.10/3.11): a tiny self-removing trace function replaces
      pydevd's on every thread and running frame (:func:`_stop_settrace`).

    Returns False (and tracing stays, as with debugpy alone) when this
    debugpy lacks what that needs.
    """
    caps = capabilities()
    py_db = _py_db()
    if py_db is None or not caps.has("untrace"):
        return False
    try:
        if caps.tracing == "sys.monitoring":
            monitoring = _module("_pydevd_sys_monitoring.pydevd_sys_monitoring")
            monitoring.update_monitor_events()
            _clear_local_events()
            _disable_local_events()
        elif getattr(py_db, "frame_eval_func", None) is not None:
            _log.debug("disarm: pydevd uses frame evaluation here; tracing left as is")
            return False
        else:
            _stop_settrace()
            _swap_sys_settrace(pydevd_wrapper=False)
        park_pollers()
        return True
    except Exception as exc:  # noqa: BLE001
        _log.debug("could not stop tracing: %s", exc)
        return False


def start_tracing() -> bool:
    """Undo :func:`stop_tracing` before a client attaches again. Never raises."""
    caps = capabilities()
    py_db = _py_db()
    if py_db is None or not caps.has("untrace"):
        return False
    unpark_pollers()
    try:
        if caps.tracing == "sys.monitoring":
            monitoring = _module("_pydevd_sys_monitoring.pydevd_sys_monitoring")
            _module("_pydev_bundle.pydev_monkey").patch_thread_modules()
            monitoring.start_monitoring(all_threads=True)  # no-op while the tool is ours
            monitoring.update_monitor_events()
        else:
            _clear_removers()
            _swap_sys_settrace(pydevd_wrapper=True)
            # Exactly what pydevd.settrace() does on the first listen.
            py_db.patch_threads()
            py_db.enable_tracing(py_db.trace_dispatch, apply_to_all_threads=True)
            py_db.set_tracing_for_untraced_contexts()
            trace_main_thread_itself()
        return True
    except Exception as exc:  # noqa: BLE001
        _log.debug("could not restart tracing: %s", exc)
        return False


# -- pydevd's polling threads while asleep ---------------------------------------------

#: How long pydevd's polling threads wait between two looks while asleep (0.2-0.3 s
#: awake). Bounded, so that a path nobody foresaw can only delay, never hang: the one
#: look that matters asleep, whether the process may exit, is made at once by
#: :func:`release_at_exit`, which unparks first.
PARKED_POLL = 30.0

_pollers_parked = False


class _PollWait:
    """Stands in for the event one of pydevd's polling threads waits on between looks.

    The same event underneath, so every ``set()`` of pydevd's still wakes the thread at
    once (a posted command, a kill); only the timeout of its ``wait()`` is longer while
    parked. pydevd's command thread (looks for queued commands) and its alive-check
    thread (looks whether the process may end) each wait 0.2-0.3 s between looks
    from the first wake to the end of the process: ten wake-ups a second, each taking
    the GIL from a host that computes, in a process that nobody observes.
    """

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event

    def wait(self, timeout: float | None = None) -> bool:
        if _pollers_parked and timeout is not None:
            timeout = max(timeout, PARKED_POLL)
        return bool(self.event.wait(timeout))

    def set(self) -> None:
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    def is_set(self) -> bool:
        return bool(self.event.is_set())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.event, name)


#: pydevd's polling threads: where :class:`PyDB` keeps each, its class, and the
#: attribute of the event it waits on (the probe checks each class's loop uses it).
_POLLERS = (
    ("py_db_command_thread", "PyDBCommandThread", "_py_db_command_thread_event"),
    ("check_alive_thread", "CheckAliveThread", "_wait_event"),
)


def park_pollers() -> None:
    """Asleep: pydevd's polling threads look every :data:`PARKED_POLL` s. Never raises."""
    global _pollers_parked
    py_db = _py_db()
    if py_db is None or not capabilities().has("quiet_pollers"):
        return
    try:
        _pollers_parked = True
        for thread_attr, _, event_attr in _POLLERS:
            thread = getattr(py_db, thread_attr, None)
            event = getattr(thread, event_attr, None)
            if event is not None and not isinstance(event, _PollWait):
                setattr(thread, event_attr, _PollWait(event))
    except Exception as exc:  # noqa: BLE001 - at worst they poll as before
        _log.debug("could not quiet pydevd's polling threads: %s", exc)


def unpark_pollers() -> None:
    """pydevd's polling threads look every 0.2-0.3 s again, from now on. Never raises."""
    global _pollers_parked
    if not _pollers_parked:
        return
    _pollers_parked = False
    try:
        py_db = _py_db()
        if py_db is None:
            return
        # The command thread clears its event after each look: a set() just wakes it.
        command = getattr(py_db, "py_db_command_thread", None)
        event = getattr(command, "_py_db_command_thread_event", None)
        if event is not None:
            event.set()
        # The alive-check never clears its own (set means "end"): it gets a fresh
        # one to wait on, and the old one, set, ends the long wait it is in.
        checker = getattr(py_db, "check_alive_thread", None)
        parked = getattr(checker, "_wait_event", None)
        if checker is not None and isinstance(parked, _PollWait) and not parked.is_set():
            checker._wait_event = _PollWait(type(parked.event)())
            parked.set()
    except Exception as exc:  # noqa: BLE001 - at worst their next look comes later
        _log.debug("could not wake pydevd's polling threads: %s", exc)


def _remove_trace(frame: FrameType, event: str, arg: Any) -> None:
    """Trace function that switches tracing off in the thread that calls it.

    All of it under the lock: a re-arm (:func:`_clear_removers`, then pydevd's
    tracer on every frame) must come wholly before or wholly after. Clearing
    frames after the lock was let go could wipe the tracer a re-arm had just
    put on a running frame, and a module-level loop that calls no Python
    function would then never report again. Trace functions are not traced,
    so nothing here re-enters by a trace event; a pending call of the main
    thread can still run in the middle of it, and takes the (re-entrant) lock
    again.
    """
    with _REMOVER_LOCK:
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


#: Whether ``_remove_trace`` should still remove (False once rearmed): "disarmed".
_REMOVER_ACTIVE = [False]
#: Re-entrant: the main thread takes it in a trace function and in pending calls, and
#: a pending call can run in the middle of either (at any bytecode boundary). A plain
#: lock would have the main thread wait for itself there. Never gevent's.
_REMOVER_LOCK = _native.RLock()


def _swap_sys_settrace(*, pydevd_wrapper: bool) -> None:
    """``sys.settrace`` itself while asleep, pydevd's warning wrapper while awake.

    pydevd replaces ``sys.settrace`` with a wrapper that prints "PYDEV DEBUGGER
    WARNING: sys.settrace() should not be used when the debugger is being used"
    on stderr (once per call site) before it passes the call on. While nothing
    is attached a host that traces (coverage, a profiler, its own tool) is not
    in anybody's way, and the warning would be a line on its stderr that
    detrix-auto caused. Swapped only while ``sys.settrace`` is the one the
    other side left (a host that put in its own keeps it).
    """
    tracing = sys.modules.get("pydevd_tracing")
    holder = getattr(tracing, "TracingFunctionHolder", None)
    original = getattr(holder, "_original_tracing", None)
    wrapper = getattr(tracing, "_internal_set_trace", None)
    if original is None or wrapper is None:
        return  # pydevd did not replace it (sys.monitoring), or names changed: leave it
    if pydevd_wrapper and sys.settrace is original:
        sys.settrace = wrapper
    elif not pydevd_wrapper and sys.settrace is wrapper:
        sys.settrace = original


def _original_settrace() -> Any:
    """``sys.settrace`` as it was before pydevd replaced it with a warning wrapper."""
    tracing = sys.modules.get("pydevd_tracing")
    holder = getattr(tracing, "TracingFunctionHolder", None)
    original = getattr(holder, "_original_tracing", None)
    return original if original is not None else sys.settrace


def _stop_settrace() -> None:
    """pydevd's ``sys.settrace`` tracer off on every thread (3.10/3.11, or a debugpy
    older than 1.8.6 on 3.12+): now, or on 3.10/3.11 at each thread's next event."""
    with _REMOVER_LOCK:
        _REMOVER_ACTIVE[0] = True  # disarmed: also what pydevd's SetTrace now checks
    if sys.version_info >= (3, 12):
        _stop_settrace_everywhere()
        if _greenlet_mode():  # its hook is per thread: the main thread takes it out
            if _native.get_ident() == threading.main_thread().ident:
                _drop_greenlet_hook()
            else:
                _in_main_thread(_drop_greenlet_hook)
        return
    tracing = _module("pydevd_tracing")
    try:
        threading.settrace(None)
    except Exception:  # noqa: BLE001, S110 - only future threads are concerned
        pass
    me = _native.get_ident()  # the OS thread, not a greenlet
    # Existing threads: the global trace function (called for 'call' events)...
    try:
        helper = _set_global_trace(tracing, _remove_trace, me)
    except Exception as exc:  # noqa: BLE001 - no helper library on this platform
        helper = -1
        _log.debug("disarm: pydevd's all-threads helper failed: %s", exc)
    if helper != 0:
        _log.debug("disarm: some threads stop tracing only at their next line")
    # ...and every running frame's local one (called for 'line' and 'return'); a
    # frame that has none keeps none. Threads never to be traced (pydevd's, ours)
    # have no tracer of pydevd's for _remove_trace to take out: theirs go at once.
    # pydevd's listener thread can hold frames of our gate with one (seen once in
    # CI), and blocked in accept() until the next wake it would never see an event.
    untraced = _never_traced_idents()
    for ident, top in sys._current_frames().items():
        for frame in _stack(top):
            if frame.f_trace is not None:
                mine = ident == me or ident in untraced
                frame.f_trace = None if mine else _remove_trace
    tracing.SetTrace(None)  # this thread: at once
    if me != threading.main_thread().ident:
        _in_main_thread(_untrace_main)  # the main thread without waiting for its next line
    else:
        _drop_greenlet_hook()


def _stop_settrace_everywhere() -> None:
    """3.12+: ``sys.settrace`` is one interpreter-wide instrumentation, on while any
    thread has a tracer, so a self-removing tracer left on a thread blocked in C (our
    control thread, waiting in ``accept()``) would keep every thread slow (3.4x
    measured). There is no per-loop flag to outwit here either, so every thread's
    tracer and every frame's go at once, through threading's own all-threads call.
    """
    settrace_all = getattr(threading, "settrace_all_threads", None)
    if settrace_all is not None:
        settrace_all(None)
    for top in sys._current_frames().values():
        for frame in _stack(top):
            if frame.f_trace is not None:
                frame.f_trace = None


def _set_global_trace(tracing: Any, func: Any, me: int) -> int:
    """Set ``func`` as the trace function of every other thread running Python code.

    pydevd's helper library does the work in C, under the GIL, one thread at a
    time, by thread id. pydevd's own ``set_trace_to_threads`` also starts a
    short-lived thread per target to bump a counter that only CPython <= 3.9
    had; on a busy host each of those waits for the GIL, which made a sleep
    take ~150 ms instead of a few. Returns how many threads it could not reach.
    """
    loader = getattr(tracing, "_load_python_helper_lib", None)
    lib = loader() if loader is not None else None
    if lib is None:
        result: int = tracing.set_trace_to_threads(func, create_dummy_thread=False)
        return result
    skip = _never_traced_idents()
    failed = 0
    for ident in list(sys._current_frames()):
        if ident == me or ident in skip:
            continue
        failed += _attach_tracing(lib, func, ident) != 0
    return failed


def _never_traced_idents() -> set[int | None]:
    """The threads pydevd never traces: its own, and ours (see :func:`not_traced`).

    From threading's own table: pydevd patches ``threading.enumerate`` to hide
    its threads, and they are the ones looked for here.
    """
    return {
        t.ident
        for t in list(threading._active.values())  # type: ignore[attr-defined]
        if getattr(t, "pydev_do_not_trace", False) or getattr(t, "is_pydev_daemon_thread", False)
    }


def _attach_tracing(lib: Any, func: Any, ident: int) -> int:
    """The helper library sets ``func`` as thread ``ident``'s tracer; 0 when it did."""
    import ctypes

    code: int = lib.AttachDebuggerTracing(
        ctypes.c_int(0),
        ctypes.py_object(_original_settrace()),
        ctypes.py_object(func),
        ctypes.c_uint(ident),
        ctypes.py_object(None),
    )
    return code


def guard_thread_tracing() -> None:
    """Before ``listen()``: pydevd's all-threads tracing reaches only started threads.

    pydevd's ``set_trace_to_threads``, with no threads named (``listen()``, every
    re-arm), takes every thread of ``threading.enumerate()``: one being started
    is there without an ident yet, and pydevd makes a dummy thread for ``None``.
    On 3.13 that is a TypeError and the wake fails ("ident must be an integer",
    seen in CI with debugpy 1.8.0); on 3.10/3.11 a ``None`` key stays in the
    host's ``threading._active``. The threads are named here instead: every
    thread running Python code and every started one of threading's, less those
    pydevd never traces. A thread being started gets the tracer as it starts
    (pydevd's thread-start patch, in place before the tracing). Only where
    pydevd traces by ``sys.settrace``.
    """
    caps = capabilities()
    if caps.tracing != "settrace":
        return
    try:
        _wrap_set_trace_to_threads(lean=caps.has("lean_settrace") and sys.version_info < (3, 12))
    except Exception as exc:  # noqa: BLE001 - pydevd's own choice, as with debugpy alone
        _log.debug("could not wrap pydevd's set_trace_to_threads: %s", exc)


def _threads_to_trace() -> list[int]:
    """Every thread running Python code or started by threading, less the never-traced."""
    idents = set(sys._current_frames())
    idents.update(ident for ident in list(threading._active) if isinstance(ident, int))  # type: ignore[attr-defined]
    return list(idents - _never_traced_idents())


def _wrap_set_trace_to_threads(*, lean: bool) -> None:
    """pydevd's ``set_trace_to_threads`` with the threads named (:func:`guard_thread_tracing`),
    and, when ``lean``, without a thread start per call for named threads.

    For each call pydevd starts an OS thread and waits for it, to bump a
    "tracing possible" counter that only CPython <= 3.9 had, then has the
    helper library set the tracer. Its ``SetTrace`` (one thread) goes through
    it, and in gevent mode pydevd calls ``SetTrace`` at every greenlet switch,
    because greenlet keeps a "tracing" flag per greenlet on 3.10/3.11: a
    gevent app measured 1,900 greenlets/s awake against 70,000 before the
    wake. Calls for named threads without dummy threads go straight to the
    helper; every other call goes to pydevd's own function.
    """
    tracing = _module("pydevd_tracing")
    original = getattr(tracing, "set_trace_to_threads", None)
    if original is None or getattr(original, "_detrix_wrapped", False):
        return
    if _code_args(original)[:3] != ("tracing_func", "thread_idents", "create_dummy_thread"):
        return  # not the function we know: left as it is
    loader = tracing._load_python_helper_lib if lean else None

    def set_trace_to_threads(
        tracing_func: Any, thread_idents: Any = None, create_dummy_thread: bool = True
    ) -> int:
        if thread_idents is None:
            thread_idents = _threads_to_trace()
        lib = loader() if loader is not None and not create_dummy_thread else None
        if lib is None:
            result: int = original(tracing_func, thread_idents, create_dummy_thread)
            return result
        failed = 0
        for ident in thread_idents:
            try:
                code = _attach_tracing(lib, tracing_func, ident)
            except Exception:  # noqa: BLE001 - pydevd answers -1 here too
                code = -1
            failed = code if code != 0 else failed
        return failed

    set_trace_to_threads._detrix_wrapped = True  # type: ignore[attr-defined]
    tracing.set_trace_to_threads = set_trace_to_threads


def _keep_off_while_disarmed() -> None:
    """pydevd's ``SetTrace`` puts no tracer on a thread while we are disarmed.

    pydevd calls it on its own: at each greenlet switch in gevent mode, for a
    thread it starts. One such call can even be running in the main thread
    when the sleep's pending call (:func:`_untrace_main`) runs in the middle of
    it, and would then put pydevd's tracer back once that call is done: found
    in two runs of three of a gevent app, which kept running 1.5x slower after
    the sleep. So a call while disarmed does nothing, and one that was
    disarmed as it ran leaves the self-removing tracer behind instead.
    """
    tracing = _module("pydevd_tracing")
    original = getattr(tracing, "SetTrace", None)
    if original is None or getattr(original, "_detrix_guard", False):
        return

    def SetTrace(tracing_func: Any) -> None:  # pydevd's name
        if tracing_func is None:
            original(None)
            return
        with _REMOVER_LOCK:
            if _REMOVER_ACTIVE[0]:
                return
            original(tracing_func)
            if _REMOVER_ACTIVE[0]:  # disarmed in the middle, in this very thread
                # 3.12+: no per-loop flag to outwit, the tracer can go at once.
                late = _remove_trace if sys.version_info < (3, 12) else None
                _original_settrace()(late)

    SetTrace._detrix_guard = True  # type: ignore[attr-defined]
    tracing.SetTrace = SetTrace


def _in_main_thread(func: Callable[[], None]) -> None:
    """Run ``func`` in the main thread at its next bytecode boundary (Py_AddPendingCall)."""
    try:
        from ._mainthread import call_soon_in_main

        call_soon_in_main(func)
    except Exception as exc:  # noqa: BLE001 - no ctypes: the all-threads helper alone
        _log.debug("could not schedule a call in the main thread: %s", exc)


def trace_main_thread_itself() -> None:
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
    if capabilities().tracing != "settrace":
        return
    if threading.current_thread() is threading.main_thread():
        return
    _in_main_thread(_trace_me)


def _trace_me() -> None:
    """Runs in the main thread (pending call): pydevd's tracer on it, unless disarmed."""
    py_db = _py_db()
    if py_db is None or _REMOVER_ACTIVE[0]:
        return
    greenlets = _greenlet_mode()
    if sys.gettrace() not in (None, _remove_trace) and not greenlets:
        return
    if greenlets:
        # Also when the helper already traced this thread: pydevd's greenlet hook,
        # which re-traces each greenlet as it resumes, is set per thread, here.
        _remember_host_greenlet_trace()
    py_db.enable_tracing()  # pydevd's way (its faster trampoline)...
    if sys.gettrace() is None:  # ...which can miss this very thread the same way
        _original_settrace()(py_db.get_thread_local_trace_func())


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
    _drop_greenlet_hook()
    # From the frame the pending call interrupted: this function and
    # _mainthread's trampoline run in the nested loop, and an event of theirs
    # reaching _remove_trace would remove the tracer in the wrong loop.
    try:
        interrupted = sys._getframe(2)
    except ValueError:  # not called through the trampoline: nothing to mark
        interrupted = None
    frames = list(_stack(interrupted))  # before the lock: a Python call may be traced
    # Marking and installing under the lock, and only while still disarming: a
    # re-arm in between has put pydevd's tracer on these frames, and marking them
    # now would have the next event wipe it.
    # Last: once this thread has a tracer, any Python call here would be a
    # 'call' event, and the removal would happen in this nested loop after all.
    with _REMOVER_LOCK:
        if _REMOVER_ACTIVE[0]:
            for frame in frames:
                frame.f_trace = _remove_trace
            _original_settrace()(_remove_trace)


#: The main thread's greenlet trace function before pydevd put its own in (gevent mode).
_HOST_GREENLET_TRACE: list[Any] = [None]


def _greenlet_mode() -> bool:
    """Was pydevd imported in gevent mode (it then hooks greenlet switches)?"""
    return getattr(sys.modules.get("pydevd"), "pydevd_gevent_integration", None) is not None


def _pydevd_greenlet_hook() -> Any:
    integration = sys.modules.get("_pydevd_bundle.pydevd_gevent_integration")
    return getattr(integration, "greenlet_events", None)


def _remember_host_greenlet_trace() -> None:
    """Before pydevd hooks this thread's greenlet switches: what the host had there."""
    greenlet = sys.modules.get("greenlet")
    try:
        current = greenlet.gettrace()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - no greenlet, or one without tracing
        return
    if current is not _pydevd_greenlet_hook():
        _HOST_GREENLET_TRACE[0] = current


def _drop_greenlet_hook() -> None:
    """pydevd tracing by settrace in gevent mode, in the main thread: pydevd's greenlet hook out.

    At every greenlet switch it puts pydevd's tracer back on the thread (and
    greenlet keeps a "tracing" flag per greenlet): left in place, a sleep
    changes nothing, and the app keeps running tens of times slower. The
    host's own greenlet trace function, if it had one, goes back in its place.
    """
    greenlet = sys.modules.get("greenlet")
    hook = _pydevd_greenlet_hook()
    if greenlet is None or hook is None:
        return
    try:
        if greenlet.gettrace() is hook:
            greenlet.settrace(_HOST_GREENLET_TRACE[0])
    except Exception as exc:  # noqa: BLE001 - tracing then stays, as with debugpy alone
        _log.debug("could not take pydevd's greenlet hook out: %s", exc)


def _clear_removers() -> None:
    with _REMOVER_LOCK:
        _REMOVER_ACTIVE[0] = False
    for top in sys._current_frames().values():
        for frame in _stack(top):
            if frame.f_trace is _remove_trace:
                frame.f_trace = None


#: Files that held breakpoints in this process (canonical keys): their code objects are
#: the ones pydevd gave local events to. Bounded: a daemon names a few files.
_BREAKPOINT_FILES: set[str] = set()
_MAX_BREAKPOINT_FILES = 4096


def _same_file_key(path: str) -> str:
    try:
        return os.path.normcase(os.path.realpath(path))
    except (OSError, ValueError):
        return path


def _clear_local_events() -> None:
    """3.12+: take pydevd's local events off every code object it gave them to.

    pydevd enables ``LINE``/``JUMP`` (and ``PY_RETURN`` for stepping) on the
    code objects of files with breakpoints and on running frames, and leaves
    them set when the breakpoints go: each such location then still costs an
    event until it is disabled. The code objects are found without walking the
    heap: those of every frame on every thread's stack, and those of the
    modules whose files held breakpoints (their functions, classes' methods,
    and every code object nested in those). Whatever this misses (code made by
    ``exec``), :func:`_disable_local_events` switches off at its next event.
    """
    import types

    monitoring: Any = getattr(sys, "monitoring", None)
    if monitoring is None:
        return
    tool = monitoring.DEBUGGER_ID
    if monitoring.get_tool(tool) != "pydevd":
        return
    codes: set[types.CodeType] = set()
    for top in sys._current_frames().values():
        codes.update(frame.f_code for frame in _stack(top))
    if _BREAKPOINT_FILES:
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and _same_file_key(path) in _BREAKPOINT_FILES:
                codes.update(_module_code(module))
    pending = list(codes)
    while pending:
        code = pending.pop()
        for const in code.co_consts:
            if isinstance(const, types.CodeType) and const not in codes:
                codes.add(const)
                pending.append(const)
    for code in codes:
        if monitoring.get_local_events(tool, code):
            monitoring.set_local_events(tool, code, 0)


def _module_code(module: Any) -> Iterator[Any]:
    """The code objects of a module's functions, and of its classes' methods."""
    import types

    seen: set[int] = set()
    pending: list[Any] = list(vars(module).values())
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            pending.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, types.FunctionType):
            yield obj.__code__
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            pending.extend(vars(obj).values())


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


# -- hooks into pydevd's connection handling, and exit --------------------------------------


def install_hooks(on_initialize: Callable[[], None]) -> None:
    """After ``listen()``: watch for DAP ``initialize``; TCP_NODELAY on DAP sockets."""
    py_db = _py_db()
    if py_db is None:
        return
    caps = capabilities()
    if caps.has("attach_watch"):
        try:
            py_db.add_dap_messages_listener(_InitializeListener(on_initialize))
        except Exception as exc:  # noqa: BLE001
            _log.debug("could not watch DAP messages: %s", exc)
    if caps.has("nodelay"):
        try:
            _send_without_delay(py_db)
        except Exception as exc:  # noqa: BLE001
            _log.debug("could not set TCP_NODELAY on DAP sockets: %s", exc)
    if caps.tracing == "settrace":
        try:
            if caps.has("untrace"):
                _keep_off_while_disarmed()
        except Exception as exc:  # noqa: BLE001
            _log.debug("could not wrap pydevd's SetTrace: %s", exc)
    if caps.tracing == "sys.monitoring" and caps.has("resume"):
        try:
            _watch_resumes()
        except Exception as exc:  # noqa: BLE001
            _log.debug("could not watch resumed frames: %s", exc)


class _InitializeListener:
    """pydevd ``IDAPMessagesListener``: calls back on a client's ``initialize``, and
    remembers every file a ``setBreakpoints`` named (see :func:`_clear_local_events`)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def before_send(self, message_as_dict: Any) -> None:
        pass

    def after_receive(self, message_as_dict: Any) -> None:
        try:
            if message_as_dict.get("type") != "request":
                return
            command = message_as_dict.get("command")
            if command == "initialize":
                self._callback()
            elif command == "setBreakpoints":
                path = message_as_dict.get("arguments", {}).get("source", {}).get("path")
                if isinstance(path, str) and len(_BREAKPOINT_FILES) < _MAX_BREAKPOINT_FILES:
                    _BREAKPOINT_FILES.add(_same_file_key(path))
        except Exception:  # noqa: BLE001, S110 - never break pydevd's reader
            pass


def _watch_resumes() -> None:
    """3.12+: have pydevd decide about a frame that resumes as about one that starts.

    When breakpoints change, pydevd (``update_monitor_events``) turns on the
    global ``PY_START`` and ``PY_RESUME`` events but registers a callback for
    ``PY_START`` only, and gives line events to the code on every thread's
    stack. A coroutine awaiting (or a generator paused) at that moment is on
    no stack and never starts again: its code never gets line events, and its
    logpoints never fire. So after each of pydevd's updates, while it wants
    ``PY_RESUME`` (it has breakpoints), :func:`_resume_event` is that event's
    callback: it asks pydevd's own ``enable_code_tracing`` about the resumed
    frame, exactly what pydevd does for a starting one, and then disables
    itself at that location (``DISABLE``), so each resume point costs one call
    per breakpoint change (pydevd's ``restart_events`` re-enables them). When
    breakpoints go, pydevd unregisters the callback itself; sleep leaves
    nothing (``stop_tracing``).
    """
    global _ENABLE_CODE_TRACING
    monitoring = _module("_pydevd_sys_monitoring.pydevd_sys_monitoring")
    original = monitoring.update_monitor_events
    _ENABLE_CODE_TRACING = monitoring.enable_code_tracing
    if getattr(original, "_detrix_resume", False):
        return

    def update_monitor_events(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _trace_resumes()
        return result

    update_monitor_events._detrix_resume = True  # type: ignore[attr-defined]
    monitoring.update_monitor_events = update_monitor_events
    _trace_resumes()


def _trace_resumes() -> None:
    """Register :func:`_resume_event` if pydevd now wants ``PY_RESUME`` events."""
    global _ENABLE_CODE_TRACING
    try:
        monitor: Any = getattr(sys, "monitoring", None)
        tool = monitor.DEBUGGER_ID
        resume = monitor.events.PY_RESUME
        if monitor.get_tool(tool) != "pydevd" or not monitor.get_events(tool) & resume:
            return
        previous = monitor.register_callback(tool, resume, _resume_event)
        if previous not in (None, _resume_event, _disable_event):
            # This pydevd watches resumes itself: leave it to it.
            monitor.register_callback(tool, resume, previous)
            _ENABLE_CODE_TRACING = None
    except Exception as exc:  # noqa: BLE001 - pydevd's updates must go on
        _log.debug("could not watch resumed frames: %s", exc)


#: pydevd's ``enable_code_tracing(thread_ident, code, frame)``, once :func:`_watch_resumes` ran.
_ENABLE_CODE_TRACING: Any = None


def _resume_event(code: Any, instruction_offset: int) -> Any:
    """``PY_RESUME`` callback: pydevd traces the resumed frame's code if it has breakpoints."""
    enable = _ENABLE_CODE_TRACING
    if enable is not None:
        try:
            frame = sys._getframe(1)
            if frame.f_code is code:
                enable(threading.get_ident(), code, frame)
        except Exception:  # noqa: BLE001, S110 - never raise into the host's frame
            pass
    return _DISABLE


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


def release_at_exit() -> None:
    """Before ``threading`` joins non-daemon threads: unblock pydevd's CheckAliveThread.

    With no client attached, pydevd's non-daemon CheckAliveThread has nothing
    to flush; left alone it waits for a writer that can never drain (exit
    hangs) or, at best, for its next 0.2 s poll. Told to stop now, it
    disposes pydevd's threads at once. Registered with ``threading``'s exit
    hooks by the debugger; runs only when nothing is attached.
    """
    unpark_pollers()  # whatever follows, the alive-check looks every 0.2-0.3 s again
    try:
        py_db = _py_db()
        if py_db is None or _attached_reader() is not None or not capabilities().has("exit"):
            return
        drop_dead_writer()
        checker = getattr(py_db, "check_alive_thread", None)
        if checker is None or _other_user_threads():
            return  # pydevd keeps the process up for those: not ours to change
        # What the checker would do at its next poll, without its polling:
        # end pydevd's threads now (its accept thread only ends once accept()
        # returns, which closing the socket does not cause on Linux), give
        # them a moment, then let the checker find nothing left to wait for.
        waiting = getattr(py_db, "_waiting_for_connection_thread", None)
        server = getattr(waiting, "_server_socket", None)
        if waiting is not None and server is not None:
            waiting._kill_received = True
            try:
                import socket

                server.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001, S110 - already closed
                pass
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


def _other_user_threads() -> bool:
    """Is a non-daemon thread other than this (exiting main) one still running?

    A thread marked ``__pydevd_main_thread`` stands in for the main thread
    (:func:`stand_in_main_thread`), which is the one exiting now.
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
