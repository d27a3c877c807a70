"""The process-wide client: started by ``init()`` or by the start-up hook.

Start-up cost lives here, so this module imports almost nothing: the control
server (``_socket``/``_thread`` only) is opened at once, and the full client
(``lifecycle``: state machine, locks, daemon link) is built the first time
anybody needs it: a control-plane request, or a call of the public API.

It also owns the process-level hooks: ``atexit`` (unregister if awake, remove
the discovery record) and fork (a child starts afresh with its own control
plane and name, and never touches the parent's registration). Forks that
bypass ``os.register_at_fork`` are caught lazily by comparing pids.
"""

from __future__ import annotations

import _thread
import os
import sys

from . import _native
from .errors import AlreadyInitializedError, NotInitializedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Settings
    from .control.server import ControlServer
    from .lifecycle import Client

__all__ = ["get_client", "idle_status", "is_started", "shutdown", "start"]

_lock = _thread.RLock()
_settings: Settings | None = None
_server: ControlServer | None = None
_client: Client | None = None
_record_path: str | None = None
_pid = 0
#: Started by ``init()`` (True) rather than by the start-up hook (False).
_explicit = False
_hooks_installed = False
#: The process that imported this module; any other pid running it is a fork (no exec).
_loaded_in_pid = os.getpid()

NOT_STARTED = (
    "detrix-auto is not initialized: call detrix_auto.init() first "
    "(or start the process with DETRIX_ENABLE=1)"
)
ALREADY_STARTED = (
    "detrix-auto is already initialized in this process (by an earlier init()); "
    "call detrix_auto.shutdown() first to start again"
)


def is_started() -> bool:
    _reset_if_forked()
    return _settings is not None


def start(settings: Settings, *, eager: bool = False, explicit: bool = False) -> None:
    """Open the control plane and remember the settings; ``eager`` builds the client now.

    ``explicit`` is a call of ``init()``. The first one replaces a client the
    start-up hook started (``DETRIX_ENABLE=1``): a program written for the
    original client calls ``init()`` with its own settings, which win over the
    environment, and must not crash because the hook came first. A second
    explicit ``init()`` raises :class:`AlreadyInitializedError` (a ``ConfigError``).
    """
    global _settings, _server, _pid, _explicit
    if explicit:
        _replace_hook_client()
    with _lock:
        _reset_if_forked()
        if _settings is not None:
            raise AlreadyInitializedError(ALREADY_STARTED)
        if settings.log_level != "off":
            from . import _log

            _log.configure(settings.log_level)
        if settings.switch_interval is not None:
            from . import _handoff

            _handoff.keep_interval(settings.switch_interval)
        from .control.server import ControlServer

        server = ControlServer(settings.control_host, settings.control_port, _make_router)
        _settings, _server, _pid, _explicit = settings, server, os.getpid(), explicit
        if _native.main_thread_ident is None:
            threading = sys.modules.get("threading")
            main = getattr(threading, "main_thread", None)
            # The hook runs in the main thread; init() asks threading when it can.
            _native.main_thread_ident = main().ident if main is not None else _thread.get_ident()
        _install_hooks()
        server.start()
        if settings.discovery:
            # Written here, not by the server thread: a few syscalls, and done
            # before the application runs, so whoever waits for it never races
            # and no thread competes with the host's start-up for the GIL.
            _write_discovery()
    if eager or settings.start_state != "sleeping":
        client = get_client()
        if settings.start_state == "warm":
            _native.start_new_thread(client.warm, ())
        elif settings.start_state == "awake":
            client.keep_awake()


def _replace_hook_client() -> None:
    """Shut down a client the start-up hook started, so that ``init()`` can start its own."""
    with _lock:
        _reset_if_forked()
        server = _server if _settings is not None and not _explicit else None
    if server is not None:
        shutdown(only=server)


