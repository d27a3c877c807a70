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
        from .control.server import ControlServer

        server = ControlServer(settings.control_host, settings.control_port, _make_router)
        _settings, _server, _pid, _explicit = settings, server, os.getpid(), explicit
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
            _thread.start_new_thread(client.warm, ())
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
    from .config import DEFAULT_DAEMON_URL, daemon_url_problem

    url = os.environ.get("DETRIX_DAEMON_URL", "").strip()
    return {
        "state": "sleeping",
        "name": "",
        "control_host": "",
        "control_port": 0,
        "debug_port": 0,
        "debug_port_active": False,
        "daemon_url": url if url and daemon_url_problem(url) is None else DEFAULT_DAEMON_URL,
        "connection_id": None,
        "warm": False,
        "last_error": None,
        "advertise_host": None,
    }


def get_client() -> Client:
    """The client, built on first use; :class:`NotInitializedError` before ``init()``."""
    global _client
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
        _settings = _server = _client = _record_path = None
    if client is not None:
        client.shutdown()
    elif server is not None:
        server.close()
    if record is not None:
        from .discovery import remove_record

        remove_record(record, os.getpid())


def _make_router() -> Any:
    from .control.routes import Router
    from .token import load_token

    client = get_client()
    settings = client.settings
    token_files = settings.token_files
    return Router(client, lambda: load_token(settings.token, token_files))


def _write_discovery() -> None:
    global _record_path
    try:
        _record_path = _discovery_record()
    except Exception as exc:  # noqa: BLE001 - discovery never fails the host
        from . import _log

        _log.warn(f"could not write the discovery record: {exc}")


def _discovery_record() -> str | None:
    settings, server = _settings, _server
    if settings is None or server is None:
        return None
    import time

    from . import __version__
    from .discovery import process_start_ticks, write_record

    record = {
        "pid": os.getpid(),
        "name": settings.connection_name(),
        "control_url": server.url,
        "control_host": server.host,
        "control_port": server.port,
        "started_at": time.time(),
        "proc_start": process_start_ticks(),
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": _cwd(),
        "detrix_auto_version": __version__,
        "token_required": settings.require_token,
    }
    return write_record(settings.detrix_home, record)


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
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


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
