"""Routing control-plane requests to the client, with auth and audit.

``health``, ``status``, ``info`` and ``discover`` are answered inline on the
I/O thread from the lock-free snapshot; ``wake``, ``sleep`` and ``files/read``
are handed to a worker as a :class:`~detrix_auto.control.loop.Deferred` so
that they never delay the rest (a file read may meet a slow file system).

Every route but ``health`` needs the same authorisation (``control/auth.py``):
a same-user local caller or the token. detrix-py 1.2.0 answered ``discover``
to anyone; here it tells no more than ``status`` and is guarded like it.
"""

from __future__ import annotations

from .. import _log
from ..config import control_plane_url, default_home, parse_url
from ..errors import ConfigError, DaemonError, DetrixError
from ..token import TokenFileError, token_file_candidates
from .auth import Caller, classify
from .http import Request, error_response, json_response, media_problem, text_response
from .loop import Connection, Deferred

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Router"]

ROUTES: dict[str, str] = {
    "/detrix/health": "GET",
    "/detrix/status": "GET",
    "/detrix/info": "GET",
    "/detrix/wake": "POST",
    "/detrix/sleep": "POST",
    "/detrix/discover": "GET",
    "/detrix/files/read": "POST",
}
#: Routes that leave an audit line, refused attempts included.
AUDITED = ("/detrix/wake", "/detrix/sleep", "/detrix/files/read")


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
            if request.path in AUDITED:
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
        if request.path == "/detrix/discover":
            return json_response(200, self._discover(), keep_alive=keep)
        problem = media_problem(request)
        if problem is not None:
            return error_response(problem[0], problem[1], keep_alive=keep)
        if request.path == "/detrix/files/read":
            try:
                path, workspace_root = _read_request(request.body)
            except ConfigError as exc:
                return error_response(400, str(exc), keep_alive=keep)
            return Deferred(lambda: self._read_file(caller, path, workspace_root, keep), keep)
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

    def _discover(self) -> dict[str, Any]:
        """Where the daemon is and how it can reach us (detrix-py 1.2.0's shape).

        No I/O: the daemon's advertised URL is the one learnt at the last
        registration (the original asked the daemon from here, which would let
        a request make us call out); otherwise the configured one.
        """
        client = self._client
        status = client.status()
        body: dict[str, Any] = {
            "daemon_url": getattr(client, "daemon_advertise_url", None) or status["daemon_url"],
            "name": status["name"],
        }
        url = control_plane_url(
            client.settings.advertise_host, status["control_host"], status["control_port"]
        )
        if url is not None:
            body["control_plane_url"] = url
        return body

    def _read_file(
        self, caller: Caller, path: str, workspace_root: str | None, keep: bool
    ) -> bytes:
        from .files import read_source_file

        home = self._client.settings.detrix_home
        daemon_home = default_home()
        result = read_source_file(
            path,
            workspace_root,
            forbidden_dirs=(home, daemon_home),
            forbidden_files=token_file_candidates(home) + token_file_candidates(daemon_home),
        )
        self._audit("/detrix/files/read", caller, result.outcome)
        if result.status == 200:
            return text_response(200, result.content, keep_alive=keep)
        return error_response(result.status, result.message, keep_alive=keep)

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
    import json  # only a wake with a body needs it

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


def _read_request(body: bytes) -> tuple[str, str | None]:
    """``{"path": ..., "workspace_root"?: ..., "commit"?: ...}`` (``commit`` is ignored)."""
    if not body.strip():
        raise ConfigError('a body such as {"path": "src/app.py"} is required')
    import json  # only a file read needs it

    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError("body is not valid JSON") from None
    except RecursionError:
        raise ConfigError("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError('body must be a JSON object such as {"path": "src/app.py"}')
    path = data.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError("'path' must be a non-empty string")
    root = data.get("workspace_root")
    if root is not None and not isinstance(root, str):
        raise ConfigError("'workspace_root' must be a string")
    return path, root


def _head_only(response: bytes) -> bytes:
    head, sep, _ = response.partition(b"\r\n\r\n")
    return head + sep


def _with_allow(response: bytes, method: str) -> bytes:
    head, sep, body = response.partition(b"\r\n\r\n")
    return head + f"\r\nAllow: {method}".encode() + sep + body
