"""The embedded daemon's public data types: connection rows, hits, metric outcomes.

Why it exists: these are what the daemon hands out (to the HTTP API, the CLI and
the tests) and what every other part of :mod:`.server`'s machinery passes
around, so they sit below all of it and import none of it. They are re-exported
from :mod:`.server` and the package, where callers import them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..contract import ConnectionStatus, connection_id
from .store import Metric, now_micros

__all__ = [
    "STATUS_CONNECTED",
    "STATUS_CONNECTING",
    "STATUS_DISCONNECTED",
    "STATUS_FAILED",
    "ConnectionRecord",
    "HitCallback",
    "MetricHit",
    "MetricOutcome",
    "OutputCallback",
    "connection_id_for",
]

# The daemon's connection statuses, named once for the client and this daemon.
STATUS_DISCONNECTED = ConnectionStatus.DISCONNECTED
STATUS_CONNECTING = ConnectionStatus.CONNECTING
STATUS_CONNECTED = ConnectionStatus.CONNECTED
STATUS_FAILED = ConnectionStatus.FAILED


@dataclass(frozen=True)
class MetricHit:
    """One logpoint hit: ``values`` are the expression results, split on U+001F."""

    metric: str
    values: tuple[str, ...]
    connection_id: str
    timestamp: float
    raw: str


@dataclass
class ConnectionRecord:
    """A registered connection as the daemon stores it (the row survives unregister)."""

    connection_id: str
    host: str
    port: int
    language: str
    name: str
    workspace_root: str
    hostname: str
    pid: int | None = None
    safe_mode: bool = False
    status: int = STATUS_DISCONNECTED
    last_error: str | None = None
    created_at: int = field(default_factory=now_micros)
    connected_at: int | None = None
    last_active_at: int = field(default_factory=now_micros)

    def to_json(self) -> dict[str, Any]:
        """The real daemon's ``ConnectionInfo``, plus ``pid`` and ``lastError``."""
        return {
            "connectionId": self.connection_id,
            "host": self.host,
            "port": self.port,
            "language": self.language,
            "status": self.status,
            "createdAt": self.created_at,
            "connectedAt": self.connected_at,
            "lastActiveAt": self.last_active_at,
            "autoReconnect": False,
            "reconnectAttempts": 0,
            "maxReconnectAttempts": 0,
            "safeMode": self.safe_mode,
            "name": self.name,
            "workspaceRoot": self.workspace_root,
            "hostname": self.hostname,
            "pid": self.pid,
            "lastError": self.last_error,
        }


def connection_id_for(name: str, language: str, workspace_root: str, hostname: str) -> str:
    """The daemon's deterministic id (the client derives the same: ``contract``)."""
    return connection_id(name, workspace_root, hostname, language)


HitCallback = Callable[[MetricHit], None]
#: ``callback(connection_id, category, text)`` for every raw DAP ``output`` event.
OutputCallback = Callable[[str, str, str], None]


@dataclass
class MetricOutcome:
    """What adding or toggling a metric did: the metric, and debugpy's answer if asked."""

    metric: Metric
    created: bool
    warnings: list[str]
    #: debugpy verified the logpoint on every live connection it applies to.
    dap_confirmed: bool
    actual_line: int | None
    dap_message: str | None
