"""The embedded loopback Detrix daemon: connections, metrics and events, over DAP.

Why it exists: ``detrix-auto observe`` and ``demo`` need a daemon without
installing the Rust one, scripts written for the real daemon's REST API should
run on a machine that has none, and the test suite needs a faithful double of
it. So this module reproduces, on purpose, what the real daemon does
(CONTRACT.md sections 2 and 3, DAEMON-API.md): the same id derivation, the
same DAP sequence before answering a registration, the same logpoint messages
(all of a file's logpoints in one ``setBreakpoints``), the same "just close
the socket" teardown, and stored metrics re-installed whenever a connection
registers again. Where the real daemon answers a client's mistake with 500,
this one answers the 4xx it is (docs/metrics-api.md lists each difference).

Layers: :mod:`.metrics` holds the rules, :mod:`.store` the memory, this module
the state machine and DAP work, :mod:`.api` the HTTP routes, :mod:`.access`
who may call them and :mod:`.httpserver` the sockets.

Concurrency: shared state sits behind one short-held lock (``_lock``); DAP
exchanges for one connection are serialised by that connection's ``op_lock``
and never run under ``_lock``. Every DAP session has a reader thread, which
parses hits and failure reports into events.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..contract import ConnectionStatus, connection_id
from .access import Access
from .dap import DapClient, DapError, PendingRequest
from .metrics import (
    LOG_PREFIX,
    VALUE_SEPARATOR,
    Codes,
    MetricSpec,
    ServiceError,
    check_expressions,
    check_name,
    error_names,
    error_type_for,
    log_message,
    log_message_for,
)
from .output import OutputParser, failure_text, parse_hit
from .store import Event, EventStore, Install, Metric, now_micros

__all__ = [
    "ATTACH_ARGUMENTS",
    "INITIALIZE_ARGUMENTS",
    "LOG_PREFIX",
    "STATUS_CONNECTED",
    "STATUS_CONNECTING",
    "STATUS_DISCONNECTED",
    "STATUS_FAILED",
    "VALUE_SEPARATOR",
    "ConnectionRecord",
    "DevDaemon",
    "MetricHit",
    "MetricSpec",
    "connection_id_for",
    "log_message_for",
]

_log = logging.getLogger(__name__)

# The daemon's connection statuses, named once for the client and this daemon.
STATUS_DISCONNECTED = ConnectionStatus.DISCONNECTED
STATUS_CONNECTING = ConnectionStatus.CONNECTING
STATUS_CONNECTED = ConnectionStatus.CONNECTED
STATUS_FAILED = ConnectionStatus.FAILED

#: Exactly the ``initialize`` arguments of the Rust daemon (CONTRACT.md 3.3).
INITIALIZE_ARGUMENTS: dict[str, Any] = {
    "clientID": "detrix",
    "clientName": "Detrix",
    "adapterID": "python",
    "linesStartAt1": True,
    "columnsStartAt1": True,
    "pathFormat": "path",
}
#: Exactly the ``attach`` arguments of the Rust daemon (CONTRACT.md 3.4).
ATTACH_ARGUMENTS: dict[str, Any] = {"justMyCode": False, "subProcess": True, "redirectOutput": True}

_MAX_RECORDED = 1000  # per-connection diagnostics / output lines kept
#: The error code of an event whose expression raised in the target (the real daemon's).
EVAL_ERROR = "EVAL_ERROR"


# -- public data types -------------------------------------------------------------------


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


# -- per-connection runtime state --------------------------------------------------------


@dataclass
class _Connection:
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


# -- the daemon --------------------------------------------------------------------------


class DevDaemon:
    """An in-process Detrix daemon on loopback. See the module docstring for why.

    Access (:mod:`.access`): ``/health`` is open; everything else is served to
    whoever presents ``token``, to a caller proven to run as our own user (Linux;
    on by default, so a token-less daemon is still private), and, for an app's
    own registration, to ``app_tokens`` and ``app_uids``. ``require_token``
    refuses the own-user exemption. Without any token, bearer headers are ignored.

    ``attach_timeout`` bounds one whole DAP attach. ``request_timeout`` is the
    per-connection socket timeout of the HTTP server, ``max_body`` the largest
    request body accepted, ``max_connections`` the HTTP connections served at
    once. ``max_events`` and ``max_event_bytes`` bound the event store (oldest
    dropped first and counted; ``max_hits`` is the old name of ``max_events``).
    ``reattach_grace`` is the pause kept between closing a DAP socket and
    connecting to the same port again: debugpy's default adapter refuses a client
    that arrives while it still finalises the previous session (~40 ms), and after
    that refusal it stops answering on the port. ``base_path`` serves the API under
    a prefix (``/detrix`` -> ``/detrix/health``), to test clients whose base URL
    has a path.

    Counters: ``registrations`` counts every 201 (including "already connected"),
    ``attaches`` the DAP attaches actually made, ``unregistrations`` every 204.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        app_tokens: Iterable[str] = (),
        app_uids: Iterable[int] = (),
        require_token: bool = False,
        attach_timeout: float = 10.0,
        request_timeout: float = 10.0,
        max_body: int = 64 * 1024,
        max_connections: int = 64,
        max_events: int = 100_000,
        max_event_bytes: int = 64 * 1024 * 1024,
        max_hits: int | None = None,
        reattach_grace: float = 0.25,
        base_path: str = "",
    ) -> None:
        base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.base_path = base_path
        self._host = host
        self._port = port
        self.access = Access(
            token=token or None,
            app_tokens=frozenset(t for t in app_tokens if t),
            app_uids=frozenset(app_uids),
            require_token=require_token,
        )
        self.attach_timeout = attach_timeout
        self.request_timeout = request_timeout
        self.max_body = max_body
        self.max_connections = max_connections
        self.reattach_grace = reattach_grace
        self._lock = threading.RLock()
        self._hits_changed = threading.Condition(self._lock)
        self._events = EventStore(max_hits or max_events, max_event_bytes)
        self._captured = 0
        self._unattributed_failures = 0
        self._metrics: dict[int, Metric] = {}
        self._next_metric_id = 1
        self._conns: dict[str, _Connection] = {}
        self._callbacks: list[HitCallback] = []
        self._output_callbacks: list[OutputCallback] = []
        self._port_released: dict[int, float] = {}
        self._server: Any = None
        self._started_at = time.monotonic()
        self._started_wall = time.time()
        self._stopped = False
        self.registrations = 0
        self.unregistrations = 0
        self.attaches = 0
        self._request_log: deque[tuple[str, str, int]] = deque(maxlen=10_000)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> DevDaemon:
        """Bind and serve in a daemon thread; returns self so ``DevDaemon().start()`` chains."""
        if self._server is not None:
            return self
        if self._stopped:
            raise RuntimeError("a stopped DevDaemon cannot be restarted; create a new one")
        from .api import Api
        from .httpserver import HttpServer

        api = Api(self)
        server = HttpServer(
            self._host,
            self._port,
            api.handle,
            api.error_reply,
            request_timeout=self.request_timeout,
            max_body=self.max_body,
            max_connections=self.max_connections,
        )
        self._server = server
        self._started_at = time.monotonic()
        self._started_wall = time.time()
        server.start()
        return self

    @property
    def port(self) -> int:
        """The bound HTTP port (the requested one until :meth:`start`)."""
        if self._server is None:
            return self._port
        return int(self._server.port)

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8090`` (plus ``base_path``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{self.base_path}"

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of the HTTP requests answered, oldest first."""
        with self._lock:
            return list(self._request_log)

    def stop(self) -> None:
        """Stop serving and close every DAP socket without ``disconnect``; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            server, self._server = self._server, None
            conns = list(self._conns.values())
            self._hits_changed.notify_all()
        if server is not None:
            server.stop()
        for conn in conns:
            if conn.client is not None:
                self._drop_client(conn, "daemon stopped")

    def __enter__(self) -> DevDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the Python API's metrics --------------------------------------------------------

    def add_metric(self, spec: MetricSpec) -> int:
        """Store ``spec`` and install it where attached; returns its metric id.

        The newest wins: a stored metric with the same name, or at the same
        file:line for a connection the spec also applies to, is replaced (the
        HTTP API is the careful one and refuses or returns those instead).
        All of a file's logpoints go in one ``setBreakpoints``, as debugpy replaces
        a file's whole set per request. Failures to install are recorded in
        :meth:`diagnostics`, not raised: the metric stays stored and is installed on
        the next attach.
        """
        if not isinstance(spec, MetricSpec):
            raise TypeError("add_metric expects a MetricSpec")
        with self._lock:
            replaced = [
                m
                for m in self._metrics.values()
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
        self._sync_quietly([*replaced, metric])
        return metric.metric_id

    def remove_metric(self, name: str) -> None:
        """Forget every metric named ``name`` and re-send their files' logpoints.

        Raises ``KeyError`` for an unknown name, so a typo is not silently ignored.
        """
        with self._lock:
            gone = [m for m in self._metrics.values() if m.name == name]
            if not gone:
                raise KeyError(name)
            for metric in gone:
                self._forget(metric)
        self._sync_quietly(gone)

    @property
    def metrics(self) -> dict[str, MetricSpec]:
        """A copy of the stored metrics by name (one of them where connections share a name)."""
        with self._lock:
            return {m.name: m.spec() for m in sorted(self._metrics.values(), key=_by_id)}

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
        metric = Metric(
            metric_id=self._next_metric_id,
            name=name,
            connection_id=connection_id,
            file=file,
            line=line,
            expressions=expressions,
            enabled=enabled,
            group=group,
        )
        self._next_metric_id += 1
        self._metrics[metric.metric_id] = metric
        return metric

    def _forget(self, metric: Metric) -> None:
        """Drop a metric and its events (called with ``_lock`` held)."""
        self._metrics.pop(metric.metric_id, None)
        self._events.forget_metric(metric.metric_id)

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
        check_name(name)
        expressions = check_expressions(list(expressions))
        warnings: list[str] = []
        with self._lock:
            conn = self._conns.get(connection_id)
            if conn is None:
                raise ServiceError(
                    404, Codes.CONNECTION_NOT_FOUND, f"connection {connection_id!r} not found"
                )
            path = file if os.path.isabs(file) else os.path.join(conn.record.workspace_root, file)
            path = os.path.normpath(path)
            here = [m for m in self._metrics.values() if m.applies_to(connection_id)]
            occupant = next((m for m in here if (m.file, m.line) == (path, line)), None)
            if occupant is not None and not replace:
                warnings.append(
                    f"metric {occupant.name!r} (id {occupant.metric_id}) already sits at "
                    f'{path}:{line}; returned unchanged (send "replace": true to replace it)'
                )
                return MetricOutcome(occupant, False, warnings, *self._install_summary(occupant))
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
                self._sync([conn], {path})
            except DapError as exc:
                with self._lock:
                    self._forget(metric)
                self._sync_quietly([metric])
                raise ServiceError(
                    500, Codes.ADAPTER_ERROR, f"installing the logpoint failed: {exc}"
                ) from exc
        outcome = MetricOutcome(metric, True, warnings, *self._install_summary(metric))
        outcome.warnings.extend(self._install_warnings(metric))
        return outcome

    def get_metric(self, metric_id: int) -> Metric:
        with self._lock:
            metric = self._metrics.get(metric_id)
            if metric is None:
                raise ServiceError(404, Codes.METRIC_NOT_FOUND, f"metric {metric_id} not found")
            return metric

    def metric_by_name(self, name: str) -> list[Metric]:
        """Every metric of that name (one per connection at most), oldest first."""
        with self._lock:
            found = sorted((m for m in self._metrics.values() if m.name == name), key=_by_id)
        if not found:
            raise ServiceError(404, Codes.METRIC_NOT_FOUND, f"metric {name!r} not found")
        return found

    def list_metrics(self, connection_id: str | None, enabled: bool | None) -> list[Metric]:
        """Stored metrics, newest first, optionally of one connection or enabled state."""
        with self._lock:
            found = [
                m
                for m in self._metrics.values()
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
        with self._lock:
            metric = self.get_metric(metric_id)
            if name is not None and name != metric.name:
                clash = next(
                    (
                        m
                        for m in self._metrics.values()
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
        self._sync_or_fail(metric)
        return metric

    def delete_metric(self, metric_id: int) -> None:
        """``DELETE /api/v1/metrics/{id}``: forget it and its events, re-send its file."""
        with self._lock:
            metric = self.get_metric(metric_id)
            self._forget(metric)
        self._sync_quietly([metric])

    def set_metric_enabled(self, metric_id: int, enabled: bool) -> MetricOutcome:
        """``POST /api/v1/metrics/{id}/enable|disable``.

        ``dap_confirmed``: enabling, debugpy verified the logpoint everywhere it was
        sent; disabling, it was installed somewhere and debugpy took it out.
        """
        with self._lock:
            metric = self.get_metric(metric_id)
            changed = metric.enabled != enabled
            metric.enabled = enabled
            was_installed = bool(metric.installs)
        warnings: list[str] = []
        if changed:
            self._sync_or_fail(metric)
            if enabled:
                warnings = self._install_warnings(metric)
        if enabled:
            return MetricOutcome(metric, changed, warnings, *self._install_summary(metric))
        with self._lock:
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
        with self._lock:
            ids = None if metrics is None else [m.metric_id for m in metrics]
            for event in self._events.newest_first(ids, since=since, until=until):
                if matched >= offset + limit and not count:
                    break
                if matched >= offset and len(page) < limit:
                    page.append(event)
                matched += 1
        return page, matched

    def status(self) -> dict[str, Any]:
        """``GET /api/v1/status``: what the real daemon reports that is true here too."""
        uptime = int(time.monotonic() - self._started_at)
        with self._lock:
            live = [c for c in self._conns.values() if c.is_live()]
            enabled = sum(1 for m in self._metrics.values() if m.enabled)
            stats = {
                "totalMetrics": len(self._metrics),
                "activeMetrics": enabled,
                "totalEvents": self._captured,
                "eventsStored": len(self._events),
                "eventsDropped": self._events.dropped,
                "eventCapacity": {
                    "events": self._events.max_events,
                    "bytes": self._events.max_bytes,
                },
                "unattributedFailures": self._unattributed_failures,
                "activeConnections": len(live),
                "totalConnections": len(self._conns),
            }
        hours, rest = divmod(uptime, 3600)
        return {
            "status": "active" if live else "idle",
            "uptimeSeconds": uptime,
            "uptimeFormatted": f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}",
            "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started_wall)),
            "adapterConnected": bool(live),
            **stats,
            "daemon": {"pid": os.getpid(), "ppid": os.getppid()},
        }

    def _install_summary(self, metric: Metric) -> tuple[bool, int | None, str | None]:
        """(dapConfirmed, actualLine, dapMessage) from the connections it is installed on."""
        with self._lock:
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

    def _install_warnings(self, metric: Metric) -> list[str]:
        with self._lock:
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

    # -- installing logpoints ------------------------------------------------------------

    def _targets(self, metrics: Iterable[Metric]) -> tuple[list[_Connection], set[str]]:
        with self._lock:
            conns: list[_Connection] = []
            paths: set[str] = set()
            for metric in metrics:
                paths.add(metric.file)
                for conn in self._conns.values():
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

    def _sync(self, conns: list[_Connection], paths: set[str]) -> None:
        """Re-send each file's logpoints on each connection; raises the first DapError."""
        failure: DapError | None = None
        for conn in conns:
            with conn.op_lock:
                client = conn.client
                if client is None or client.closed:
                    continue
                deadline = time.monotonic() + self.attach_timeout
                for path in sorted(paths):
                    try:
                        self._set_breakpoints(conn, client, path, deadline)
                    except DapError as exc:
                        self._note(conn, f"setBreakpoints for {path} failed: {exc}")
                        failure = failure or exc
        if failure is not None:
            raise failure

    def _sync_quietly(self, metrics: Iterable[Metric]) -> None:
        conns, paths = self._targets(metrics)
        try:
            self._sync(conns, paths)
        except DapError:
            pass  # noted in diagnostics; installed again on the next attach

    def _sync_or_fail(self, metric: Metric) -> None:
        conns, paths = self._targets([metric])
        try:
            self._sync(conns, paths)
        except DapError as exc:
            raise ServiceError(
                500, Codes.ADAPTER_ERROR, f"re-sending the logpoints failed: {exc}"
            ) from exc

    def _file_metrics(self, connection_id: str) -> dict[str, list[Metric]]:
        with self._lock:
            files: dict[str, list[Metric]] = {}
            for metric in sorted(self._metrics.values(), key=_by_id):
                if metric.enabled and metric.applies_to(connection_id):
                    files.setdefault(metric.file, []).append(metric)
            return files

    def _set_breakpoints(
        self, conn: _Connection, client: DapClient, path: str, deadline: float
    ) -> None:
        cid = conn.record.connection_id
        metrics = self._file_metrics(cid).get(path, [])
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
            with self._lock:
                for metric in self._metrics.values():
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
        with self._lock:
            sent = {m.metric_id for m in metrics}
            for metric in self._metrics.values():
                if metric.file == path and metric.metric_id not in sent:
                    metric.installs.pop(cid, None)
            for metric, item in zip(metrics, results, strict=True):
                metric.installs[cid] = _install_of(item)
            if results:
                conn.breakpoints[path] = results
            else:
                conn.breakpoints.pop(path, None)

    # -- hits and read-outs --------------------------------------------------------------

    def hits(self, metric: str | None = None) -> list[MetricHit]:
        """Recorded hits (not failures), oldest first, optionally of one metric name."""
        with self._lock:
            return [
                _hit_of(e)
                for e in self._events.oldest_first()
                if e.error is None and (metric is None or e.metric_name == metric)
            ]

    def clear_hits(self) -> None:
        """Forget recorded events (tests use it between phases)."""
        with self._lock:
            self._events.clear()

    def wait_for_hits(self, metric: str, count: int = 1, timeout: float = 10.0) -> list[MetricHit]:
        """Block until ``metric`` has at least ``count`` hits; return them all.

        Raises ``TimeoutError`` naming what was seen, so a failing test or a CLI
        says *why* (no connection, unverified breakpoint, a diagnostic) instead of
        just "timed out".
        """
        deadline = time.monotonic() + timeout
        with self._hits_changed:
            while True:
                found = self.hits(metric)
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped:
                    break
                self._hits_changed.wait(remaining)
            detail = self._explain(metric)
        raise TimeoutError(
            f"metric {metric!r}: {len(found)} of {count} hit(s) after {timeout:.1f}s; {detail}"
        )

    def _explain(self, metric: str) -> str:
        live = [c for c in self._conns.values() if c.is_live()]
        parts = [f"{len(live)} connected connection(s)"]
        if not any(m.name == metric for m in self._metrics.values()):
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

    def on_hit(self, callback: HitCallback) -> None:
        """Call ``callback(hit)`` for every hit, from the DAP reader thread.

        Keep it quick: it delays the session's next message. Exceptions are logged.
        """
        with self._lock:
            self._callbacks.append(callback)

    def on_output(self, callback: OutputCallback) -> None:
        """Call ``callback(connection_id, category, text)`` for every DAP output event."""
        with self._lock:
            self._output_callbacks.append(callback)

    def breakpoint_results(self, connection_id: str) -> list[dict[str, Any]]:
        """debugpy's answer per installed logpoint, with ``metric``/``metricId``/``path``/
        ``requestedLine``.

        A ``line`` different from ``requestedLine`` means debugpy moved the logpoint
        to the preceding line holding code; ``verified: false`` with a ``message``
        means a missing file. Empty while not attached. ``KeyError`` for an unknown id.
        """
        with self._lock:
            conn = self._conns[connection_id]
            return [dict(item) for results in conn.breakpoints.values() for item in results]

    def diagnostics(self, connection_id: str) -> list[str]:
        """Output events of category stderr/console/important, plus install failures
        and failure reports no metric could be tied to. ``KeyError`` for an unknown id.
        """
        with self._lock:
            return list(self._conns[connection_id].diagnostics)

    def output(self, connection_id: str) -> list[str]:
        """``stdout`` lines that were not hits: the app's redirected prints and, as
        debugpy reports them, the text of a logpoint expression that raised (it
        replaces the whole message, prefix included: ``name 'x' is not defined``).
        """
        with self._lock:
            return list(self._conns[connection_id].output)

    @property
    def connections(self) -> dict[str, ConnectionRecord]:
        """A snapshot copy of every stored connection row."""
        with self._lock:
            return {cid: dataclasses.replace(c.record) for cid, c in self._conns.items()}

    def disconnect(self, connection_id: str) -> None:
        """What ``DELETE /api/v1/connections/{id}`` does: close the socket, keep the row.

        ``KeyError`` for an unknown id.
        """
        if not self._unregister(connection_id):
            raise KeyError(connection_id)

    # -- connections -------------------------------------------------------------------

    def connection_json(self, connection_id: str) -> dict[str, Any]:
        with self._lock:
            conn = self._conns.get(connection_id)
            if conn is None:
                raise ServiceError(
                    404, Codes.CONNECTION_NOT_FOUND, f"connection {connection_id!r} not found"
                )
            return conn.record.to_json()

    def connections_json(self, active_only: bool = False) -> list[dict[str, Any]]:
        """Every row, most recently active first (as the real daemon orders them)."""
        with self._lock:
            rows = [
                c.record
                for c in self._conns.values()
                if not active_only or c.record.status in (STATUS_CONNECTED, STATUS_CONNECTING)
            ]
            rows.sort(key=lambda r: r.last_active_at, reverse=True)
            return [r.to_json() for r in rows]

    def cleanup_connections(self) -> int:
        """``POST /api/v1/connections/cleanup``: drop disconnected and failed rows."""
        with self._lock:
            gone = [
                cid
                for cid, c in self._conns.items()
                if c.record.status in (STATUS_DISCONNECTED, STATUS_FAILED) and c.client is None
            ]
            for cid in gone:
                del self._conns[cid]
            return len(gone)

    def register(self, fields: dict[str, Any]) -> tuple[ConnectionRecord, bool]:
        """Register or reuse a connection; returns (record copy, attached_now).

        ``ServiceError`` 400 for values the daemon cannot use (the real daemon
        answers those with 500), 500 when the DAP attach fails.
        """
        for key in ("host", "name", "workspaceRoot", "language"):
            if not fields[key].strip():
                raise ServiceError(400, Codes.INVALID_REQUEST, f"{key} must not be empty")
        if fields["port"] < 1024:
            raise ServiceError(400, Codes.INVALID_REQUEST, f"port {fields['port']} is below 1024")
        language = fields["language"].strip().lower()
        if language != "python":
            raise ServiceError(
                400,
                Codes.INVALID_REQUEST,
                f"language {fields['language']!r}: the embedded daemon attaches to Python "
                "(debugpy) only",
            )
        cid = connection_id_for(
            fields["name"], language, fields["workspaceRoot"], fields["hostname"]
        )
        with self._lock:
            if self._stopped:
                raise ServiceError(500, Codes.INTERNAL_ERROR, "daemon is stopping")
            conn = self._conns.get(cid)
            if conn is None:
                conn = _Connection(
                    ConnectionRecord(
                        connection_id=cid,
                        host=fields["host"],
                        port=fields["port"],
                        language=language,
                        name=fields["name"],
                        workspace_root=fields["workspaceRoot"],
                        hostname=fields["hostname"],
                    )
                )
                self._conns[cid] = conn
        with conn.op_lock:
            with self._lock:
                conn.record.last_active_at = now_micros()
                if conn.is_live():
                    self.registrations += 1
                    return dataclasses.replace(conn.record), False
                record = conn.record
                record.host = fields["host"]
                record.port = fields["port"]
                record.pid = fields["pid"]
                record.safe_mode = fields["safeMode"]
                record.status = STATUS_CONNECTING
                record.last_error = None
            try:
                self._attach(conn)
            except DapError as exc:
                message = f"DAP attach to 127.0.0.1:{fields['port']} failed: {exc}"
                self._drop_client(conn, message, status=STATUS_FAILED)
                with self._lock:
                    conn.record.last_error = message
                raise ServiceError(500, Codes.ADAPTER_ERROR, message) from exc
            with self._lock:
                conn.record.status = STATUS_CONNECTED
                conn.record.connected_at = now_micros()
                self.registrations += 1
                self.attaches += 1
                return dataclasses.replace(conn.record), True

    def _attach(self, conn: _Connection) -> None:
        """CONTRACT.md section 3, steps 1-6. Called with ``conn.op_lock`` held."""
        port = conn.record.port
        deadline = time.monotonic() + self.attach_timeout
        with self._lock:
            released = self._port_released.get(port)
            conn.generation += 1
            generation = conn.generation
            conn.parser = OutputParser()
        if released is not None:
            pause = released + self.reattach_grace - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))

        def on_event(message: dict[str, Any]) -> None:
            self._on_event(conn, generation, message)

        def on_close(reason: str) -> None:
            self._on_close(conn, generation, port, reason)

        client = DapClient.connect(
            "127.0.0.1",
            port,
            timeout=max(0.1, deadline - time.monotonic()),
            on_event=on_event,
            on_close=on_close,
            name=conn.record.connection_id[:8],
        )
        with self._lock:
            conn.client = client
            stopped = self._stopped
        if stopped:  # stop() ran while we connected: it could not see this socket
            raise DapError("daemon is stopping")

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DapError(f"attach did not complete within {self.attach_timeout:.1f}s")
            return left

        client.request("initialize", INITIALIZE_ARGUMENTS, timeout=remaining())
        attach: PendingRequest = client.send_request("attach", ATTACH_ARGUMENTS)
        try:
            client.request("configurationDone", timeout=remaining())
        except DapError as exc:
            # debugpy answers the refused attach first ("already being debugged");
            # that message explains the failure better than configurationDone's.
            if attach.done:
                try:
                    attach.wait(0)
                except DapError as attach_exc:
                    raise attach_exc from exc
            raise
        # Every stored, enabled metric of this connection, before the 201 (the real
        # daemon syncs stored metrics on register too): this is what brings them
        # back after a sleep and a new wake.
        for path in self._file_metrics(conn.record.connection_id):
            self._set_breakpoints(conn, client, path, deadline)

    def _drop_client(
        self, conn: _Connection, reason: str, *, status: int = STATUS_DISCONNECTED
    ) -> None:
        with self._lock:
            client, conn.client = conn.client, None
            conn.generation += 1
            conn.record.status = status
            self._clear_installs(conn)
            if client is not None:
                self._port_released[conn.record.port] = time.monotonic()
        if client is not None:
            client.close(reason)

    def _clear_installs(self, conn: _Connection) -> None:
        cid = conn.record.connection_id
        conn.breakpoints.clear()
        for metric in self._metrics.values():
            metric.installs.pop(cid, None)

    def _unregister(self, connection_id: str) -> bool:
        with self._lock:
            conn = self._conns.get(connection_id)
            if conn is None:
                return False
        # op_lock: an unregister that races a register of the same id waits for that
        # attach to finish, then closes it, instead of failing it half-way.
        with conn.op_lock:
            with self._lock:
                self.unregistrations += 1
                conn.record.last_active_at = now_micros()
            self._drop_client(conn, "unregistered")
        return True

    def unregister(self, connection_id: str) -> None:
        if not self._unregister(connection_id):
            raise ServiceError(
                404, Codes.CONNECTION_NOT_FOUND, f"connection {connection_id!r} not found"
            )

    # -- DAP callbacks (reader threads) --------------------------------------------------

    def _on_close(self, conn: _Connection, generation: int, port: int, reason: str) -> None:
        with self._lock:
            self._port_released[port] = time.monotonic()
            if conn.generation != generation:
                return  # we closed it ourselves, or a newer session replaced it
            conn.client = None
            self._clear_installs(conn)
            if conn.record.status == STATUS_CONNECTED:
                conn.record.status = STATUS_DISCONNECTED
                conn.record.last_error = f"DAP connection lost: {reason}"

    def _on_event(self, conn: _Connection, generation: int, message: dict[str, Any]) -> None:
        event = message.get("event")
        body = message.get("body")
        if not isinstance(body, dict):
            body = {}
        if event == "terminated":
            # debugpy's separate adapter does not close our socket when the debuggee
            # dies: it sends "terminated" and waits for us. End the session so the
            # row shows disconnected (and the orphaned adapter can exit).
            with self._lock:
                client = conn.client if conn.generation == generation else None
            if client is not None:
                client.close("debuggee terminated")
            return
        if event == "breakpoint":
            self._on_breakpoint_event(conn, body)
            return
        if event != "output":
            return
        category = body.get("category", "console")
        text = body.get("output")
        if not isinstance(text, str):
            return
        with self._lock:
            listeners = list(self._output_callbacks) if conn.generation == generation else []
        for listener in listeners:
            try:
                listener(conn.record.connection_id, str(category), text)
            except Exception:  # noqa: BLE001 - a listener must not kill the session
                _log.exception("on_output callback failed")
        if category == "stdout":
            self._on_stdout(conn, generation, text)
        elif category in ("stderr", "console", "important"):
            self._note(conn, text.rstrip("\r\n"))

    def _on_stdout(self, conn: _Connection, generation: int, text: str) -> None:
        new_hits: list[MetricHit] = []
        with self._lock:
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
                    new_hits.append(_hit_of(event))
            failure = failure_text(text)
            kind = error_type_for(failure) if failure is not None else None
            if failure is not None and kind is not None:
                self._record_failure(conn, failure, kind)
            if new_hits:
                self._hits_changed.notify_all()
            callbacks = list(self._callbacks)
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
        for metric in self._metrics.values():
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
        """Store one event (called with ``_lock`` held)."""
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
            timestamp=self._events.next_timestamp(),
            expressions=metric.expressions,
            texts=texts if error is None else (),
            error=error,
        )
        self._events.add(event)
        self._captured += 1
        metric.hit_count += 1
        metric.last_hit_at = event.timestamp
        return event

    def _record_failure(self, conn: _Connection, text: str, kind: str) -> None:
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
            self._unattributed_failures += 1
            conn.diagnostics.append(f"logpoint failure not tied to one metric: {text}")

    def _on_breakpoint_event(self, conn: _Connection, body: dict[str, Any]) -> None:
        """Keep :meth:`breakpoint_results` current when debugpy re-verifies later."""
        bp = body.get("breakpoint")
        if not isinstance(bp, dict) or "id" not in bp:
            return
        with self._lock:
            for results in conn.breakpoints.values():
                for item in results:
                    if item.get("id") == bp["id"]:
                        item.update({k: v for k, v in bp.items() if k != "source"})
                        metric = self._metrics.get(item.get("metricId", -1))
                        if metric is not None:
                            metric.installs[conn.record.connection_id] = _install_of(item)

    def _note(self, conn: _Connection, text: str) -> None:
        with self._lock:
            conn.diagnostics.append(text)

    # -- HTTP-facing helpers -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            connected = any(c.is_live() for c in self._conns.values())
        return {
            "status": "ok",
            "service": "detrix",
            "uptimeSeconds": int(time.monotonic() - self._started_at),
            "adapterConnected": connected,
        }

    def log_request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._request_log.append((method, path, status))


def _mentions(expression: str, names: set[str]) -> bool:
    """Whether an expression uses one of these identifiers (as a name or an attribute)."""
    return any(re.search(rf"\b{re.escape(name)}\b", expression) for name in names)


def _overlap(a: str | None, b: str | None) -> bool:
    """Whether two metric scopes share a connection (None: every connection)."""
    return a is None or b is None or a == b


def _by_id(metric: Metric) -> int:
    return metric.metric_id


def _install_of(item: dict[str, Any]) -> Install:
    line = item.get("line")
    message = item.get("message")
    return Install(
        verified=bool(item.get("verified")),
        line=line if isinstance(line, int) else None,
        message=message if isinstance(message, str) else None,
    )


def _hit_of(event: Event) -> MetricHit:
    return MetricHit(
        metric=event.metric_name,
        values=event.texts,
        connection_id=event.connection_id,
        timestamp=event.timestamp / 1_000_000,
        raw=f"{LOG_PREFIX}{event.metric_name}=" + VALUE_SEPARATOR.join(event.texts),
    )
