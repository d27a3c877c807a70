"""The stored metrics: the Python API's and the HTTP API's operations on them.

Why it exists: a metric's life (stored, renamed, toggled, replaced, deleted,
its events paged) follows the daemon's rules (:mod:`.metrics`) and, after each
change, has its file's logpoints re-sent (:mod:`.install`). These operations
are what both :meth:`~.server.DevDaemon.add_metric` and the ``/api/v1/metrics``
routes reach, and they touch no DAP session directly, so they live apart from
attaching (:mod:`.sessions`) and from recording hits (:mod:`.hits`).

Raises :class:`~.metrics.ServiceError` for what the HTTP API answers with 4xx/5xx.
"""

from __future__ import annotations

import os

from .dap import DapError
from .install import Installer
from .metrics import Codes, MetricSpec, ServiceError, check_expressions, check_name
from .records import MetricOutcome
from .state import DaemonState, by_id
from .store import Event, Metric


class Catalog:
    """Stores metrics and keeps the installed logpoints in step with them."""

    def __init__(self, state: DaemonState, installer: Installer) -> None:
        self._state = state
        self._installer = installer

    # -- the Python API's metrics --------------------------------------------------------

    def add_metric(self, spec: MetricSpec) -> int:
        """Store ``spec`` (the newest wins) and install it; see ``DevDaemon.add_metric``."""
        if not isinstance(spec, MetricSpec):
            raise TypeError("add_metric expects a MetricSpec")
        state = self._state
        with state.lock:
            replaced = [
                m
                for m in state.metrics.values()
                if m.name == spec.name
                or (
                    (m.file, m.line) == (spec.abspath, spec.line)
                    and _overlap(m.connection_id, spec.connection_id)
                )
            ]
            for old in replaced:
                self._forget(old)
            metric = self._new_metric(
                name=spec.name,
                connection_id=spec.connection_id,
                file=spec.abspath,
                line=spec.line,
                expressions=spec.expressions,
                enabled=True,
            )
        self._installer.sync_quietly([*replaced, metric])
        return metric.metric_id

    def remove_metric(self, name: str) -> None:
        """Forget every metric named ``name`` and re-send their files' logpoints."""
        with self._state.lock:
            gone = [m for m in self._state.metrics.values() if m.name == name]
            if not gone:
                raise KeyError(name)
            for metric in gone:
                self._forget(metric)
        self._installer.sync_quietly(gone)

    def specs(self) -> dict[str, MetricSpec]:
        """A copy of the stored metrics by name (one of them where connections share a name)."""
        with self._state.lock:
            return {m.name: m.spec() for m in sorted(self._state.metrics.values(), key=by_id)}

    def _new_metric(
        self,
        *,
        name: str,
        connection_id: str | None,
        file: str,
        line: int,
        expressions: tuple[str, ...],
        enabled: bool,
        group: str | None = None,
    ) -> Metric:
        state = self._state
        metric = Metric(
            metric_id=state.next_metric_id,
            name=name,
            connection_id=connection_id,
            file=file,
            line=line,
            expressions=expressions,
            enabled=enabled,
            group=group,
        )
        state.next_metric_id += 1
        state.metrics[metric.metric_id] = metric
        return metric

    def _forget(self, metric: Metric) -> None:
        """Drop a metric and its events (called with the state lock held)."""
        self._state.metrics.pop(metric.metric_id, None)
        self._state.events.forget_metric(metric.metric_id)

    # -- the service the HTTP API calls (raises ServiceError) -----------------------------

    def create_metric(
        self,
        *,
        name: str,
        connection_id: str,
        file: str,
        line: int,
        expressions: tuple[str, ...],
        enabled: bool,
        group: str | None = None,
        replace: bool = False,
    ) -> MetricOutcome:
        """``POST /api/v1/metrics``: store a metric of one connection and install it.

        One metric per connection and file:line: another one there is returned
        unchanged (``created=False``), or replaced with ``replace``. A name must be
        unique among a connection's metrics, since a hit names its metric.
        """
        state = self._state
        installer = self._installer
        check_name(name)
        expressions = check_expressions(list(expressions))
        warnings: list[str] = []
        with state.lock:
            conn = state.conns.get(connection_id)
            if conn is None:
                raise ServiceError(
                    404, Codes.CONNECTION_NOT_FOUND, f"connection {connection_id!r} not found"
                )
            path = file if os.path.isabs(file) else os.path.join(conn.record.workspace_root, file)
            path = os.path.normpath(path)
            here = [m for m in state.metrics.values() if m.applies_to(connection_id)]
            occupant = next((m for m in here if (m.file, m.line) == (path, line)), None)
            if occupant is not None and not replace:
                warnings.append(
                    f"metric {occupant.name!r} (id {occupant.metric_id}) already sits at "
                    f'{path}:{line}; returned unchanged (send "replace": true to replace it)'
                )
                return MetricOutcome(occupant, False, warnings, *installer.summary(occupant))
            if occupant is not None and occupant.connection_id is None:
                raise ServiceError(
                    409,
                    Codes.METRIC_LOCATION_CONFLICT,
                    f"metric {occupant.name!r} (id {occupant.metric_id}), set for every "
                    f"connection by the daemon's owner, sits at {path}:{line}",
                )
            namesake = next(
                (m for m in here if m.name == name and m is not occupant),
                None,
            )
            if namesake is not None:
                raise ServiceError(
                    409,
                    Codes.METRIC_DUPLICATE,
                    f"connection {connection_id} already has a metric named {name!r} "
                    f"(id {namesake.metric_id} at {namesake.file}:{namesake.line}); a hit "
                    "names its metric, so names must differ",
                )
            if occupant is not None:
                self._forget(occupant)
                warnings.append(
                    f"replaced metric {occupant.name!r} (id {occupant.metric_id}) at {path}:{line}"
                )
            metric = self._new_metric(
                name=name,
                connection_id=connection_id,
                file=path,
                line=line,
                expressions=expressions,
                enabled=enabled,
                group=group,
            )
            live = conn.has_session()
        if enabled and not live:
            warnings.append(
                f"connection {connection_id} is not connected: the logpoint is installed "
                "when it registers again"
            )
        elif live:
            try:
                installer.sync([conn], {path})
            except DapError as exc:
                with state.lock:
                    self._forget(metric)
                installer.sync_quietly([metric])
                raise ServiceError(
                    500, Codes.ADAPTER_ERROR, f"installing the logpoint failed: {exc}"
                ) from exc
        outcome = MetricOutcome(metric, True, warnings, *installer.summary(metric))
        outcome.warnings.extend(installer.warnings(metric))
        return outcome

    def get_metric(self, metric_id: int) -> Metric:
        with self._state.lock:
            metric = self._state.metrics.get(metric_id)
            if metric is None:
                raise ServiceError(404, Codes.METRIC_NOT_FOUND, f"metric {metric_id} not found")
            return metric

    def metric_by_name(self, name: str) -> list[Metric]:
        """Every metric of that name (one per connection at most), oldest first."""
        with self._state.lock:
            found = sorted((m for m in self._state.metrics.values() if m.name == name), key=by_id)
        if not found:
            raise ServiceError(404, Codes.METRIC_NOT_FOUND, f"metric {name!r} not found")
        return found

    def list_metrics(self, connection_id: str | None, enabled: bool | None) -> list[Metric]:
        """Stored metrics, newest first, optionally of one connection or enabled state."""
        with self._state.lock:
            found = [
                m
                for m in self._state.metrics.values()
                if (connection_id is None or m.connection_id == connection_id)
                and (enabled is None or m.enabled == enabled)
            ]
        return sorted(found, key=lambda m: (m.created_at, m.metric_id), reverse=True)

    def update_metric(
        self,
        metric_id: int,
        *,
        name: str | None = None,
        group: str | None = None,
        expressions: tuple[str, ...] | None = None,
        enabled: bool | None = None,
    ) -> Metric:
        """``PUT /api/v1/metrics/{id}``: change what was given, then re-send the logpoints."""
        if name is not None:
            check_name(name)
        if expressions is not None:
            expressions = check_expressions(list(expressions))
        with self._state.lock:
            metric = self.get_metric(metric_id)
            if name is not None and name != metric.name:
                clash = next(
                    (
                        m
                        for m in self._state.metrics.values()
                        if m.name == name
                        and m is not metric
                        and _overlap(m.connection_id, metric.connection_id)
                    ),
                    None,
                )
                if clash is not None:
                    raise ServiceError(
                        409,
                        Codes.METRIC_DUPLICATE,
                        f"metric {clash.metric_id} already has the name {name!r} on that "
                        "connection",
                    )
                metric.name = name
            if group is not None:
                metric.group = group
            if expressions is not None:
                metric.expressions = expressions
            if enabled is not None:
                metric.enabled = enabled
        self._installer.sync_or_fail(metric)
        return metric

    def delete_metric(self, metric_id: int) -> None:
        """``DELETE /api/v1/metrics/{id}``: forget it and its events, re-send its file."""
        with self._state.lock:
            metric = self.get_metric(metric_id)
            self._forget(metric)
        self._installer.sync_quietly([metric])

    def set_metric_enabled(self, metric_id: int, enabled: bool) -> MetricOutcome:
        """``POST /api/v1/metrics/{id}/enable|disable``.

        ``dap_confirmed``: enabling, debugpy verified the logpoint everywhere it was
        sent; disabling, it was installed somewhere and debugpy took it out.
        """
        installer = self._installer
        with self._state.lock:
            metric = self.get_metric(metric_id)
            changed = metric.enabled != enabled
            metric.enabled = enabled
            was_installed = bool(metric.installs)
        warnings: list[str] = []
        if changed:
            installer.sync_or_fail(metric)
            if enabled:
                warnings = installer.warnings(metric)
        if enabled:
            return MetricOutcome(metric, changed, warnings, *installer.summary(metric))
        with self._state.lock:
            removed = changed and was_installed and not metric.installs
        return MetricOutcome(metric, changed, warnings, removed, None, None)

    def metric_events(
        self,
        metrics: list[Metric] | None,
        *,
        limit: int,
        offset: int = 0,
        since: int | None = None,
        until: int | None = None,
        count: bool = False,
    ) -> tuple[list[Event], int]:
        """A page of events newest first (of some metrics, or all), and how many matched.

        One pass under the lock, copying only the page; with ``count=False`` it stops
        at the page's end and the number is only the page's end (a poller's query
        then costs what it returns, however many events are stored).
        """
        page: list[Event] = []
        matched = 0
        with self._state.lock:
            ids = None if metrics is None else [m.metric_id for m in metrics]
            for event in self._state.events.newest_first(ids, since=since, until=until):
                if matched >= offset + limit and not count:
                    break
                if matched >= offset and len(page) < limit:
                    page.append(event)
                matched += 1
        return page, matched


def _overlap(a: str | None, b: str | None) -> bool:
    """Whether two metric scopes share a connection (None: every connection)."""
    return a is None or b is None or a == b