def idle_status() -> dict[str, Any]:
    """``status()`` before ``init()``: asleep, nothing listening (the original answered so too).

    ``control_port`` 0 is the schema's "not started yet".
    """
    from ._status import daemon_at_rest, status_document
    from .config import DEFAULT_DAEMON_URL, daemon_url_problem

    url = os.environ.get("DETRIX_DAEMON_URL", "").strip()
    usable = url if url and daemon_url_problem(url) is None else None
    daemon_url, source = daemon_at_rest(usable, DEFAULT_DAEMON_URL)
    return status_document(
        name="",
        control_host="",
        control_port=0,
        daemon_url=daemon_url,
        daemon_url_source=source,
    )


def get_client() -> Client:
    """The client, built on first use; :class:`NotInitializedError` before ``init()``."""
    global _client
    if _client is None and _settings is not None:
        # Before the first import of the client's modules, and outside the lock (a
        # host main thread inside an import may be calling init() meanwhile).
        from . import _import_races

        _import_races.settle()  # before our first import that imports importlib
        _import_races.wait_for_gevents_hub()
        _import_races.wait_for_main_imports()
    with _lock:
        _reset_if_forked()
        if _settings is None:
            raise NotInitializedError(NOT_STARTED)
        if _client is None:
            from .lifecycle import Client

            client = Client(_settings)
            client.control = _server
            _client = client
        return _client


def shutdown(*, only: ControlServer | None = None) -> None:
    """Stop the client and the control plane; ``init()`` may be called again.

    ``only``: do it only if that control server is still the current one.
    """
    global _settings, _server, _client, _record_path
    with _lock:
        _reset_if_forked()
        if only is not None and _server is not only:
            return
        client, server, record = _client, _server, _record_path
        kept = _settings is not None and _settings.switch_interval is not None
        _settings = _server = _client = _record_path = None
    if client is not None:
        client.shutdown()
    elif server is not None:
        server.close()
    if kept:
        from . import _handoff

        _handoff.release_interval()
    if record is not None:
        from .discovery import remove_record

        remove_record(record, os.getpid())


def _make_router() -> Any:
    from .control.routes import Router
    from .token import load_token

    with _lock:
        settings, server = _settings, _server
    if settings is None:
        raise NotInitializedError(NOT_STARTED)
    token_files = settings.token_files
    return Router(_ClientView(settings, server), lambda: load_token(settings.token, token_files))


class _ClientView:
    """The client as the control plane sees it, without building it for a status request.

    Building the :class:`~detrix_auto.lifecycle.Client` loads the state
    machine, ``threading``, ``hashlib`` and the debugger module: megabytes, to
    answer ``status`` for a process that has never been woken. Until something
    needs the real client (a wake, a sleep, or the API), ``status`` and ``info``
    are answered from the settings: what a freshly built client would say
    (``tests/test_footprint.py`` compares the two). Everything else goes to the
    real client, built on first use.
    """

    def __init__(self, settings: Settings, server: ControlServer | None) -> None:
        self.settings = settings
        self._server = server

    def _built(self) -> Client | None:
        if _client is None and "detrix_auto.lifecycle" in sys.modules:
            # The debugger module has state of its own (a listener opened by an
            # earlier client of this process): only the real client knows it.
            return self._real()
        return _client

    def _real(self) -> Client:
        from ._mainthread import ensure_threading

        ensure_threading()  # the client imports threading; see _mainthread
        return get_client()

    def status(self) -> dict[str, Any]:
        client = self._built()
        return client.status() if client is not None else self.fresh_status()

    def info(self) -> dict[str, Any]:
        client = self._built()
        return client.info() if client is not None else self.fresh_info()

    def fresh_status(self) -> dict[str, Any]:
        """``Client.status()`` of a client built now: nothing has happened yet."""
        from ._status import daemon_at_rest, status_document
        from .config import DEFAULT_DAEMON_URL

        settings, server = self.settings, self._server
        daemon_url, source = daemon_at_rest(settings.daemon_url, DEFAULT_DAEMON_URL)
        return status_document(
            name=settings.connection_name(os.getpid()),
            control_host=server.host if server is not None else settings.control_host,
            control_port=server.port if server is not None else 0,
            daemon_url=daemon_url,
            daemon_url_source=source,
            advertise_host=settings.advertise_host,
        )

    def fresh_info(self) -> dict[str, Any]:
        """``Client.info()``, which depends on nothing but the process."""
        return {
            "name": self.settings.connection_name(os.getpid()),
            "pid": os.getpid(),
            "python_version": sys.version.split()[0],
            "python_executable": sys.executable or "",
        }

    def poke(self) -> None:
        client = _client
        if client is not None:
            client.poke()

    def wake(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().wake(*args, **kwargs)

    def sleep(self) -> Any:
        return self._real().sleep()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)


