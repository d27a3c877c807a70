"""The embedded loopback Detrix daemon: the daemon's HTTP API plus its DAP work.

Why it exists: ``detrix-auto observe`` and ``demo`` need a daemon without
installing the Rust one, and the test suite needs a faithful double of it. So this
module reproduces, on purpose, what the real daemon does (CONTRACT.md sections 2
and 3): the same routes, status codes and id derivation, the same DAP sequence
before answering a registration, and the same "just close the socket" teardown.

Concurrency: every HTTP connection gets its own daemon thread with a socket timeout
(an idle client cannot block anyone); every DAP session has a reader thread. Shared
state sits behind one short-held lock (``_lock``); DAP exchanges for one connection
are serialised by that connection's ``op_lock`` and never run under ``_lock``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from .dap import DapClient, DapError, PendingRequest

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

STATUS_DISCONNECTED = 1
STATUS_CONNECTING = 2
STATUS_CONNECTED = 3
STATUS_FAILED = 4

#: Prefix of every logpoint message; how a hit is told apart from the app's output.
LOG_PREFIX = "DETRICS:"
#: Separates the values of a multi-expression metric inside one message.
VALUE_SEPARATOR = "\x1f"

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

_API = "/api/v1/connections"
_JSON_TYPE = "application/json"
_MAX_RECORDED = 1000  # per-connection diagnostics / output lines kept
_FORBIDDEN_IN_NAME = frozenset("={}\x1f\r\n")
_FORBIDDEN_IN_EXPR = frozenset("{}\x1f\r\n")


# -- public data types -------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A logpoint to install: ``expressions`` evaluated at ``path:line``.

    ``connection_id=None`` applies the metric to every connection, present and
    future. Validated on construction because a bad name or a brace inside an
    expression would otherwise produce a logpoint that silently never reports.
    """

    name: str
    path: str
    line: int
    expressions: tuple[str, ...]
    connection_id: str | None = None

    def __post_init__(self) -> None:
        expressions = self.expressions
        if isinstance(expressions, str):
            expressions = (expressions,)
        object.__setattr__(self, "expressions", tuple(expressions))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("metric name must be a non-empty string")
        if any(ch in _FORBIDDEN_IN_NAME for ch in self.name):
            raise ValueError(f"metric name {self.name!r} must not contain '=', braces or newlines")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("metric path must be a non-empty string")
        if isinstance(self.line, bool) or not isinstance(self.line, int) or self.line < 1:
            raise ValueError(f"metric line must be an integer >= 1, got {self.line!r}")
        if not self.expressions:
            raise ValueError("a metric needs at least one expression")
        for expr in self.expressions:
            if not isinstance(expr, str) or not expr.strip():
                raise ValueError("metric expressions must be non-empty strings")
            if any(ch in _FORBIDDEN_IN_EXPR for ch in expr):
                raise ValueError(
                    f"expression {expr!r} must not contain braces or newlines "
                    "(debugpy parses braces as logpoint delimiters)"
                )

    @property
    def abspath(self) -> str:
        """The absolute path sent to debugpy (relative paths resolve against our cwd)."""
        return os.path.abspath(self.path)


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

    def to_json(self) -> dict[str, Any]:
        """The camelCase shape used on the wire."""
        return {
            "connectionId": self.connection_id,
            "host": self.host,
            "port": self.port,
            "language": self.language,
            "name": self.name,
            "workspaceRoot": self.workspace_root,
            "hostname": self.hostname,
            "pid": self.pid,
            "safeMode": self.safe_mode,
            "status": self.status,
            "lastError": self.last_error,
        }


def connection_id_for(name: str, language: str, workspace_root: str, hostname: str) -> str:
    """The daemon's deterministic id: first 16 bytes of SHA-256 of ``name|language|root|host``."""
    digest = hashlib.sha256(f"{name}|{language}|{workspace_root}|{hostname}".encode()).digest()
    return digest[:16].hex()


def log_message_for(spec: MetricSpec) -> str:
    """The logpoint message the Rust daemon builds: ``DETRICS:m={a}\\x1f{b}``."""
    return f"{LOG_PREFIX}{spec.name}=" + VALUE_SEPARATOR.join(f"{{{e}}}" for e in spec.expressions)


# -- output parsing ----------------------------------------------------------------------


