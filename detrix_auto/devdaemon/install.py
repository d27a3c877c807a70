"""Installing logpoints: each file's logpoints in one ``setBreakpoints``, and debugpy's answers.

Why it exists: debugpy replaces a file's whole set of breakpoints per request,
so any change to a metric means re-sending every logpoint of its file on every
connection it applies to (CONTRACT.md 3.6), and debugpy's answers (verified,
moved line, message) must be kept per metric and connection. That logic is
needed by attaching (:mod:`.sessions`), by the metric operations
(:mod:`.catalog`) and by the read-outs, so it lives here, on its own.

Concurrency: a connection's DAP requests run under its ``op_lock``, never under
the state lock; the answers are stored under the state lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from .dap import DapClient, DapError
from .metrics import Codes, ServiceError, log_message
from .state import Connection, DaemonState, by_id
from .store import Install, Metric


class Installer:
    """Sends a connection's logpoints and keeps what debugpy answered."""

    def __init__(self, state: DaemonState) -> None:
        self._state = state

    # -- which metrics, where -------------------------------------------------------------

    def targets(self, metrics: Iterable[Metric]) -> tuple[list[Connection], set[str]]:
        """The connections with a session that ``metrics`` apply to, and their files."""
        state = self._state
        with state.lock:
            conns: list[Connection] = []
            paths: set[str] = set()
            for metric in metrics:
                paths.add(metric.file)
                for conn in state.conns.values():
                    # has_session(), not is_live(): a connection still attaching has its
                    # client set before it reads the metrics, so a metric stored after
                    # that read must be sent here, once the attach releases op_lock.
                    if (
                        conn.has_session()
                        and metric.applies_to(conn.record.connection_id)
                        and conn not in conns
                    ):
                        conns.append(conn)
            return conns, paths

    def file_metrics(self, connection_id: str) -> dict[str, list[Metric]]:
        """A connection's enabled metrics by file, oldest first."""
        state = self._state
        with state.lock:
            files: dict[str, list[Metric]] = {}
            for metric in sorted(state.metrics.values(), key=by_id):
                if metric.enabled and metric.applies_to(connection_id):
                    files.setdefault(metric.file, []).append(metric)
            return files

    # -- sending ------------------------------------------------------------------------

    def sync(self, conns: list[Connection], paths: set[str]) -> None:
        """Re-send each file's logpoints on each connection; raises the first DapError."""
        failure: DapError | None = None
        for conn in conns:
            with conn.op_lock:
                client = conn.client
                if client is None or client.closed:
                    continue
                deadline = time.monotonic() + self._state.attach_timeout
                for path in sorted(paths):
                    try:
                        self.set_breakpoints(conn, client, path, deadline)
                    except DapError as exc:
                        self._state.note(conn, f"setBreakpoints for {path} failed: {exc}")
                        failure = failure or exc
        if failure is not None:
            raise failure

    def sync_quietly(self, metrics: Iterable[Metric]) -> None:
        conns, paths = self.targets(metrics)
        try:
            self.sync(conns, paths)
        except DapError:
            pass  # noted in diagnostics; installed again on the next attach

    def sync_or_fail(self, metric: Metric) -> None:
        conns, paths = self.targets([metric])
        try:
            self.sync(conns, paths)
        except DapError as exc:
            raise ServiceError(
                500, Codes.ADAPTER_ERROR, f"re-sending the logpoints failed: {exc}"
            ) from exc

    def set_breakpoints(
        self, conn: Connection, client: DapClient, path: str, deadline: float
    ) -> None:
        """One ``setBreakpoints`` for ``path``; called with ``conn.op_lock`` held."""
        state = self._state
        cid = conn.record.connection_id
        metrics = self.file_metrics(cid).get(path, [])
        arguments = {
            "source": {"path": path, "name": os.path.basename(path)},
            "breakpoints": [
                {"line": m.line, "logMessage": log_message(m.name, m.expressions)} for m in metrics
            ],
            "sourceModified": False,
        }
        try:
            body = client.request(
                "setBreakpoints", arguments, timeout=max(0.1, deadline - time.monotonic())
            )
        except DapError:
            with state.lock:
                for metric in state.metrics.values():
                    if metric.file == path:
                        metric.installs.pop(cid, None)
                conn.breakpoints.pop(path, None)
            raise
        answered = body.get("breakpoints")
        results: list[dict[str, Any]] = []
        for index, metric in enumerate(metrics):
            item: dict[str, Any] = {}
            if isinstance(answered, list) and index < len(answered):
                raw = answered[index]
                if isinstance(raw, dict):
                    item.update(raw)
            item.setdefault("verified", False)
            item["metric"] = metric.name
            item["metricId"] = metric.metric_id
            item["path"] = path
            item["requestedLine"] = metric.line
            results.append(item)
        with state.lock:
            sent = {m.metric_id for m in metrics}
            for metric in state.metrics.values():
                if metric.file == path and metric.metric_id not in sent:
                    metric.installs.pop(cid, None)
            for metric, item in zip(metrics, results, strict=True):
                metric.installs[cid] = _install_of(item)
            if results:
                conn.breakpoints[path] = results
            else:
                conn.breakpoints.pop(path, None)

    def clear(self, conn: Connection) -> None:
        """Forget what is installed on ``conn`` (called with the state lock held)."""
        cid = conn.record.connection_id
        conn.breakpoints.clear()
        for metric in self._state.metrics.values():
            metric.installs.pop(cid, None)

    def on_breakpoint_event(self, conn: Connection, body: dict[str, Any]) -> None:
        """Keep ``breakpoint_results`` current when debugpy re-verifies later."""
        bp = body.get("breakpoint")
        if not isinstance(bp, dict) or "id" not in bp:
            return
        state = self._state
        with state.lock:
            for results in conn.breakpoints.values():
                for item in results:
                    if item.get("id") == bp["id"]:
                        item.update({k: v for k, v in bp.items() if k != "source"})
                        metric = state.metrics.get(item.get("metricId", -1))
                        if metric is not None:
                            metric.installs[conn.record.connection_id] = _install_of(item)

    # -- what debugpy said ----------------------------------------------------------------

    def summary(self, metric: Metric) -> tuple[bool, int | None, str | None]:
        """(dapConfirmed, actualLine, dapMessage) from the connections it is installed on."""
        with self._state.lock:
            installs = list(metric.installs.values())
        if not installs:
            return False, None, None
        confirmed = all(i.verified for i in installs)
        lines = {i.line for i in installs if i.line is not None}
        messages = [i.message for i in installs if i.message]
        return (
            confirmed,
            (lines.pop() if len(lines) == 1 else None),
            (messages[0] if messages else None),
        )

    def warnings(self, metric: Metric) -> list[str]:
        with self._state.lock:
            installs = dict(metric.installs)
        warnings = []
        for cid, install in installs.items():
            where = f"{metric.file}:{metric.line}"
            if not install.verified:
                warnings.append(
                    f"Breakpoint not verified at {where} on connection {cid}"
                    + (f" - {install.message}" if install.message else "")
                )
            elif install.line is not None and install.line != metric.line:
                warnings.append(
                    f"debugpy put the logpoint for {where} on line {install.line} "
                    f"(line {metric.line} holds no code) on connection {cid}"
                )
        return warnings


def _install_of(item: dict[str, Any]) -> Install:
    line = item.get("line")
    message = item.get("message")
    return Install(
        verified=bool(item.get("verified")),
        line=line if isinstance(line, int) else None,
        message=message if isinstance(message, str) else None,
    )
