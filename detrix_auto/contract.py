"""Names from the daemon's API contract (CONTRACT.md section 2), in one place.

Shared by the client (which reads the daemon's answers) and the embedded
daemon (which gives them), so that both mean the same thing by the same
number. Imports nothing of ours.
"""

from __future__ import annotations

import enum
import hashlib

__all__ = ["ConnectionStatus", "connection_id", "holds_connection"]


class ConnectionStatus(enum.IntEnum):
    """The integer ``status`` of a connection row (``GET /api/v1/connections/{id}``)."""

    DISCONNECTED = 1
    CONNECTING = 2
    CONNECTED = 3
    FAILED = 4


#: Statuses (integer or, from some daemons, named) that mean "attached or attaching".
_HOLDING = (
    ConnectionStatus.CONNECTING,
    ConnectionStatus.CONNECTED,
    "connecting",
    "connected",
)


def holds_connection(status: object) -> bool:
    """Does a row with this status mean the daemon holds (or is making) our attach?

    ``None``, a read-back without any status, counts as held: the row exists.
    """
    if status is None:
        return True
    if isinstance(status, bool):
        return False
    return status in _HOLDING


def connection_id(name: str, workspace_root: str, hostname: str, language: str = "python") -> str:
    """The id the daemon derives for a registration: it is deterministic, so two live
    processes must never share a name (CONTRACT.md section 2)."""
    key = f"{name}|{language}|{workspace_root}|{hostname}".encode()
    return hashlib.sha256(key).digest()[:16].hex()
