"""Names from the daemon's API contract (CONTRACT.md section 2), in one place.

Shared by the client (which reads the daemon's answers) and the embedded
daemon (which gives them), so that both mean the same thing by the same
number. Imports nothing of ours.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

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
    digest: bytes = _sha256()(key).digest()
    return digest[:16].hex()


def _sha256() -> Callable[[bytes], Any]:
    """The interpreter's own SHA-256 where it has one: ``hashlib`` loads OpenSSL's
    libcrypto and ``_blake2`` first, 1.3 ms of every cold wake (the only caller)."""
    from importlib import import_module

    for name in ("_sha2", "_sha256"):  # 3.12+, then 3.10 and 3.11
        try:
            return import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib  # a build without them (OpenSSL only)

    return hashlib.sha256
