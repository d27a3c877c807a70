"""The embedded daemon's HTTP routes: the real daemon's REST API, as far as it is served.

Each route checks its request the way the real daemon's extractors do (415 for
a body that is not JSON, 400 for malformed JSON or a bad query, 422 for a body
of the wrong shape), then calls :class:`~detrix_auto.devdaemon.server.DevDaemon`,
whose refusals (:class:`~detrix_auto.devdaemon.metrics.ServiceError`) become
JSON errors in the real daemon's shape ``{error, errorCode, errorType,
category, retryable}``. Service errors get the 4xx they are, where the real
daemon answers 500 (docs/metrics-api.md lists them). The schema of every
route is ``spec/devdaemon.openapi.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from ..control.http import Request, media_problem
from .httpserver import Reply
from .metrics import (
    Codes,
    ErrorCode,
    ServiceError,
    check_expressions,
    parse_location,
)
from .store import Event, Metric

if TYPE_CHECKING:
    from .server import DevDaemon

__all__ = ["NOT_SERVED", "Api"]

#: Default and largest ``limit`` of the list routes (the real daemon's defaults;
#: it does not cap the events' limit, we do).
DEFAULT_LIMIT = 100
MAX_METRICS_LIMIT = 1000
MAX_EVENTS_LIMIT = 10_000
#: The largest integer taken in a path or query (a signed 64-bit one, as in the real daemon).
MAX_INT = 2**63 - 1

#: Routes of the real daemon this one does not serve, and why (answered 404 with it).
NOT_SERVED: dict[str, str] = {
    "/metrics": "Prometheus metrics are not kept by the embedded daemon",
    "/ws": "the event WebSocket is not served; poll GET /api/v1/events",
    "/mcp": "MCP is served by the Rust daemon only",
    "/api/v1/wake": "the embedded daemon has no sleeping adapters to report on",
    "/api/v1/sleep": "the embedded daemon's adapters end with its connections",
    "/api/v1/groups": "metric groups are stored (the group field) but not served as routes",
    "/api/v1/config": "the embedded daemon has no configuration file",
    "/api/v1/validate_expression": "expression safety checks are not implemented here",
    "/api/v1/inspect_file": "file inspection is not implemented here",
    "/api/v1/mcp": "MCP is served by the Rust daemon only",
}

_CONNECTIONS = "/api/v1/connections"
_METRICS = "/api/v1/metrics"


class _Refused(Exception):
    """A request refused before it reached the service: status, message, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: ErrorCode = Codes.INVALID_REQUEST,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_payload(message: str, code: ErrorCode) -> dict[str, Any]:
    return {
        "error": message,
        "errorCode": code.number,
        "errorType": code.name,
        "category": code.category,
        "retryable": code.retryable,
    }


