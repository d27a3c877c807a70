"""detrix-auto: make any Python process observable by the Detrix daemon, on demand.

Usually nothing imports this by hand: with ``DETRIX_ENABLE=1`` the start-up
hook starts it. The functions here are the same API as the original client
(``init``, ``status``, ``wake``, ``sleep``, ``shutdown``) for code that wants
to drive it explicitly.

This module is imported on the start-up path, so it defines thin wrappers and
loads the machinery behind them only when one is called.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    ControlPlaneError,
    DaemonConnectionError,
    DaemonError,
    DebuggerError,
    DetrixError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ControlPlaneError",
    "DaemonConnectionError",
    "DaemonError",
    "DebuggerError",
    "DetrixError",
    "__version__",
    "init",
    "shutdown",
    "sleep",
    "status",
    "wake",
]


def init(**options: Any) -> None:
    """Start the control plane; the client stays asleep until woken.

    Options (each beats its ``DETRIX_*`` variable whenever passed): ``name``,
    ``control_host``, ``control_port``, ``debug_host``, ``debug_port``,
    ``daemon_url``, ``daemon_user``, ``token``, ``detrix_home``, ``health_check_timeout``,
    ``register_timeout``, ``unregister_timeout``, ``verify_ssl``,
    ``ca_bundle``, ``safe_mode``, ``start_state`` (``sleeping``, ``warm`` or
    ``awake``), ``require_token``, ``liveness_interval``, ``log_level``.

    Raises :class:`ConfigError` for a bad value and :class:`ControlPlaneError`
    when the control port cannot be bound.
    """
    from . import _runtime
    from .config import resolve

    _runtime.start(resolve(options), eager=True)


def status() -> dict[str, Any]:
    """The current state (never blocks): the OpenAPI ``StatusResponse`` plus ``warm``."""
    from ._runtime import get_client

    return get_client().status()


def wake(daemon_url: str | None = None) -> dict[str, Any]:
    """Start the debugger and register with the daemon; blocks until attached.

    Returns ``{"status": "awake"|"already_awake", "debug_port": N,
    "connection_id": "..."}``. Raises :class:`DaemonError` when the daemon is
    unreachable or refuses, :class:`DebuggerError` when debugpy fails.
    """
    from ._runtime import get_client
    from .config import parse_url

    url = parse_url(daemon_url, "daemon_url") if daemon_url is not None else None
    return get_client().wake(url)


def sleep() -> dict[str, Any]:
    """Unregister from the daemon; returns ``{"status": "sleeping"|"already_sleeping"}``."""
    from ._runtime import get_client

    return get_client().sleep()


def shutdown() -> None:
    """Stop the control plane (unregistering first if awake). ``init()`` may follow."""
    from . import _runtime

    _runtime.shutdown()