def _write_discovery() -> None:
    """Write the record; when none can be written, say so once (``doctor`` finds us anyway)."""
    global _record_path
    problem = ""
    try:
        _record_path = _discovery_record()
    except Exception as exc:  # noqa: BLE001 - discovery never fails the host
        problem = f"could not write the discovery record ({exc})"
    else:
        if _record_path is None and _settings is not None and _server is not None:
            problem = (
                f"no discovery record could be written under {_settings.detrix_home} or its "
                "fallback directories (read-only, full, or not private to this user)"
            )
    if problem:
        from . import _log

        url = _server.url if _server is not None else "?"
        _log.warn(
            f"{problem}; this process is instrumented all the same: its control plane is "
            f"{url}, which `detrix-auto doctor {os.getpid()}` finds through its socket"
        )


def _discovery_record() -> str | None:
    settings, server = _settings, _server
    if settings is None or server is None:
        return None
    import time

    from . import __version__
    from .discovery import process_identity, write_record

    record = {
        "pid": os.getpid(),
        "name": settings.connection_name(),
        "control_url": server.url,
        "control_host": server.host,
        "control_port": server.port,
        "started_at": time.time(),
        **process_identity(),  # proc_start, pid_ns, host_pid
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": _cwd(),
        "detrix_auto_version": __version__,
        "token_required": settings.require_token,
        **_lineage(),
    }
    return write_record(settings.detrix_home, record)


def _lineage() -> dict[str, Any]:
    """Record keys for pre-fork servers: is this a fork, and can it still be woken?

    debugpy listens once per process image: a fork made after an ancestor's
    ``debugpy.listen()`` inherits that fact and can never listen itself. The
    CLI uses these keys to mark such workers and their master, and to refuse
    waking a master whose later workers would become unwakeable.
    """
    if _loaded_in_pid == os.getpid():
        return {"forked_from": None, "wakeable": True}
    api = sys.modules.get("debugpy.server.api")
    listened = bool(getattr(getattr(api, "listen", None), "called", False))
    return {"forked_from": os.getppid(), "wakeable": not listened}


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


# -- process hooks ------------------------------------------------------------


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    import atexit

    atexit.register(_at_exit)
    if not hasattr(os, "register_at_fork"):
        return
    if sys.version_info >= (3, 12):
        # 3.12+ warns about every fork of a multi-threaded process: the idle
        # control thread steps aside around the host's forks (control/server.py).
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
    else:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _before_fork() -> None:
    try:
        if _pid != os.getpid():
            return
        # Before the pause: a thread of ours that is not idle goes on meanwhile. Loaded
        # only when some thread holds an import lock (CPython's table is empty else).
        if getattr(sys.modules.get("_frozen_importlib"), "_module_locks", None):
            from . import _import_races

            _import_races.note_before_fork()
        server = _server
        if server is not None and sys.version_info >= (3, 12):
            server.pause_for_fork()
    except Exception:  # noqa: BLE001, S110 - a fork must never fail because of us
        pass


def _after_fork_in_parent() -> None:
    try:
        server = _server
        if server is not None and _pid == os.getpid():
            server.resume_after_fork(later=_restart_later(_caller()))
    except Exception as exc:  # noqa: BLE001 - a fork must never fail because of us
        from . import _log

        _log.warn(f"could not restart the control plane after fork: {exc}")


