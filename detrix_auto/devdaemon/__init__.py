"""Embedded loopback Detrix daemon: the daemon's HTTP API and its DAP client.

Used by the ``observe`` and ``demo`` commands and as the test double of the Rust
daemon. Standard library only, on purpose: it must run wherever the client runs
and must not share code paths (urllib3, debugpy) with the client it tests.
"""

from __future__ import annotations

from .dap import DapClient, DapError
from .server import (
    STATUS_CONNECTED,
    STATUS_CONNECTING,
    STATUS_DISCONNECTED,
    STATUS_FAILED,
    ConnectionRecord,
    DevDaemon,
    MetricHit,
    MetricSpec,
    connection_id_for,
    log_message_for,
)

__all__ = [
    "STATUS_CONNECTED",
    "STATUS_CONNECTING",
    "STATUS_DISCONNECTED",
    "STATUS_FAILED",
    "ConnectionRecord",
    "DapClient",
    "DapError",
    "DevDaemon",
    "MetricHit",
    "MetricSpec",
    "connection_id_for",
    "log_message_for",
]
