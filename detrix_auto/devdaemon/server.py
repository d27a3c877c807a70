"""The embedded loopback Detrix daemon: connections, metrics and events, over DAP.

Why it exists: ``detrix-auto observe`` and ``demo`` need a daemon without
installing the Rust one, scripts written for the real daemon's REST API should
run on a machine that has none, and the test suite needs a faithful double of
it. So this package reproduces, on purpose, what the real daemon does
(CONTRACT.md sections 2 and 3, DAEMON-API.md): the same id derivation, the
same DAP sequence before answering a registration, the same logpoint messages
(all of a file's logpoints in one ``setBreakpoints``), the same "just close
the socket" teardown, and stored metrics re-installed whenever a connection
registers again. Where the real daemon answers a client's mistake with 500,
this one answers the 4xx it is (docs/metrics-api.md lists each difference).

This module is the composition: :class:`DevDaemon`, the one object the CLI,
:mod:`.api` and the tests use, owns the parts and adds the lifecycle (start,
stop), the read-outs and the status. The parts, each importing only those
before it:

- :mod:`.records` the public data types (connection rows, hits, outcomes);
- :mod:`.state` the shared memory behind one lock, and a connection's runtime state;
- :mod:`.install` sending each file's logpoints and keeping debugpy's answers;
- :mod:`.hits` recording hits and failures as events, reading and waiting for them;
- :mod:`.catalog` the stored metrics and the operations on them;
- :mod:`.sessions` registering, attaching, detaching and the DAP reader callbacks.

Beside them, :mod:`.metrics` holds the rules, :mod:`.store` the memory's
types, :mod:`.api` the HTTP routes, :mod:`.access` who may call them and
:mod:`.httpserver` the sockets.

Concurrency: shared state sits behind one short-held lock (``state.lock``); DAP
exchanges for one connection are serialised by that connection's ``op_lock``
and never run under the state lock. Every DAP session has a reader thread,
which parses hits and failure reports into events.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from .access import Access
from .catalog import Catalog
from .hits import EVAL_ERROR, Hits
from .install import Installer
from .metrics import LOG_PREFIX, VALUE_SEPARATOR, Codes, MetricSpec, ServiceError, log_message_for
from .records import (
    STATUS_CONNECTED,
    STATUS_CONNECTING,
    STATUS_DISCONNECTED,
    STATUS_FAILED,
    ConnectionRecord,
    HitCallback,
    MetricHit,
    MetricOutcome,
    OutputCallback,
    connection_id_for,
)
from .sessions import ATTACH_ARGUMENTS, INITIALIZE_ARGUMENTS, Sessions
from .state import DaemonState

__all__ = [
    "ATTACH_ARGUMENTS",
    "EVAL_ERROR",
    "INITIALIZE_ARGUMENTS",
    "LOG_PREFIX",
    "STATUS_CONNECTED",
    "STATUS_CONNECTING",
    "STATUS_DISCONNECTED",
    "STATUS_FAILED",
    "VALUE_SEPARATOR",
    "ConnectionRecord",
    "DevDaemon",
    "HitCallback",
    "MetricHit",
    "MetricOutcome",
    "MetricSpec",
    "OutputCallback",
    "connection_id_for",
    "log_message_for",
]


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
        self.request_timeout = request_timeout
        self.max_body = max_body
        self.max_connections = max_connections
        self._state = state = DaemonState(
            max_events=max_hits or max_events,
            max_event_bytes=max_event_bytes,
            attach_timeout=attach_timeout,
            reattach_grace=reattach_grace,
        )
        self._lock = state.lock
        self._hits_changed = state.hits_changed
        self._installer = Installer(state)
        self._hits = Hits(state)
        #: The metric service and the connection service: the HTTP API calls them directly.
        self.catalog = Catalog(state, self._installer)
        self.sessions = Sessions(state, self._installer, self._hits)
        self._server: Any = None
        self._started_at = time.monotonic()
        self._started_wall = time.time()
        self._request_log: deque[tuple[str, str, int]] = deque(maxlen=10_000)

    # -- settings and counters kept in the shared state (read-only here) ------------------

    @property
    def attach_timeout(self) -> float:
        return self._state.attach_timeout

    @property
    def reattach_grace(self) -> float:
        return self._state.reattach_grace

    @property
    def registrations(self) -> int:
        return self._state.registrations

    @property
    def unregistrations(self) -> int:
        return self._state.unregistrations

    @property
    def attaches(self) -> int:
        return self._state.attaches

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> DevDaemon:
        """Bind and serve in a daemon thread; returns self so ``DevDaemon().start()`` chains."""
        if self._server is not None:
            return self
        if self._state.stopped:
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
        state = self._state
        with state.lock:
            if state.stopped:
                return
            state.stopped = True
            server, self._server = self._server, None
            conns = list(state.conns.values())
            state.hits_changed.notify_all()
        if server is not None:
            server.stop()
        for conn in conns:
            if conn.client is not None:
                self.sessions.drop_client(conn, "daemon stopped")

    def __enter__(self) -> DevDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the Python API's metrics (:mod:`.catalog`) --------------------------------------

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
        return self.catalog.add_metric(spec)

    def remove_metric(self, name: str) -> None:
        """Forget every metric named ``name`` and re-send their files' logpoints.

        Raises ``KeyError`` for an unknown name, so a typo is not silently ignored.
        """
        self.catalog.remove_metric(name)

    @property
    def metrics(self) -> dict[str, MetricSpec]:
        """A copy of the stored metrics by name (one of them where connections share a name)."""
        return self.catalog.specs()

    def status(self) -> dict[str, Any]:
        """``GET /api/v1/status``: what the real daemon reports that is true here too."""
        state = self._state
        uptime = int(time.monotonic() - self._started_at)
        with state.lock:
            live = [c for c in state.conns.values() if c.is_live()]
            enabled = sum(1 for m in state.metrics.values() if m.enabled)
            stats = {
                "totalMetrics": len(state.metrics),
                "activeMetrics": enabled,
                "totalEvents": state.captured,
                "eventsStored": len(state.events),
                "eventsDropped": state.events.dropped,
                "eventCapacity": {
                    "events": state.events.max_events,
                    "bytes": state.events.max_bytes,
                },
                "unattributedFailures": state.unattributed_failures,
                "activeConnections": len(live),
                "totalConnections": len(state.conns),
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

    # -- hits and read-outs (:mod:`.hits`) ------------------------------------------------

    def hits(self, metric: str | None = None) -> list[MetricHit]:
        """Recorded hits (not failures), oldest first, optionally of one metric name."""
        return self._hits.hits(metric)

    def clear_hits(self) -> None:
        """Forget recorded events (tests use it between phases)."""
        self._hits.clear()

    def wait_for_hits(self, metric: str, count: int = 1, timeout: float = 10.0) -> list[MetricHit]:
        """Block until ``metric`` has at least ``count`` hits; return them all.

        Raises ``TimeoutError`` naming what was seen, so a failing test or a CLI
        says *why* (no connection, unverified breakpoint, a diagnostic) instead of
        just "timed out".
        """
        return self._hits.wait_for_hits(metric, count, timeout)

    def on_hit(self, callback: HitCallback) -> None:
        """Call ``callback(hit)`` for every hit, from the DAP reader thread.

        Keep it quick: it delays the session's next message. Exceptions are logged.
        """
        with self._lock:
            self._state.callbacks.append(callback)

    def on_output(self, callback: OutputCallback) -> None:
        """Call ``callback(connection_id, category, text)`` for every DAP output event."""
        with self._lock:
            self._state.output_callbacks.append(callback)

    def breakpoint_results(self, connection_id: str) -> list[dict[str, Any]]:
        """debugpy's answer per installed logpoint, with ``metric``/``metricId``/``path``/
        ``requestedLine``.

        A ``line`` different from ``requestedLine`` means debugpy moved the logpoint
        to the preceding line holding code; ``verified: false`` with a ``message``
        means a missing file. Empty while not attached. ``KeyError`` for an unknown id.
        """
        with self._lock:
            conn = self._state.conns[connection_id]
            return [dict(item) for results in conn.breakpoints.values() for item in results]

    def diagnostics(self, connection_id: str) -> list[str]:
        """Output events of category stderr/console/important, plus install failures
        and failure reports no metric could be tied to. ``KeyError`` for an unknown id.
        """
        with self._lock:
            return list(self._state.conns[connection_id].diagnostics)

    def output(self, connection_id: str) -> list[str]:
        """``stdout`` lines that were not hits: the app's redirected prints and, as
        debugpy reports them, the text of a logpoint expression that raised (it
        replaces the whole message, prefix included: ``name 'x' is not defined``).
        """
        with self._lock:
            return list(self._state.conns[connection_id].output)

    # -- connections (:mod:`.sessions`) ---------------------------------------------------

    @property
    def connections(self) -> dict[str, ConnectionRecord]:
        """A snapshot copy of every stored connection row."""
        return self.sessions.records()

    def disconnect(self, connection_id: str) -> None:
        """What ``DELETE /api/v1/connections/{id}`` does: close the socket, keep the row.

        ``KeyError`` for an unknown id.
        """
        if not self.sessions.unregister(connection_id):
            raise KeyError(connection_id)

    def register(self, fields: dict[str, Any]) -> tuple[ConnectionRecord, bool]:
        """Register or reuse a connection; returns (record copy, attached_now).

        ``ServiceError`` 400 for values the daemon cannot use (the real daemon
        answers those with 500), 500 when the DAP attach fails.
        """
        return self.sessions.register(fields)

    def unregister(self, connection_id: str) -> None:
        if not self.sessions.unregister(connection_id):
            raise ServiceError(
                404, Codes.CONNECTION_NOT_FOUND, f"connection {connection_id!r} not found"
            )

    # -- HTTP-facing helpers -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            connected = any(c.is_live() for c in self._state.conns.values())
        return {
            "status": "ok",
            "service": "detrix",
            "uptimeSeconds": int(time.monotonic() - self._started_at),
            "adapterConnected": connected,
        }

    def log_request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._request_log.append((method, path, status))