class Api:
    """Routes one parsed request to the daemon and shapes its answer."""

    def __init__(self, daemon: DevDaemon) -> None:
        self.daemon = daemon

    # -- entry points (called by the HTTP server) --------------------------------------

    def handle(self, request: Request, peer: Any, local: Any, cache: dict[str, Any]) -> Reply:
        try:
            reply = self._handle(request, peer, local, cache)
        except _Refused as exc:
            reply = Reply(exc.status, error_payload(exc.message, exc.code), exc.headers)
        except ServiceError as exc:
            reply = Reply(exc.status, error_payload(exc.message, exc.code))
        self.daemon.log_request(request.method, request.target, reply.status)
        return reply

    def error_reply(self, status: int, message: str) -> Reply:
        """A protocol error (unparseable request, timeout, too many connections)."""
        code = Codes.INTERNAL_ERROR if status >= 500 else Codes.INVALID_REQUEST
        self.daemon.log_request("", "", status)
        return Reply(status, error_payload(message, code), close=True)

    # -- routing -----------------------------------------------------------------------

    def _handle(self, request: Request, peer: Any, local: Any, cache: dict[str, Any]) -> Reply:
        path = request.path
        prefix = self.daemon.base_path
        if prefix:
            if not path.startswith(prefix + "/"):
                raise _Refused(404, f"no route for {path[:200]}")
            path = path[len(prefix) :]
        method = "GET" if request.method == "HEAD" else request.method
        if path == "/health":
            _allow(method, "GET")
            return Reply(200, self.daemon.health())
        refusal = self.daemon.access.refusal(
            request, peer, local, app_route=_is_app_route(method, path), cache=cache
        )
        if refusal is not None:
            raise _Refused(
                401,
                f"unauthorized: {refusal}; send Authorization: Bearer <the daemon's token>",
                Codes.UNAUTHORIZED,
                {"WWW-Authenticate": 'Bearer realm="detrix"'},
            )
        route = self._route(method, path)
        if method != "GET":  # every request that changes state, as on the control plane
            problem = media_problem(request)
            if problem is not None:
                raise _Refused(*problem)
        query = _query(request.target)
        return route(request, query)

    def _route(self, method: str, path: str) -> Callable[[Request, dict[str, str]], Reply]:
        parts = path.split("/")[1:]  # "/api/v1/metrics/3" -> ["api", "v1", "metrics", "3"]
        if path in ("/status", "/api/v1/status"):
            _allow(method, "GET")
            return lambda r, q: Reply(200, self.daemon.status())
        if parts[:3] == ["api", "v1", "connections"]:
            return self._connection_route(method, parts[3:])
        if parts[:3] == ["api", "v1", "metrics"]:
            return self._metric_route(method, parts[3:])
        if path == "/api/v1/events":
            _allow(method, "GET")
            return self._events
        for prefix, why in NOT_SERVED.items():
            if path == prefix or path.startswith(prefix + "/"):
                raise _Refused(404, f"{path[:200]} is not served by the embedded daemon: {why}")
        raise _Refused(404, f"no route for {path[:200]}")

    def _connection_route(
        self, method: str, rest: list[str]
    ) -> Callable[[Request, dict[str, str]], Reply]:
        if not rest:
            _allow(method, "GET", "POST")
            return self._list_connections if method == "GET" else self._register
        if len(rest) != 1 or not rest[0]:
            raise _Refused(404, f"no route for {_CONNECTIONS}/{'/'.join(rest)[:200]}")
        if rest[0] == "cleanup":
            _allow(method, "POST")
            return lambda r, q: Reply(200, {"deleted": self.daemon.sessions.cleanup_connections()})
        connection_id = unquote(rest[0])
        _allow(method, "GET", "DELETE")
        if method == "GET":
            return lambda r, q: Reply(200, self.daemon.sessions.connection_json(connection_id))
        return lambda r, q: self._unregister(connection_id)

    def _metric_route(
        self, method: str, rest: list[str]
    ) -> Callable[[Request, dict[str, str]], Reply]:
        if not rest:
            _allow(method, "GET", "POST")
            return self._list_metrics if method == "GET" else self._create_metric
        if len(rest) > 2 or not rest[0]:
            raise _Refused(404, f"no route for {_METRICS}/{'/'.join(rest)[:200]}")
        action = rest[1] if len(rest) == 2 else ""
        if action not in ("", "enable", "disable", "value", "history"):
            raise _Refused(404, f"no route for {_METRICS}/{'/'.join(rest)[:200]}")
        if action in ("enable", "disable"):
            _allow(method, "POST")
        elif action:
            _allow(method, "GET")
        else:
            _allow(method, "GET", "PUT", "DELETE")
        metric_id = _metric_id(rest[0])
        if action in ("enable", "disable"):
            return lambda r, q: self._toggle(metric_id, action == "enable")
        if action == "value":
            return lambda r, q: self._value(metric_id)
        if action == "history":
            return lambda r, q: self._history(metric_id, q)
        if method == "GET":
            return lambda r, q: Reply(200, self.daemon.catalog.get_metric(metric_id).to_json())
        if method == "PUT":
            return lambda r, q: self._update_metric(metric_id, r)
        return lambda r, q: self._delete_metric(metric_id)

    # -- connections ---------------------------------------------------------------------

    def _list_connections(self, request: Request, query: dict[str, str]) -> Reply:
        active_only = _bool_param(query, "activeOnly") or False
        return Reply(200, self.daemon.sessions.connections_json(active_only))

    def _register(self, request: Request, query: dict[str, str]) -> Reply:
        fields = _registration(_json_object(request))
        record, _attached = self.daemon.register(fields)
        return Reply(
            201,
            {
                "connectionId": record.connection_id,
                "status": "created",
                "connection": record.to_json(),
                "metadata": None,
            },
        )

    def _unregister(self, connection_id: str) -> Reply:
        self.daemon.unregister(connection_id)
        return Reply(204)

    # -- metrics -----------------------------------------------------------------------

    def _list_metrics(self, request: Request, query: dict[str, str]) -> Reply:
        limit = _int_param(query, "limit", DEFAULT_LIMIT, minimum=0)
        limit = min(limit, MAX_METRICS_LIMIT)
        offset = _int_param(query, "offset", 0, minimum=0)
        found = self.daemon.catalog.list_metrics(
            query.get("connectionId"), _bool_param(query, "enabled")
        )
        page = found[offset : offset + limit]
        return Reply(
            200,
            {
                "metrics": [m.to_json() for m in page],
                "total": len(found),
                "limit": limit,
                "offset": offset,
            },
        )

    def _create_metric(self, request: Request, query: dict[str, str]) -> Reply:
        body = _json_object(request)
        name = _required(body, "name", str)
        connection_id = _required(body, "connectionId", str)
        if "location" not in body or body["location"] is None:
            raise _Refused(422, "field 'location' is required", Codes.METRIC_INVALID_LOCATION)
        if not isinstance(body["location"], (dict, str)):
            raise _Refused(
                422,
                'field \'location\' must be {"file", "line"} or "FILE#LINE"',
                Codes.METRIC_INVALID_LOCATION,
            )
        file, line = parse_location(body["location"])
        expressions = _string_list(body, "expressions", required=True)
        enabled = _required(body, "enabled", bool)
        group = _optional(body, "group", str)
        _optional(body, "language", str)  # ignored, as by the real daemon: the connection's
        replace = _optional(body, "replace", bool) or False
        _check_unsupported(body)
        outcome = self.daemon.catalog.create_metric(
            name=name,
            connection_id=connection_id,
            file=file,
            line=line,
            expressions=check_expressions(expressions),
            enabled=enabled,
            group=group,
            replace=replace,
        )
        payload: dict[str, Any] = {
            "metricId": outcome.metric.metric_id,
            "name": outcome.metric.name,
            "status": "created" if outcome.created else "existing",
            "metric": outcome.metric.to_json(),
            "dapConfirmed": outcome.dap_confirmed,
            "actualLine": outcome.actual_line,
            "dapMessage": outcome.dap_message,
        }
        if outcome.warnings:
            payload["warnings"] = outcome.warnings
        return Reply(201 if outcome.created else 200, payload)

    def _update_metric(self, metric_id: int, request: Request) -> Reply:
        body = _json_object(request)
        _check_unsupported(body)
        expressions = _string_list(body, "expressions", required=False)
        metric = self.daemon.catalog.update_metric(
            metric_id,
            name=_optional(body, "name", str),
            group=_optional(body, "group", str),
            expressions=None if expressions is None else tuple(expressions),
            enabled=_optional(body, "enabled", bool),
        )
        return Reply(200, metric.to_json())

    def _delete_metric(self, metric_id: int) -> Reply:
        self.daemon.catalog.delete_metric(metric_id)
        return Reply(204)

    def _toggle(self, metric_id: int, enabled: bool) -> Reply:
        outcome = self.daemon.catalog.set_metric_enabled(metric_id, enabled)
        payload: dict[str, Any] = {
            "metricId": outcome.metric.metric_id,
            "name": outcome.metric.name,
            "enabled": enabled,
            "storageUpdated": outcome.created,
            "dapConfirmed": outcome.dap_confirmed,
            "actualLine": outcome.actual_line,
            "dapMessage": outcome.dap_message,
            "metadata": None,
            "status": "enabled" if enabled else "disabled",
        }
        if outcome.warnings:
            payload["warnings"] = outcome.warnings
        return Reply(200, payload)

    def _value(self, metric_id: int) -> Reply:
        metric = self.daemon.catalog.get_metric(metric_id)
        events, _total = self.daemon.catalog.metric_events(
            [metric], limit=1, since=metric.created_at
        )
        if not events:
            raise ServiceError(
                404, Codes.METRIC_NOT_FOUND, f"metric {metric_id} has captured no value yet"
            )
        event = events[0]
        document = event.to_json()
        value = None
        if event.error is None and document["values"]:
            value = json.loads(document["values"][0]["valueJson"])
        return Reply(
            200,
            {
                "metricId": metric.metric_id,
                "metricName": metric.name,
                "value": value,
                "timestamp": event.timestamp,
                "isError": event.error is not None,
            },
        )

    def _history(self, metric_id: int, query: dict[str, str]) -> Reply:
        metric = self.daemon.catalog.get_metric(metric_id)
        limit = min(_int_param(query, "limit", DEFAULT_LIMIT, minimum=0), MAX_EVENTS_LIMIT)
        offset = _int_param(query, "offset", 0, minimum=0)
        since = _int_param(query, "since", metric.created_at)
        until = _optional_int_param(query, "until")
        events, total = self.daemon.catalog.metric_events(
            [metric], limit=limit, offset=offset, since=since, until=until, count=True
        )
        return Reply(
            200,
            {
                "metricId": metric.metric_id,
                "metricName": metric.name,
                "events": [e.to_json() for e in events],
                "totalCount": total,
                "hasMore": offset + len(events) < total,
            },
        )

    # -- events ------------------------------------------------------------------------

    def _events(self, request: Request, query: dict[str, str]) -> Reply:
        if "metricId" in query and "metricName" in query:
            raise _Refused(400, "give metricId or metricName, not both")
        limit = min(_int_param(query, "limit", DEFAULT_LIMIT, minimum=0), MAX_EVENTS_LIMIT)
        metrics: list[Metric] | None = None
        if "metricId" in query:
            metrics = [self.daemon.catalog.get_metric(_metric_id(query["metricId"], "metricId"))]
        elif "metricName" in query:
            metrics = self.daemon.catalog.metric_by_name(query["metricName"])
        default_since = min(m.created_at for m in metrics) if metrics else None
        since = _optional_int_param(query, "since")
        events: list[Event]
        events, _total = self.daemon.catalog.metric_events(
            metrics, limit=limit, since=default_since if since is None else since
        )
        return Reply(200, [e.to_json() for e in events])


