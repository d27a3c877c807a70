"""Routing control-plane requests to the client, with auth and audit.

``health``, ``status`` and ``info`` are answered inline on the I/O thread from
the lock-free snapshot; ``wake`` and ``sleep`` are handed to a worker as a
:class:`~detrix_auto.control.loop.Deferred` so that they never delay the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .. import _log
from ..config import parse_url
from ..errors import ConfigError, DaemonError, DetrixError
from ..token import TokenFileError
from .auth import Caller, classify
from .http import Request, error_response, json_response, media_problem
from .loop import Connection, Deferred

__all__ = ["Router"]

ROUTES: dict[str, str] = {
    "/detrix/health": "GET",
    "/detrix/status": "GET",
    "/detrix/info": "GET",
    "/detrix/wake": "POST",
    "/detrix/sleep": "POST",
}


class Router:
    def __init__(self, client: Any, token_source: Callable[[], str | None]) -> None:
        self._client = client
        self._token_source = token_source
        self._token_problem = ""
        # The token last loaded, only to scrub it from what we answer and log:
        # a daemon that echoes our Authorization header in an error body must
        # not get it into a 503 message, the status or an audit line.
        self._secret: str | None = None

    def handle(self, request: Request, conn: Connection) -> bytes | Deferred:
        if request.method == "HEAD":
            # Answered like GET but without a body (RFC 9110), so that a
            # keep-alive client never reads a body it did not ask for.
            outcome = self._handle(request, conn, "GET")
            return outcome if isinstance(outcome, Deferred) else _head_only(outcome)
        return self._handle(request, conn, request.method)

    def _handle(self, request: Request, conn: Connection, verb: str) -> bytes | Deferred:
        keep = request.keep_alive
        method = ROUTES.get(request.path)
        if method is None:
            return error_response(404, f"no such endpoint: {request.path[:100]}", keep_alive=keep)
        if verb != method:
            allow = "GET, HEAD" if method == "GET" else method
            return _with_allow(
                error_response(405, f"{request.path} accepts {allow} only", keep_alive=keep),
                allow,
            )
        if request.path == "/detrix/health":
            return json_response(200, {"status": "ok", "service": "detrix-client"}, keep_alive=keep)
        caller = self._caller(request, conn)
        if not caller.authorized:
            if request.path in ("/detrix/wake", "/detrix/sleep"):
                self._audit(request.path, caller, "refused (unauthorized)")
            message = (
                "invalid token"
                if caller.token_bad
                else (f"unauthorized: {caller.reason}; send Authorization: Bearer <token>")
            )
            return error_response(401, message, keep_alive=keep)
        if request.path == "/detrix/status":
            self._client.poke()
            status = {
                k: self._scrub(v) if isinstance(v, str) else v
                for k, v in self._client.status().items()
            }
            return json_response(200, status, keep_alive=keep)
        if request.path == "/detrix/info":
            return json_response(200, self._client.info(), keep_alive=keep)
        problem = media_problem(request)
        if problem is not None:
            return error_response(problem[0], problem[1], keep_alive=keep)
        if request.path == "/detrix/sleep":
            return Deferred(lambda: self._sleep(caller, keep), keep)
        try:
            override = _wake_override(request.body)
        except ConfigError as exc:
            return error_response(400, str(exc), keep_alive=keep)
        return Deferred(lambda: self._wake(caller, override, keep), keep)

    def _caller(self, request: Request, conn: Connection) -> Caller:
        try:
            token = self._token_source()
        except TokenFileError as exc:
            # Fail closed (nobody authenticates with that file), and say why
            # once on stderr: the 401 a caller sees must not describe our files.
            token = None
            if str(exc) != self._token_problem:
                self._token_problem = str(exc)
                _log.warn(str(exc))
        except DetrixError:
            token = None
        self._secret = token
        return classify(
            request,
            conn.peer,
            conn.local,
            token,
            require_token=self._client.settings.require_token,
            conn_cache=conn.auth_cache,
        )

    def _wake(self, caller: Caller, override: str | None, keep: bool) -> bytes:
        try:
            # The token goes to a caller-chosen daemon only if that caller
            # proved it holds the token; a same-user local caller may point
            # the client elsewhere, but then without the token.
            result = self._client.wake(override, send_token=caller.token_ok)
        except DaemonError as exc:
            self._audit("/detrix/wake", caller, f"failed (503): {exc}")
            return error_response(503, self._scrub(str(exc)), keep_alive=keep)
        except DetrixError as exc:
            self._audit("/detrix/wake", caller, f"failed (500): {exc}")
            return error_response(500, self._scrub(str(exc)), keep_alive=keep)
        self._audit(
            "/detrix/wake",
            caller,
            f"{result['status']} port={result['debug_port']}"
            + (f" daemon={override}" if override else ""),
        )
        return json_response(200, result, keep_alive=keep)

    def _sleep(self, caller: Caller, keep: bool) -> bytes:
        try:
            result = self._client.sleep()
        except DetrixError as exc:
            self._audit("/detrix/sleep", caller, f"failed: {exc}")
            return error_response(500, self._scrub(str(exc)), keep_alive=keep)
        self._audit("/detrix/sleep", caller, result["status"])
        return json_response(200, result, keep_alive=keep)

    def _scrub(self, text: str) -> str:
        secret = self._secret
        return text.replace(secret, "<token>") if secret and secret in text else text

    def _audit(self, path: str, caller: Caller, outcome: str) -> None:
        uid = "?" if caller.uid is None else str(caller.uid)
        _log.audit(
            "%s peer=%s:%d uid=%s auth=%s outcome=%s",
            path.rsplit("/", 1)[-1],
            caller.address,
            caller.port,
            uid,
            caller.how,
            self._scrub(outcome),
        )


def _wake_override(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError("wake body is not valid JSON") from None
    except RecursionError:  # deeply nested arrays or objects
        raise ConfigError("wake body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError('wake body must be a JSON object such as {"daemon_url": "http://..."}')
    url = data.get("daemon_url")
    if url is None:
        return None
    return parse_url(url, "daemon_url")


def _head_only(response: bytes) -> bytes:
    head, sep, _ = response.partition(b"\r\n\r\n")
    return head + sep


def _with_allow(response: bytes, method: str) -> bytes:
    head, sep, body = response.partition(b"\r\n\r\n")
    return head + f"\r\nAllow: {method}".encode() + sep + body
