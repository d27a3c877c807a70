"""detrix-auto: make any Python process observable by the Detrix daemon, on demand.

Usually nothing imports this by hand: with ``DETRIX_ENABLE=1`` the start-up
hook starts it. The functions here are the same API as the original client
(``init``, ``status``, ``wake``, ``sleep``, ``shutdown``) for code that wants
to drive it explicitly.

This module is imported on the start-up path, so it defines thin wrappers and
loads the machinery behind them only when one is called; ``DaemonClient`` and
``HttpDaemonClient`` (the original client's daemon API, on the daemon client)
are loaded on first access.
"""

from __future__ import annotations

from .errors import (
    AlreadyInitializedError,
    ConfigError,
    ControlPlaneError,
    DaemonConnectionError,
    DaemonError,
    DebuggerError,
    DetrixError,
    NotInitializedError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .daemon_compat import DaemonClient, HttpDaemonClient

__version__ = "0.1.0"

__all__ = [
    "AlreadyInitializedError",
    "ConfigError",
    "ControlPlaneError",
    "DaemonClient",
    "DaemonConnectionError",
    "DaemonError",
    "DebuggerError",
    "DetrixError",
    "HttpDaemonClient",
    "NotInitializedError",
    "__version__",
    "init",
    "shutdown",
    "sleep",
    "status",
    "wake",
]


def init(**options: Any) -> None:
    """Start the control plane; the client stays asleep until woken.

    Options (each beats its ``DETRIX_*`` variable whenever passed; ``None``
    and ``""`` mean "not given"): ``name``, ``control_host``, ``control_port``,
    ``advertise_host`` (``DETRIX_HOST``), ``debug_host``, ``debug_port``,
    ``daemon_url``, ``daemon_user``, ``token``, ``detrix_home``, ``health_check_timeout``,
    ``register_timeout``, ``unregister_timeout``, ``verify_ssl``,
    ``ca_bundle``, ``safe_mode``, ``start_state`` (``sleeping``, ``warm`` or
    ``awake``), ``require_token``, ``liveness_interval``, ``wake_retry_max``,
    ``log_level``, ``discovery``, ``switch_interval`` (``DETRIX_SWITCH_INTERVAL``).

    Raises :class:`ConfigError` for a bad value (a malformed ``daemon_url``
    is kept: the ``wake()`` that would use it raises :class:`DaemonError`, as
    in the original client), :class:`AlreadyInitializedError` (a
    ``ConfigError``) when called twice without ``shutdown()``, and
    :class:`ControlPlaneError` when the control port cannot be bound. A
    client the start-up hook started is replaced by the first ``init()``.
    """
    from . import _log, _runtime
    from .config import resolve

    settings = resolve(options, defer_daemon_url=True)
    for note in settings.notes:
        _log.warn(note)
    _runtime.start(settings, eager=True, explicit=True)


def status() -> dict[str, Any]:
    """The current state (never blocks): the OpenAPI ``StatusResponse`` plus ``warm``.

    Before ``init()``: ``sleeping`` with ``control_port`` 0, as the original answered.
    """
    from . import _runtime

    try:
        return _runtime.get_client().status()
    except NotInitializedError:
        return _runtime.idle_status()


def wake(daemon_url: str | None = None) -> dict[str, Any]:
    """Start the debugger and register with the daemon; blocks until attached.

    Returns ``{"status": "awake"|"already_awake", "debug_port": N,
    "connection_id": "...", "daemon_url": ...}`` (``daemon_url``: the URL the
    daemon advertised, else None). Raises :class:`DaemonError` when the daemon
    is unreachable or refuses, when ``daemon_url`` is malformed, and before
    ``init()`` (:class:`NotInitializedError`); :class:`DebuggerError` when
    debugpy fails.
    """
    from ._runtime import get_client
    from .config import daemon_url_problem

    if daemon_url is not None and daemon_url != "":
        problem = daemon_url_problem(daemon_url)
        if problem is not None:
            raise DaemonError(problem)
        url: str | None = daemon_url.strip().rstrip("/")
    else:
        url = None
    return get_client().wake(url)


def sleep() -> dict[str, Any]:
    """Unregister from the daemon; returns ``{"status": "sleeping"|"already_sleeping"}``.

    Before ``init()``: ``already_sleeping``, as the original answered.
    """
    from ._runtime import get_client

    try:
        client = get_client()
    except NotInitializedError:
        return {"status": "already_sleeping"}
    return client.sleep()


def shutdown() -> None:
    """Stop the control plane (unregistering first if awake). ``init()`` may follow."""
    from . import _runtime

    _runtime.shutdown()


def __getattr__(name: str) -> Any:
    """``DaemonClient`` and ``HttpDaemonClient``, imported on first access (PEP 562).

    They load the daemon client, which must not be loaded at start-up.
    """
    if name in ("DaemonClient", "HttpDaemonClient"):
        from . import daemon_compat

        value = getattr(daemon_compat, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