# -- request checks ------------------------------------------------------------------------


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        shown = ", ".join(("GET", "HEAD", *allowed[1:]) if allowed[0] == "GET" else allowed)
        raise _Refused(405, f"this route accepts {shown} only", headers={"Allow": shown})


def _is_app_route(method: str, path: str) -> bool:
    """What an app calls to register itself (see :mod:`.access`)."""
    if path == _CONNECTIONS:
        return method == "POST"
    rest = path[len(_CONNECTIONS) + 1 :] if path.startswith(_CONNECTIONS + "/") else ""
    return bool(rest) and "/" not in rest and rest != "cleanup" and method in ("GET", "DELETE")


def _metric_id(text: str, what: str = "metric id") -> int:
    if not text.isascii() or not text.isdigit():
        raise _Refused(400, f"{what} {text[:40]!r} is not a non-negative integer")
    return _in_range(text, what, 0)


def _in_range(text: str, what: str, minimum: int) -> int:
    """``int(text)`` when it lies in ``minimum..MAX_INT`` (the JSON integers we answer with)."""
    body = text.lstrip("-").lstrip("0") or "0"
    value = int(text) if len(body) <= 19 else None  # never int() an unbounded string
    if value is None or not minimum <= value <= MAX_INT:
        raise _Refused(400, f"{what} {text[:40]!r} is out of range ({minimum}..{MAX_INT})")
    return value


