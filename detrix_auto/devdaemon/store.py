"""The embedded daemon's memory: stored metrics and a bounded store of captured events.

Nothing here locks or does I/O: the daemon holds its one lock around every call.
The event store is bounded twice, by count and by the bytes of value text, and
drops its oldest events first, counting them, so a chatty logpoint can neither
exhaust memory nor make older data vanish without a trace. Timestamps are
microseconds since the epoch and strictly increase within one store, so a
poller that asks for ``since = last + 1`` never sees an event twice and never
misses one that shares a microsecond with another.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .metrics import MetricSpec, typed_value

__all__ = ["Event", "EventStore", "Install", "Metric", "now_micros"]

#: Bytes counted for an event besides its value texts: the event object, its tuple
#: of texts and its two places in the store (names and paths are the metric's own
#: strings, shared). bench/devdaemon_events.py compares the count with the heap.
_EVENT_OVERHEAD = 200


def now_micros() -> int:
    return time.time_ns() // 1000


@dataclass
class Install:
    """debugpy's answer for one metric's logpoint on one connection."""

    verified: bool
    line: int | None
    message: str | None


@dataclass
class Metric:
    """A stored metric. ``connection_id=None``: every connection (Python API only)."""

    metric_id: int
    name: str
    connection_id: str | None
    file: str
    line: int
    expressions: tuple[str, ...]
    enabled: bool = True
    group: str | None = None
    language: str = "python"
    created_at: int = field(default_factory=now_micros)
    hit_count: int = 0
    last_hit_at: int | None = None
    #: debugpy's answer per connection where the logpoint is installed right now.
    installs: dict[str, Install] = field(default_factory=dict)

    def applies_to(self, connection_id: str) -> bool:
        return self.connection_id is None or self.connection_id == connection_id

    def spec(self) -> MetricSpec:
        return MetricSpec(self.name, self.file, self.line, self.expressions, self.connection_id)

    def to_json(self) -> dict[str, Any]:
        """``MetricInfo`` of the real daemon; ``hitCount``/``lastHitAt`` are real here."""
        return {
            "metricId": self.metric_id,
            "name": self.name,
            "group": self.group,
            "location": {"file": self.file, "line": self.line},
            "expressions": list(self.expressions),
            "language": self.language,
            "enabled": self.enabled,
            "mode": {"mode": {"stream": {}}},
            "createdAt": self.created_at,
            "hitCount": self.hit_count,
            "lastHitAt": self.last_hit_at,
            "connectionId": self.connection_id,
            "captureStackTrace": False,
            "captureMemorySnapshot": False,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One logpoint hit, or one failure report attributed to a metric.

    ``texts`` are the ``str()`` of each value as debugpy sent them; ``error`` is
    ``(errorCode, errorType, message)`` for a failure, and then ``texts`` is empty.
    """

    metric_id: int
    metric_name: str
    connection_id: str
    file: str
    line: int
    timestamp: int
    expressions: tuple[str, ...]
    texts: tuple[str, ...]
    error: tuple[str, str, str] | None = None

    @property
    def size(self) -> int:
        """Heap bytes this event holds, as counted against ``max_event_bytes``."""
        extra = sys.getsizeof(self.error[2]) if self.error else 0
        return _EVENT_OVERHEAD + sum(sys.getsizeof(t) for t in self.texts) + extra

    def to_json(self) -> dict[str, Any]:
        """``MetricEvent`` of the real daemon (``location`` filled in, which it leaves null)."""
        values = []
        for expression, text in zip(self.expressions, self.texts, strict=False):
            value_json, typed = typed_value(text)
            values.append({"expression": expression, "valueJson": value_json, "typedValue": typed})
        error = None
        if self.error is not None:
            code, kind, message = self.error
            error = {
                "error": True,
                "errorCode": code,
                "errorType": kind,
                "errorMessage": message,
                "traceback": None,
            }
        return {
            "metricId": self.metric_id,
            "metricName": self.metric_name,
            "location": {"file": self.file, "line": self.line},
            "timestamp": self.timestamp,
            "threadName": None,
            "threadId": None,
            "requestId": None,
            "sessionId": None,
            "values": values,
            "error": error,
            "connectionId": self.connection_id,
            "stackTrace": None,
            "memorySnapshot": None,
        }


class EventStore:
    """Events per metric, bounded by ``max_events`` and ``max_bytes`` in total."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("the event store needs room for at least one event")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._by_metric: dict[int, deque[Event]] = {}
        self._order: deque[Event] = deque()  # every stored event, oldest first
        self._bytes = 0
        self._last_timestamp = 0
        #: Events dropped to stay within bounds since the store was made.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._order)

    @property
    def bytes(self) -> int:
        return self._bytes

    def next_timestamp(self) -> int:
        """Now in microseconds, but always later than the last one handed out."""
        stamp = max(now_micros(), self._last_timestamp + 1)
        self._last_timestamp = stamp
        return stamp

    def add(self, event: Event) -> None:
        self._by_metric.setdefault(event.metric_id, deque()).append(event)
        self._order.append(event)
        self._bytes += event.size
        while len(self._order) > 1 and (
            len(self._order) > self.max_events or self._bytes > self.max_bytes
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        oldest = self._order.popleft()
        events = self._by_metric[oldest.metric_id]
        events.popleft()  # the same event: both deques are in arrival order
        if not events:
            del self._by_metric[oldest.metric_id]
        self._bytes -= oldest.size
        self.dropped += 1

    def forget_metric(self, metric_id: int) -> None:
        """Drop a deleted metric's events (the real daemon cascades the delete)."""
        events = self._by_metric.pop(metric_id, None)
        if not events:
            return
        self._bytes -= sum(e.size for e in events)
        self._order = deque(e for e in self._order if e.metric_id != metric_id)

    def clear(self) -> None:
        self._by_metric.clear()
        self._order.clear()
        self._bytes = 0

    def count(self, metric_id: int) -> int:
        return len(self._by_metric.get(metric_id, ()))

    def newest_first(
        self,
        metric_ids: Iterable[int] | None = None,
        *,
        since: int | None = None,
        until: int | None = None,
    ) -> Iterator[Event]:
        """Events newest first, of some metrics (None: all), within ``[since, until]``."""
        if metric_ids is None:
            ids = list(self._by_metric)
        else:
            ids = [m for m in metric_ids if m in self._by_metric]
        merged: Iterator[Event]
        if len(ids) == 1:
            merged = reversed(self._by_metric[ids[0]])
        elif metric_ids is None:
            merged = reversed(self._order)
        else:
            merged = _merge_newest_first([reversed(self._by_metric[m]) for m in ids])
        for event in merged:
            if until is not None and event.timestamp > until:
                continue
            if since is not None and event.timestamp < since:
                return
            yield event

    def oldest_first(self) -> list[Event]:
        """Every event, oldest first (the Python API's ``hits()``)."""
        return list(self._order)


def _merge_newest_first(streams: list[Iterator[Event]]) -> Iterator[Event]:
    return heapq.merge(*streams, key=lambda e: e.timestamp, reverse=True)