class _OutputParser:
    """Turns the ``stdout`` output events of one session into logpoint lines.

    debugpy sends one event per logpoint message (``DETRICS:m=v`` + os.linesep), but
    the app's own redirected stdout shares the category, a value may itself contain
    newlines, and nothing in DAP forbids splitting or batching. Rules, in order:
    an incomplete trailing line waits for the next event; an event that starts with
    the prefix discards a pending non-hit fragment (so ``print(end="")`` from the app
    cannot swallow a hit); inside one event, lines that do not start with the prefix
    continue the previous hit's value (a multi-line ``str``). Returns hit texts and
    the non-hit lines separately.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> tuple[list[str], list[str]]:
        if (
            text.startswith(LOG_PREFIX)
            and self._pending
            and not self._pending.startswith(LOG_PREFIX)
        ):
            self._pending = ""
        data = self._pending + text
        # split("\n"), not splitlines(): a value may hold \x0c, \x1c or U+2028, which
        # splitlines() would treat as line ends. debugpy ends lines with os.linesep.
        lines = data.split("\n")
        self._pending = lines.pop()  # "" when the text ended with a newline
        hits: list[str] = []
        other: list[str] = []
        current: list[str] | None = None
        for line in lines:
            stripped = line[:-1] if line.endswith("\r") else line
            if stripped.startswith(LOG_PREFIX):
                if current is not None:
                    hits.append("\n".join(current))
                current = [stripped]
            elif current is not None:
                current.append(stripped)
            else:
                other.append(stripped)
        if current is not None:
            hits.append("\n".join(current))
        return hits, other


def _parse_hit(raw: str, connection_id: str, timestamp: float) -> MetricHit | None:
    body = raw[len(LOG_PREFIX) :]
    metric, sep, value = body.partition("=")
    if not sep or not metric:
        return None
    return MetricHit(
        metric=metric,
        values=tuple(value.split(VALUE_SEPARATOR)),
        connection_id=connection_id,
        timestamp=timestamp,
        raw=raw,
    )


# -- per-connection runtime state --------------------------------------------------------


@dataclass
class _Connection:
    record: ConnectionRecord
    op_lock: threading.Lock = field(default_factory=threading.Lock)
    client: DapClient | None = None
    generation: int = 0
    parser: _OutputParser = field(default_factory=_OutputParser)
    breakpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    diagnostics: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_RECORDED))
    output: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_RECORDED))

    def is_live(self) -> bool:
        client = self.client
        return client is not None and not client.closed and self.record.status == STATUS_CONNECTED


class _RegistrationError(Exception):
    """A service-level registration failure: the daemon answers 500 with this message."""


HitCallback = Callable[[MetricHit], None]
#: ``callback(connection_id, category, text)`` for every raw DAP ``output`` event.
OutputCallback = Callable[[str, str, str], None]


# -- the daemon --------------------------------------------------------------------------


class DevDaemon:
    """An in-process Detrix daemon on loopback. See the module docstring for why.

    ``token`` turns on bearer auth for ``/api/*`` (health stays open, as in the real
    daemon). ``attach_timeout`` bounds one whole DAP attach. ``request_timeout`` is
    the per-connection socket timeout of the HTTP server, ``max_body`` the largest
    request body accepted, ``max_hits`` how many hits are kept in memory, and
    ``reattach_grace`` the pause kept between closing a DAP socket and connecting
    to the same port again: debugpy's default adapter refuses a client that arrives
    while it still finalises the previous session (~40 ms), and after that refusal
    it stops answering on the port. ``base_path`` serves the API under a prefix
    (``/detrix`` -> ``/detrix/health``), to test clients whose base URL has a path.

    Counters: ``registrations`` counts every 201 (including "already connected"),
    ``attaches`` the DAP attaches actually made, ``unregistrations`` every 204.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        attach_timeout: float = 10.0,
        request_timeout: float = 10.0,
        max_body: int = 64 * 1024,
        max_hits: int = 100_000,
        reattach_grace: float = 0.25,
        base_path: str = "",
    ) -> None:
        base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.base_path = base_path
        self._host = host
        self._port = port
        self._token = token
        self.attach_timeout = attach_timeout
        self.request_timeout = request_timeout
        self.max_body = max_body
        self.reattach_grace = reattach_grace
        self._lock = threading.RLock()
        self._hits_changed = threading.Condition(self._lock)
        self._hits: deque[MetricHit] = deque(maxlen=max_hits)
        self._metrics: dict[str, MetricSpec] = {}
        self._conns: dict[str, _Connection] = {}
        self._callbacks: list[HitCallback] = []
        self._output_callbacks: list[OutputCallback] = []
        self._port_released: dict[int, float] = {}
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._started_at = time.monotonic()
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
        server = _HttpServer((self._host, self._port), self)
        self._server = server
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="devdaemon-http",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The bound HTTP port (the requested one until :meth:`start`)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

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
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_open_sockets()
        for conn in conns:
            if conn.client is not None:
                self._drop_client(conn, "daemon stopped")
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> DevDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- metrics -------------------------------------------------------------------------

    def add_metric(self, spec: MetricSpec) -> None:
        """Store ``spec`` (replacing one of the same name) and install it where attached.

        All of a file's logpoints go in one ``setBreakpoints``, as debugpy replaces a
        file's whole set per request. Failures to install are recorded in
        :meth:`diagnostics`, not raised: the metric stays stored and is installed on
        the next attach.
        """
        if not isinstance(spec, MetricSpec):
            raise TypeError("add_metric expects a MetricSpec")
        with self._lock:
            old = self._metrics.get(spec.name)
            self._metrics[spec.name] = spec
        self._resync([spec] if old is None else [old, spec])

    def remove_metric(self, name: str) -> None:
        """Forget metric ``name`` and re-send its file's logpoints without it.

        Raises ``KeyError`` for an unknown name, so a typo is not silently ignored.
        """
        with self._lock:
            spec = self._metrics.pop(name)
        self._resync([spec])

    @property
    def metrics(self) -> dict[str, MetricSpec]:
        """A copy of the stored metrics."""
        with self._lock:
            return dict(self._metrics)

    def _resync(self, specs: Iterable[MetricSpec]) -> None:
        with self._lock:
            targets: list[tuple[_Connection, str]] = []
            for conn in self._conns.values():
                # Not is_live(): a connection still attaching has its client set
                # before it snapshots the metrics, so a metric stored after that
                # snapshot must be sent here, once the attach releases op_lock.
                if conn.client is None or conn.client.closed:
                    continue
                for spec in specs:
                    if _applies(spec, conn.record.connection_id):
                        item = (conn, spec.abspath)
                        if item not in targets:
                            targets.append(item)
        for conn, path in targets:
            with conn.op_lock:
                client = conn.client
                if client is None or client.closed:
                    continue
                try:
                    deadline = time.monotonic() + self.attach_timeout
                    self._set_breakpoints(conn, client, path, deadline)
                except DapError as exc:
                    self._note(conn, f"setBreakpoints for {path} failed: {exc}")

    def _file_metrics(self, connection_id: str) -> dict[str, list[MetricSpec]]:
        with self._lock:
            files: dict[str, list[MetricSpec]] = {}
            for spec in self._metrics.values():
                if _applies(spec, connection_id):
                    files.setdefault(spec.abspath, []).append(spec)
            return files

    def _set_breakpoints(
        self, conn: _Connection, client: DapClient, path: str, deadline: float
    ) -> None:
        specs = self._file_metrics(conn.record.connection_id).get(path, [])
        arguments = {
            "source": {"path": path, "name": os.path.basename(path)},
            "breakpoints": [{"line": s.line, "logMessage": log_message_for(s)} for s in specs],
            "sourceModified": False,
        }
        body = client.request(
            "setBreakpoints", arguments, timeout=max(0.1, deadline - time.monotonic())
        )
        answered = body.get("breakpoints")
        results: list[dict[str, Any]] = []
        for index, spec in enumerate(specs):
            item: dict[str, Any] = {}
            if isinstance(answered, list) and index < len(answered):
                raw = answered[index]
                if isinstance(raw, dict):
                    item.update(raw)
            item.setdefault("verified", False)
            item["metric"] = spec.name
            item["path"] = path
            item["requestedLine"] = spec.line
            results.append(item)
        with self._lock:
            if results:
                conn.breakpoints[path] = results
            else:
                conn.breakpoints.pop(path, None)

    # -- hits and read-outs --------------------------------------------------------------

    def hits(self, metric: str | None = None) -> list[MetricHit]:
        """Recorded hits, oldest first, optionally of one metric."""
        with self._lock:
            return [h for h in self._hits if metric is None or h.metric == metric]

    def clear_hits(self) -> None:
        """Forget recorded hits (tests use it between phases)."""
        with self._lock:
            self._hits.clear()

    def wait_for_hits(self, metric: str, count: int = 1, timeout: float = 10.0) -> list[MetricHit]:
        """Block until ``metric`` has at least ``count`` hits; return them all.

        Raises ``TimeoutError`` naming what was seen, so a failing test or a CLI
        says *why* (no connection, unverified breakpoint, a diagnostic) instead of
        just "timed out".
        """
        deadline = time.monotonic() + timeout
        with self._hits_changed:
            while True:
                found = [h for h in self._hits if h.metric == metric]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._hits_changed.wait(remaining)
            detail = self._explain(metric)
        raise TimeoutError(
            f"metric {metric!r}: {len(found)} of {count} hit(s) after {timeout:.1f}s; {detail}"
        )

    def _explain(self, metric: str) -> str:
        live = [c for c in self._conns.values() if c.is_live()]
        parts = [f"{len(live)} connected connection(s)"]
        if metric not in self._metrics:
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
        """Call ``callback(connection_id, category, text)`` for every DAP output event.

        Event boundaries matter to a caller telling debugpy's one-event report
        of a failed logpoint expression from the app's own prints, which
        arrive in pieces; hits are still parsed and delivered to ``on_hit``.
        """
        with self._lock:
            self._output_callbacks.append(callback)

    def breakpoint_results(self, connection_id: str) -> list[dict[str, Any]]:
        """debugpy's answer per installed logpoint, with ``metric``/``path``/``requestedLine``.

        A ``line`` different from ``requestedLine`` means debugpy moved the logpoint
        to the preceding line holding code; ``verified: false`` with a ``message``
        means a missing file. Empty while not attached. ``KeyError`` for an unknown id.
        """
        with self._lock:
            conn = self._conns[connection_id]
            return [dict(item) for results in conn.breakpoints.values() for item in results]

    def diagnostics(self, connection_id: str) -> list[str]:
        """Output events of category stderr/console/important, plus install failures.

        ``KeyError`` for an unknown id.
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

    # -- registration --------------------------------------------------------------------

    def _register(self, fields: dict[str, Any]) -> tuple[ConnectionRecord, bool]:
        """Register or reuse a connection; returns (record copy, attached_now)."""
        for key in ("host", "name", "workspaceRoot", "language"):
            if not fields[key].strip():
                raise _RegistrationError(f"{key} must not be empty")
        if fields["port"] < 1024:
            raise _RegistrationError(f"port {fields['port']} is below 1024")
        if fields["language"] != "python":
            raise _RegistrationError(
                f"language {fields['language']!r} is not supported by the embedded daemon"
            )
        cid = connection_id_for(
            fields["name"], fields["language"], fields["workspaceRoot"], fields["hostname"]
        )
        with self._lock:
            if self._stopped:
                raise _RegistrationError("daemon is stopping")
            conn = self._conns.get(cid)
            if conn is None:
                conn = _Connection(
                    ConnectionRecord(
                        connection_id=cid,
                        host=fields["host"],
                        port=fields["port"],
                        language=fields["language"],
                        name=fields["name"],
                        workspace_root=fields["workspaceRoot"],
                        hostname=fields["hostname"],
                    )
                )
                self._conns[cid] = conn
        with conn.op_lock:
            with self._lock:
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
                raise _RegistrationError(message) from exc
            with self._lock:
                conn.record.status = STATUS_CONNECTED
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
            conn.parser = _OutputParser()
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
        for path in self._file_metrics(conn.record.connection_id):
            self._set_breakpoints(conn, client, path, deadline)

    def _drop_client(
        self, conn: _Connection, reason: str, *, status: int = STATUS_DISCONNECTED
    ) -> None:
        with self._lock:
            client, conn.client = conn.client, None
            conn.generation += 1
            conn.record.status = status
            conn.breakpoints.clear()
            if client is not None:
                self._port_released[conn.record.port] = time.monotonic()
        if client is not None:
            client.close(reason)

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
            self._drop_client(conn, "unregistered")
        return True

    # -- DAP callbacks (reader threads) --------------------------------------------------

    def _on_close(self, conn: _Connection, generation: int, port: int, reason: str) -> None:
        with self._lock:
            self._port_released[port] = time.monotonic()
            if conn.generation != generation:
                return  # we closed it ourselves, or a newer session replaced it
            conn.client = None
            conn.breakpoints.clear()
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
            now = time.time()
            new_hits: list[MetricHit] = []
            with self._lock:
                if conn.generation != generation:
                    return
                raw_hits, other = conn.parser.feed(text)
                conn.output.extend(other)
                for raw in raw_hits:
                    hit = _parse_hit(raw, conn.record.connection_id, now)
                    if hit is None:
                        conn.output.append(raw)
                    else:
                        new_hits.append(hit)
                if new_hits:
                    self._hits.extend(new_hits)
                    self._hits_changed.notify_all()
                callbacks = list(self._callbacks)
            for hit in new_hits:
                for callback in callbacks:
                    try:
                        callback(hit)
                    except Exception:  # noqa: BLE001 - a CLI printer must not kill the session
                        _log.exception("on_hit callback failed")
        elif category in ("stderr", "console", "important"):
            self._note(conn, text.rstrip("\r\n"))

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

    def _note(self, conn: _Connection, text: str) -> None:
        with self._lock:
            conn.diagnostics.append(text)

    # -- HTTP-facing helpers -------------------------------------------------------------

    def _health(self) -> dict[str, Any]:
        with self._lock:
            connected = any(c.is_live() for c in self._conns.values())
        return {
            "status": "ok",
            "service": "detrix",
            "uptimeSeconds": int(time.monotonic() - self._started_at),
            "adapterConnected": connected,
        }

    def _connection_json(self, connection_id: str) -> dict[str, Any] | None:
        with self._lock:
            conn = self._conns.get(connection_id)
            return None if conn is None else conn.record.to_json()

    def _connections_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c.record.to_json() for c in self._conns.values()]

    def _log_request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._request_log.append((method, path, status))

    def _token_ok(self, header: str | None) -> bool:
        if self._token is None:
            return True
        expected = f"Bearer {self._token}".encode()
        given = (header or "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, expected)


def _applies(spec: MetricSpec, connection_id: str) -> bool:
    return spec.connection_id is None or spec.connection_id == connection_id


# -- HTTP layer --------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its daemon and the sockets it has open.

    The sockets are tracked so :meth:`DevDaemon.stop` can cut idle keep-alive
    clients at once instead of leaving their threads until the socket timeout.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], devdaemon: DevDaemon) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.devdaemon = devdaemon
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def close_open_sockets(self) -> None:
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log instead of printing a traceback to stderr (a timeout is not news)."""
        _log.debug("HTTP connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Routes the daemon API; every response, errors included, is JSON or empty."""

    server: _HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "detrix-devdaemon"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Per connection, so an idle or slow client only ever holds its own thread.
        self.connection.settimeout(self.server.devdaemon.request_timeout)
        self.server.track(self.connection)
        self._body_consumed = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    # -- responses -----------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of http.server's HTML page, for the protocol errors it raises itself."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # An unparseable request line leaves the HTTP/0.9 default, under which
            # http.server would send a bare body with no status line or headers.
            self.request_version = "HTTP/1.0"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._reply(code, {"error": message or phrase}, close=True)

    def _reply(self, status: int, payload: Any = None, *, close: bool = False) -> None:
        """Send one response; ``payload=None`` means an empty body (204, bare 401)."""
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self.server.devdaemon._log_request(
            getattr(self, "command", None) or "", getattr(self, "path", None) or "", status
        )
        if not getattr(self, "_body_consumed", False) and self._has_body():
            close = True  # unread bytes would be parsed as the next request
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", _JSON_TYPE)
        if status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        payload: dict[str, Any] = {"error": message}
        if code is not None:
            payload["errorCode"] = code
        self._reply(status, payload)

    def _has_body(self) -> bool:
        headers = getattr(self, "headers", None)
        if headers is None:
            return False
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            return True
        length = str(headers.get("Content-Length", "0")).strip()
        return length not in ("0", "")

    # -- dispatch ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._body_consumed = False  # per request: keep-alive reuses this handler
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - answer 500 JSON, never a traceback
            _log.exception("devdaemon: unhandled error for %s %s", self.command, self.path)
            try:
                self._error(500, "internal error", "INTERNAL")
            except OSError:
                self.close_connection = True

    def _route(self) -> None:
        daemon = self.server.devdaemon
        path = urlsplit(self.path).path
        method = "GET" if self.command == "HEAD" else self.command
        prefix = daemon.base_path
        if prefix:
            if not path.startswith(prefix + "/"):
                self._error(404, f"no route for {path}", "NOT_FOUND")
                return
            path = path[len(prefix) :]
        if path == "/health":
            if method != "GET":
                self._error(405, f"method {self.command} not allowed on {path}", "METHOD")
                return
            self._reply(200, daemon._health())
            return
        if path != _API and not path.startswith(_API + "/"):
            self._error(404, f"no route for {path}", "NOT_FOUND")
            return
        if not daemon._token_ok(self.headers.get("Authorization")):
            self._reply(401)
            return
        if path == _API:
            if method == "GET":
                self._reply(200, daemon._connections_json())
            elif method == "POST":
                self._post_connection()
            else:
                self._error(405, f"method {self.command} not allowed on {path}", "METHOD")
            return
        raw_id = path[len(_API) + 1 :]
        if not raw_id or "/" in raw_id:
            self._error(404, f"no route for {path}", "NOT_FOUND")
            return
        connection_id = unquote(raw_id)
        if method == "GET":
            found = daemon._connection_json(connection_id)
            if found is None:
                self._error(404, f"connection {connection_id!r} not found", "NOT_FOUND")
            else:
                self._reply(200, found)
        elif method == "DELETE":
            if daemon._unregister(connection_id):
                self._reply(204)
            else:
                self._error(404, f"connection {connection_id!r} not found", "NOT_FOUND")
        else:
            self._error(405, f"method {self.command} not allowed on {path}", "METHOD")

    # -- POST /api/v1/connections --------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or None after an error reply (size, framing, timeout)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(411, "chunked bodies are not supported; send Content-Length", "LENGTH")
            return None
        text = self.headers.get("Content-Length")
        if text is None:
            self._body_consumed = True
            return b""
        text = text.strip()
        if not text.isdigit():
            self._error(400, "invalid Content-Length", "BAD_REQUEST")
            return None
        length = int(text)
        limit = self.server.devdaemon.max_body
        if length > limit:
            self._error(413, f"body of {length} bytes exceeds the {limit}-byte limit", "TOO_LARGE")
            return None
        data = self.rfile.read(length)
        self._body_consumed = True
        if len(data) < length:
            self.close_connection = True
            return None
        return data

    def _post_connection(self) -> None:
        body = self._read_body()
        if body is None:
            return
        media = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        is_json = media == _JSON_TYPE or (
            media.startswith("application/") and media.endswith("+json")
        )
        if not is_json:
            self._error(
                415, "expected request with `Content-Type: application/json`", "UNSUPPORTED_MEDIA"
            )
            return
        try:
            document = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._error(400, f"malformed JSON body: {exc}", "BAD_JSON")
            return
        fields, problem = _validate_registration(document)
        if fields is None:
            self._error(422, problem, "INVALID_FIELDS")
            return
        try:
            record, _attached = self.server.devdaemon._register(fields)
        except _RegistrationError as exc:
            self._error(500, str(exc))
            return
        payload = {
            "connectionId": record.connection_id,
            "status": "created",
            "connection": record.to_json(),
        }
        self._reply(201, payload)


def _validate_registration(document: Any) -> tuple[dict[str, Any] | None, str]:
    """Type-check a register body the way serde would (422 on mismatch).

    Emptiness and the port floor are *service* checks answered with 500, as the
    real daemon does; they are not tested here.
    """
    if not isinstance(document, dict):
        return None, "request body must be a JSON object"
    fields: dict[str, Any] = {}
    for key in ("host", "language", "name", "workspaceRoot"):
        value = document.get(key)
        if not isinstance(value, str):
            return None, f"field {key!r} is required and must be a string"
        fields[key] = value
    hostname = document.get("hostname", "")
    if hostname is None:
        hostname = ""
    if not isinstance(hostname, str):
        return None, "field 'hostname' must be a string"
    fields["hostname"] = hostname
    port = document.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None, "field 'port' is required and must be an integer in 0..65535"
    fields["port"] = port
    pid = document.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        return None, "field 'pid' must be a non-negative integer"
    fields["pid"] = pid
    safe_mode = document.get("safeMode", False)
    if safe_mode is None:
        safe_mode = False
    if not isinstance(safe_mode, bool):
        return None, "field 'safeMode' must be a boolean"
    fields["safeMode"] = safe_mode
    return fields, ""