def _caller() -> Any:
    """The frame that called ``os.fork()`` (an after-fork hook is called from C)."""
    try:
        return sys._getframe(2)
    except ValueError:
        return None  # forked from C code with no Python frame on this thread


#: A pending call that keeps finding os.fork() unfinished gives up waiting after this many.
_MAX_EARLY = 10_000


def _restart_later(caller: Any) -> Any:
    """How to restart the control thread once CPython has counted threads, if need be.

    3.12 counts the threads of a forking process before the after-fork hooks
    run, so the thread can come back at once (None: no need to wait). 3.13+
    counts them after the hooks, so when the main thread forked, the thread is
    started by a pending call in the main thread once ``os.fork()`` has
    returned. A pending call runs at the next bytecode boundary, which may
    still be inside an after-fork hook (ours, or ``logging``'s): while the
    frame that called ``os.fork()`` has not moved past that call, the pending
    call schedules itself again. A fork from another thread is a fork of a
    multi-threaded process anyway: restarted at once.
    """
    if sys.version_info < (3, 13) or caller is None:
        return None
    main = getattr(_thread, "_get_main_thread_ident", None)
    if main is None or main() != _native.get_ident():
        return None
    from ._mainthread import call_soon_in_main

    fork_call = caller.f_lasti

    def schedule(restart: Any) -> bool:
        early = 0

        def when_fork_returned() -> None:
            nonlocal early
            if _inside_call(caller, fork_call) and early < _MAX_EARLY:
                early += 1
                if call_soon_in_main(when_fork_returned):
                    return
            restart()

        return call_soon_in_main(when_fork_returned)

    return schedule


def _inside_call(caller: Any, instruction: int) -> bool:
    """Is ``caller`` on this thread's stack, still at ``instruction`` (the fork call)?"""
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame is caller:
            return bool(frame.f_lasti == instruction)
        frame = frame.f_back
    return False


def _at_exit() -> None:
    try:
        if _pid != os.getpid():
            return  # a fork that never re-initialised: nothing here is ours
        client, server, record = _client, _server, _record_path
        if client is not None:
            client.shutdown(at_exit=True)
        elif server is not None:
            server.close()
        if record is not None:
            from .discovery import remove_record

            remove_record(record, os.getpid())
    except Exception:  # noqa: BLE001, S110 - exit must go on whatever happens
        pass


def _after_fork_in_child() -> None:
    try:
        _native.main_thread_ident = _thread.get_ident()  # the forking thread, alone here
        races = sys.modules.get("detrix_auto._import_races")
        if races is not None:  # loaded by the before-fork hook
            races.repair_after_fork()
        # Modules with process-wide locks or state that a thread of the parent
        # (a wake under way) may have held at the fork: only those already loaded.
        for name in ("detrix_auto._mainthread", "detrix_auto._handoff", "detrix_auto._pydevd"):
            module = sys.modules.get(name)
            if module is not None:
                module.forget_after_fork()
        _reset_if_forked()
    except Exception as exc:  # noqa: BLE001 - a fork must never fail because of us
        from . import _log

        _log.warn(f"could not restart in the forked child: {exc}")


def _reset_if_forked() -> None:
    """In a forked child: drop the parent's client, start a fresh sleeping one."""
    global _lock, _settings, _server, _client, _record_path
    if _settings is None or _pid == os.getpid():
        return
    # The parent's lock may have been held by a thread that does not exist here.
    _lock = _thread.RLock()
    settings, server = _settings, _server
    _settings = _server = _client = _record_path = None
    if server is not None:
        server.abandon_after_fork()
    only = os.environ.get("DETRIX_ONLY_PID")
    if only and only != str(os.getpid()):
        return  # DETRIX_CHILDREN=0: only the original process is observable
    start(settings.replace(start_state="sleeping"), explicit=_explicit)
