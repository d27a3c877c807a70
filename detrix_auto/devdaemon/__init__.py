"""Embedded loopback Detrix daemon: the daemon's REST API and its DAP client.

Used by the ``observe`` and ``demo`` commands, by ``python -m
detrix_auto.devdaemon`` for scripts written for the real daemon, and as the test
double of the Rust daemon. Standard library only, on purpose: it must run
wherever the client runs and must not share code paths (urllib3, debugpy) with
the client it tests. Its HTTP parsing and access rules are the control plane's
(``detrix_auto.control.http`` and ``.auth``), which are standard library too.
"""

from __future__ import annotations

from .dap import DapClient, DapError
from .metrics import MetricRuleError, MetricSpec, ServiceError, log_message_for
from .server import (
    STATUS_CONNECTED,
    STATUS_CONNECTING,
    STATUS_DISCONNECTED,
    STATUS_FAILED,
    ConnectionRecord,
    DevDaemon,
    MetricHit,
    connection_id_for,
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
    "MetricRuleError",
    "MetricSpec",
    "ServiceError",
    "connection_id_for",
    "log_message_for",
]
