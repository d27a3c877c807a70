"""The status document, built in one place.

Three places answer ``status``: the client itself, the control plane of a
process never woken (``_runtime._ClientView``: building the client just to say
"asleep" would cost megabytes), and the public API before ``init()``. They
must say the same thing the same way, so each fills in what it knows and this
function orders it: the OpenAPI ``StatusResponse`` keys first, then ours.
Imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["daemon_at_rest", "status_document"]


def status_document(
    *,
    state: str = "sleeping",
    name: str,
    control_host: str,
    control_port: int,
    debug_port: int = 0,
    debug_port_active: bool = False,
    daemon_url: str,
    daemon_url_source: str,
    connection_id: str | None = None,
    warm: bool = False,
    last_error: str | None = None,
    advertise_host: str | None = None,
) -> dict[str, Any]:
    return {
        "state": state,
        "name": name,
        "control_host": control_host,
        "control_port": control_port,
        "debug_port": debug_port,
        "debug_port_active": debug_port_active,
        "daemon_url": daemon_url,
        "connection_id": connection_id,
        # detrix-auto's own keys:
        "daemon_url_source": daemon_url_source,
        "warm": warm,
        "last_error": last_error,
        "advertise_host": advertise_host,
    }


def daemon_at_rest(configured: str | None, default: str) -> tuple[str, str]:
    """The daemon a wake without an override goes to, and how it is found (before any wake)."""
    if configured:
        return configured, "configured"
    # Found at wake time: the running daemon's daemon.pid, else the default.
    return default, "discover"
