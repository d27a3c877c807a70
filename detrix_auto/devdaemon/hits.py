"""Hits: turning a session's stdout into events, and reading and waiting for them.

Why it exists: a logpoint reports by printing; telling its hits from the app's
own prints, tying debugpy's failure reports to the metric whose expression
raised, storing both as events and waking whoever waits for them is one job,
with its own rules (CONTRACT.md 3.7). The reading side (:meth:`Hits.hits`,
:meth:`Hits.wait_for_hits` and the explanation of a timeout) sits with it.

Concurrency: called from each session's DAP reader thread; events are stored
under the state lock and ``hits_changed`` is notified there; hit callbacks run
outside it.
"""

from __future__ import annotations

import logging
import re
import time

from .metrics import LOG_PREFIX, VALUE_SEPARATOR, error_names, error_type_for
from .output import failure_text, parse_hit
from .records import MetricHit
from .state import Connection, DaemonState
from .store import Event, Metric

# The logger the daemon has always reported callback failures under.
_log = logging.getLogger("detrix_auto.devdaemon.server")

#: The error code of an event whose expression raised in the target (the real daemon's).
EVAL_ERROR = "EVAL_ERROR"


class Hits:
    """Records hits and failures as events; answers and waits for them."""

    def __init__(self, state: DaemonState) -> None:
        self._state = state

    # -- recording (DAP reader threads) ---------------------------------------------------

    def on_stdout(self, conn: Connection, generation: int, text: str) -> None:
        state = self._state
        new_hits: list[MetricHit] = []
        with state.lock:
            if conn.generation != generation:
                return
            cid = conn.record.connection_id
            raw_hits, other = conn.parser.feed(text)
            conn.output.extend(other)
            for raw in raw_hits:
                parsed = parse_hit(raw)
                metric = None if parsed is None else self._active_named(cid, parsed[0])
                if parsed is None or metric is None:
                    conn.output.append(raw)  # e.g. a metric deleted while its hit was on the way
                    continue
                event = self._record(metric, cid, parsed[1], None)
                if event.error is None:
                    new_hits.append(hit_of(event))
            failure = failure_text(text)
            kind = error_type_for(failure) if failure is not None else None
            if failure is not None and kind is not None:
                self._record_failure(conn, failure, kind)
            if new_hits:
                state.hits_changed.notify_all()
            callbacks = list(state.callbacks)
        for hit in new_hits:
            for callback in callbacks:
                try:
                    callback(hit)
                except Exception:  # noqa: BLE001 - a CLI printer must not kill the session
                    _log.exception("on_hit callback failed")

    def _active(self, connection_id: str) -> list[Metric]:
        """Enabled metrics of a connection that may be reporting: installed, or being
        installed (a hit can arrive before the ``setBreakpoints`` answer is read), and
        not refused by debugpy."""
        found = []
        for metric in self._state.metrics.values():
            install = metric.installs.get(connection_id)
            refused = install is not None and not install.verified
            if metric.enabled and metric.applies_to(connection_id) and not refused:
                found.append(metric)
        return found

    def _active_named(self, connection_id: str, name: str) -> Metric | None:
        return next((m for m in self._active(connection_id) if m.name == name), None)

    def _record(
        self,
        metric: Metric,
        connection_id: str,
        texts: tuple[str, ...],
        error: tuple[str, str, str] | None,
    ) -> Event:
        """Store one event (called with the state lock held)."""
        state = self._state
        if error is None and len(texts) != len(metric.expressions):
            # A value held U+001F itself: which one cannot be told. Say so rather
            # than pair values with the wrong expressions.
            joined = VALUE_SEPARATOR.join(texts)
            error = (
                "VALUE_SEPARATOR",
                "ValueSplitError",
                f"{len(texts)} values for {len(metric.expressions)} expressions (a value "
                f"contained U+001F): {joined[:1000]!r}",
            )
        event = Event(
            metric_id=metric.metric_id,
            metric_name=metric.name,
            connection_id=connection_id,
            file=metric.file,
            line=metric.line,
            timestamp=state.events.next_timestamp(),
            expressions=metric.expressions,
            texts=texts if error is None else (),
            error=error,
        )
        state.events.add(event)
        state.captured += 1
        metric.hit_count += 1
        metric.last_hit_at = event.timestamp
        return event

    def _record_failure(self, conn: Connection, text: str, kind: str) -> None:
        """Tie a failure report to the metric whose expression raised, when that is known.

        debugpy's report names no logpoint. With one logpoint active on the
        connection it is that one; with several, the names in the message
        (``name 'x' is not defined``) pick the metric whose expressions use them.
        When that still leaves several (or none), the report is only noted in the
        diagnostics and counted: the real daemon picks an arbitrary metric.
        """
        cid = conn.record.connection_id
        candidates = self._active(cid)
        if not candidates:
            return  # no logpoint here: a line of the app's own
        names = error_names(text)
        if len(candidates) > 1 and names:
            candidates = [
                m for m in candidates if any(_mentions(expr, names) for expr in m.expressions)
            ]
        if len(candidates) == 1:
            self._record(candidates[0], cid, (), (EVAL_ERROR, kind, text))
        else:
            self._state.unattributed_failures += 1
            conn.diagnostics.append(f"logpoint failure not tied to one metric: {text}")

    # -- reading --------------------------------------------------------------------------

    def hits(self, metric: str | None = None) -> list[MetricHit]:
        """Recorded hits (not failures), oldest first, optionally of one metric name."""
        with self._state.lock:
            return [
                hit_of(e)
                for e in self._state.events.oldest_first()
                if e.error is None and (metric is None or e.metric_name == metric)
            ]

    def clear(self) -> None:
        """Forget recorded events."""
        with self._state.lock:
            self._state.events.clear()

    def wait_for_hits(self, metric: str, count: int = 1, timeout: float = 10.0) -> list[MetricHit]:
        """Block until ``metric`` has at least ``count`` hits; return them all.

        Raises ``TimeoutError`` naming what was seen (see :meth:`explain`).
        """
        state = self._state
        deadline = time.monotonic() + timeout
        with state.hits_changed:
            while True:
                found = self.hits(metric)
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or state.stopped:
                    break
                state.hits_changed.wait(remaining)
            detail = self.explain(metric)
        raise TimeoutError(
            f"metric {metric!r}: {len(found)} of {count} hit(s) after {timeout:.1f}s; {detail}"
        )

    def explain(self, metric: str) -> str:
        """Why ``metric`` has no (more) hits, as far as can be seen (state lock held)."""
        state = self._state
        live = [c for c in state.conns.values() if c.is_live()]
        parts = [f"{len(live)} connected connection(s)"]
        if not any(m.name == metric for m in state.metrics.values()):
            parts.append("no such metric is stored")
        for conn in live:
            for results in conn.breakpoints.values():
                for item in results:
                    if item.get("metric") == metric:
                        parts.append(
                            f"breakpoint verified={item.get('verified')} line={item.get('line')}"
                            + (f" message={item['message']!r}" if item.get("message") else "")
                        )
            if conn.diagnostics:
                parts.append(f"last diagnostic: {conn.diagnostics[-1]!r}")
            if conn.output:
                parts.append(f"last non-hit output: {conn.output[-1]!r}")
        return "; ".join(parts)


def _mentions(expression: str, names: set[str]) -> bool:
    """Whether an expression uses one of these identifiers (as a name or an attribute)."""
    return any(re.search(rf"\b{re.escape(name)}\b", expression) for name in names)


def hit_of(event: Event) -> MetricHit:
    """The :class:`MetricHit` a stored (successful) event stands for."""
    return MetricHit(
        metric=event.metric_name,
        values=event.texts,
        connection_id=event.connection_id,
        timestamp=event.timestamp / 1_000_000,
        raw=f"{LOG_PREFIX}{event.metric_name}=" + VALUE_SEPARATOR.join(event.texts),
    )
