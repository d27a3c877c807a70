"""The embedded daemon's shared, lock-guarded memory, and one connection's runtime state.

Why it exists: the daemon's parts (:mod:`.sessions` attaching, :mod:`.install`
sending logpoints, :mod:`.hits` recording them, :mod:`.catalog` storing metrics,
:mod:`.server` composing them) all read and write the same connections, metrics
and events under one lock. Holding that memory in one object each part is
given keeps a single lock (and its condition) for all of them, as before the
split, without any part reaching into another.

Concurrency: everything in :class:`DaemonState` is guarded by ``lock``, a
short-held ``RLock``; ``hits_changed`` is a condition on that same lock. DAP
exchanges for one connection are serialised by its :attr:`Connection.op_lock`
and never run under ``lock``.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .dap import DapClient
from .output import OutputParser
from .records import STATUS_CONNECTED, ConnectionRecord, HitCallback, OutputCallback
from .store import EventStore, Metric

_MAX_RECORDED = 1000  # per-connection diagnostics / output lines kept


@dataclass
class Connection:
    """A stored connection row plus its DAP session, if any (runtime only)."""

    record: ConnectionRecord
    op_lock: threading.Lock = field(default_factory=threading.Lock)
    client: DapClient | None = None
    generation: int = 0
    parser: OutputParser = field(default_factory=OutputParser)
    breakpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    diagnostics: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_RECORDED))
    output: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_RECORDED))

    def is_live(self) -> bool:
        client = self.client
        return client is not None and not client.closed and self.record.status == STATUS_CONNECTED

    def has_session(self) -> bool:
        """A DAP session exists or is being set up (a metric stored now must be sent)."""
        client = self.client
        return client is not None and not client.closed


class DaemonState:
    """Connections, metrics, events, listeners and counters, behind ``lock``.

    ``attach_timeout`` bounds one DAP attach (and one round of ``setBreakpoints``);
    ``reattach_grace`` is the pause between closing a DAP socket and connecting to
    the same port again (see :class:`~.server.DevDaemon`).
    """

    def __init__(
        self,
        *,
        max_events: int,
        max_event_bytes: int,
        attach_timeout: float,
        reattach_grace: float,
    ) -> None:
        self.lock = threading.RLock()
        self.hits_changed = threading.Condition(self.lock)
        self.attach_timeout = attach_timeout
        self.reattach_grace = reattach_grace
        self.events = EventStore(max_events, max_event_bytes)
        self.captured = 0
        self.unattributed_failures = 0
        self.metrics: dict[int, Metric] = {}
        self.next_metric_id = 1
        self.conns: dict[str, Connection] = {}
        self.callbacks: list[HitCallback] = []
        self.output_callbacks: list[OutputCallback] = []
        self.port_released: dict[int, float] = {}
        self.stopped = False
        self.registrations = 0
        self.unregistrations = 0
        self.attaches = 0

    def note(self, conn: Connection, text: str) -> None:
        """Keep a diagnostic line of ``conn`` (stderr, install failures, ...)."""
        with self.lock:
            conn.diagnostics.append(text)


def by_id(metric: Metric) -> int:
    """Sort key: metrics in the order they were stored."""
    return metric.metric_id