def _query(target: str) -> dict[str, str]:
    _, sep, raw = target.partition("?")
    if not sep or not raw:
        return {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refused(400, f"malformed query string: {exc}") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise _Refused(400, f"query parameter {key!r} is given twice")
        query[key] = value
    return query


def _int_param(query: dict[str, str], key: str, default: int, *, minimum: int | None = None) -> int:
    value = _optional_int_param(query, key)
    if value is None:
        return default
    if minimum is not None and value < minimum:
        raise _Refused(400, f"query parameter {key!r} must be at least {minimum}")
    return value


def _optional_int_param(query: dict[str, str], key: str) -> int | None:
    text = query.get(key)
    if text is None:
        return None
    body = text[1:] if text.startswith("-") else text
    if not body.isascii() or not body.isdigit():
        raise _Refused(400, f"query parameter {key!r} must be an integer, not {text[:40]!r}")
    return _in_range(text, f"query parameter {key!r}", -MAX_INT)


def _bool_param(query: dict[str, str], key: str) -> bool | None:
    text = query.get(key)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise _Refused(400, f"query parameter {key!r} must be true or false, not {text[:40]!r}")
    return text == "true"


def _json_object(request: Request) -> dict[str, Any]:
    try:
        document = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refused(400, f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise _Refused(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(document, dict):
        raise _Refused(422, "request body must be a JSON object")
    return document


def _required(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        raise _Refused(422, f"field {key!r} is required")
    if not _is(value, kind):
        raise _Refused(422, f"field {key!r} must be {_kind_name(kind)}")
    return value


def _optional(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is not None and not _is(value, kind):
        raise _Refused(422, f"field {key!r} must be {_kind_name(kind)}")
    return value


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind_name(kind: type) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer"}.get(kind, kind.__name__)


def _string_list(body: dict[str, Any], key: str, *, required: bool) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _Refused(422, f"field {key!r} is required")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Refused(422, f"field {key!r} must be a list of strings")
    return value


def _check_unsupported(body: dict[str, Any]) -> None:
    """Refuse what would be silently ignored: capture modes, stack traces, snapshots."""
    mode = _optional(body, "mode", str)
    if mode not in (None, "stream"):
        raise _Refused(
            400,
            f"mode {mode!r} is not supported by the embedded daemon: every hit is captured "
            "(mode stream)",
        )
    level = _optional(body, "safetyLevel", str)
    if level not in (None, "strict", "trusted"):
        raise _Refused(400, f"safetyLevel must be strict or trusted, not {level!r}")
    for key in ("captureStackTrace", "captureMemorySnapshot"):
        if _optional(body, key, bool):
            raise _Refused(400, f"{key} is not supported by the embedded daemon")


def _registration(document: dict[str, Any]) -> dict[str, Any]:
    """Type-check a register body the way serde would (422 on mismatch).

    Emptiness, the port floor and the language are the service's checks (400).
    """
    fields: dict[str, Any] = {}
    for key in ("host", "language", "name", "workspaceRoot"):
        fields[key] = _required(document, key, str)
    fields["hostname"] = _optional(document, "hostname", str) or ""
    port = document.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _Refused(422, "field 'port' is required and must be an integer in 0..65535")
    fields["port"] = port
    pid = document.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        raise _Refused(422, "field 'pid' must be a non-negative integer")
    fields["pid"] = pid
    fields["safeMode"] = _optional(document, "safeMode", bool) or False
    return fields
