"""Talking to the Detrix daemon's HTTP API (CONTRACT.md section 2).

:class:`DaemonClient` is the protocol the lifecycle depends on, so tests and
users can substitute their own. :class:`HttpDaemonClient` implements it with a
hard time limit per call and no automatic retries: the lifecycle decides what
a failure means. Every failure becomes a :class:`DaemonError` whose message a
person can act on; no ``http.client``, urllib3, ``ssl`` or ``json`` exception
escapes.

Two transports, one behaviour. A plain ``http://`` daemon (the default, on
loopback) is spoken to with ``http.client`` on one kept-alive connection
(:class:`_PlainTransport`): debugpy loads ``http.client`` anyway, so a cold
wake imports nothing more for it. An ``https://`` daemon goes through urllib3's
pool (:mod:`detrix_auto._daemon_tls`), for its TLS context and hostname
matching; importing urllib3 costs a cold wake some 20-40 ms, so only such a
daemon pays it. Both run on the sockets of :mod:`detrix_auto._daemon_net`: a
deadline for the whole call (connect to last body byte, whatever the daemon
trickles) and a daemon that must prove, before the first byte is sent, that
its port belongs to us, to root or to ``DETRIX_DAEMON_USER``.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from . import _daemon_net, _native
from .config import daemon_url_problem
from .errors import DaemonError

if TYPE_CHECKING:
    from ._daemon_tls import PooledTransport

__all__ = ["DaemonClient", "HttpDaemonClient", "Registration", "client_for"]


class Registration:
    """The body of ``POST /api/v1/connections``.

    A plain slotted class, built once per wake: a frozen dataclass would cost the
    first wake 1.3 ms to make the class.
    """

    __slots__ = (
        "control_plane_url",
        "host",
        "hostname",
        "name",
        "pid",
        "port",
        "safe_mode",
        "workspace_root",
    )
    host: str
    port: int
    name: str
    workspace_root: str
    hostname: str
    pid: int | None
    safe_mode: bool
    control_plane_url: str | None

    def __init__(
        self,
        *,
        host: str,
        port: int,
        name: str,
        workspace_root: str,
        hostname: str,
        pid: int | None = None,
        safe_mode: bool = False,
        control_plane_url: str | None = None,
    ) -> None:
        # Where the daemon can reach this process's control plane (to fetch source
        # files, ``POST /detrix/files/read``): sent only when a routable host is known.
        values = {
            "host": host,
            "port": port,
            "name": name,
            "workspace_root": workspace_root,
            "hostname": hostname,
            "pid": pid,
            "safe_mode": safe_mode,
            "control_plane_url": control_plane_url,
        }
        for field, value in values.items():
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Registration never changes (set {name!r})")

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Registration({inner})"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "language": "python",
            "name": self.name,
            # The daemon refuses an empty workspaceRoot; "/" is the honest fallback.
            "workspaceRoot": self.workspace_root or "/",
            "hostname": self.hostname,
        }
        if self.pid is not None:
            body["pid"] = self.pid
        if self.safe_mode:
            body["safeMode"] = True
        if self.control_plane_url:
            body["controlPlaneUrl"] = self.control_plane_url
        return body


class DaemonClient(Protocol):
    """What the lifecycle needs from a daemon."""

    url: str

    def health(self, timeout: float) -> dict[str, Any]: ...

    def register(self, registration: Registration, token: str | None, timeout: float) -> str: ...

    def unregister(self, connection_id: str, token: str | None, timeout: float) -> None: ...

    def connection(
        self, connection_id: str, token: str | None, timeout: float
    ) -> dict[str, Any] | None: ...


class _PlainTransport:
    """An ``http://`` daemon over ``http.client``: one connection kept alive between calls.

    A call takes the kept connection if it is still quiet (nothing arrived on
    it meanwhile: a daemon that closed it, or sent something unasked), else
    opens a new one, and keeps it afterwards if none is kept by then. Calls of
    different threads (a sleep, the keeper) never wait for each other: each
    is bounded by its own deadline alone.
    """

    def __init__(self, url: str, explain: Callable[[str, str, float], str]) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self._explain = explain
        self._lock = _native.Lock()
        self._kept: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        with self._lock:
            conn, self._kept = self._kept, None
        if conn is not None and not _still_quiet(conn):
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect(timeout)
        try:
            conn.request(method, self.base_path + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except DaemonError:
            conn.close()
            raise
        except (http.client.HTTPException, ConnectionError) as exc:
            conn.close()
            raise DaemonError(self._explain("cut", _reason(exc), timeout)) from None
        except TimeoutError as exc:
            conn.close()
            raise DaemonError(self._explain("timeout", _reason(exc), timeout)) from None
        except OSError as exc:
            conn.close()
            raise DaemonError(self._explain("other", _reason(exc), timeout)) from None
        if not response.will_close:
            with self._lock:
                if self._kept is None:
                    self._kept, conn = conn, None
        if conn is not None:
            conn.close()
        return response.status, data

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        deadline = getattr(_daemon_net.call, "deadline", None)
        left = timeout if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            raw = _daemon_net.connect(self.host, self.port, left)
        except ConnectionRefusedError as exc:
            raise DaemonError(self._explain("refused", _reason(exc), timeout)) from None
        except TimeoutError as exc:
            raise DaemonError(self._explain("timeout", _reason(exc), timeout)) from None
        except OSError as exc:
            raise DaemonError(self._explain("connect", _reason(exc), timeout)) from None
        sock = _daemon_net.deadline_socket(raw)
        _daemon_net.checked(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # a request still works, a little later
        conn = http.client.HTTPConnection(self.host, self.port, timeout=left)
        conn.sock = sock
        # Never a connection of http.client's own making: it would skip the owner
        # check above (and under gevent be gevent's socket).
        conn.auto_open = 0
        return conn

    def close(self) -> None:
        with self._lock:
            conn, self._kept = self._kept, None
        if conn is not None:
            conn.close()


def _still_quiet(conn: http.client.HTTPConnection) -> bool:
    """Is a kept connection still open with nothing unread (safe to send on)?"""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class HttpDaemonClient:
    """The daemon over HTTP(S), with a hard time limit per call."""

    def __init__(
        self,
        url: str,
        *,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
        daemon_uid: int | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        #: Besides ours and root's, the one uid whose daemon on this host we trust.
        self.daemon_uid = daemon_uid
        #: The daemon's own idea of its external URL (``advertiseUrl`` in its health
        #: or registration answer), when it sent a usable one; None otherwise.
        self.advertise_url: str | None = None
        self._transport: _PlainTransport | PooledTransport
        if self.url.startswith("https:"):
            try:
                from ._daemon_tls import PooledTransport
            except ImportError as exc:  # urllib3 missing or broken in this environment
                raise DaemonError(
                    f"cannot load the HTTPS daemon client ({exc}); install urllib3 in this "
                    "environment (pip install urllib3), or use an http:// daemon URL on loopback"
                ) from None
            self._transport = PooledTransport(self.url, verify_ssl, ca_bundle, self._explain)
        else:
            self._transport = _PlainTransport(self.url, self._explain)

    # -- plumbing ---------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        token: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json", "User-Agent": "detrix-auto"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        _daemon_net.call.deadline = time.monotonic() + timeout
        _daemon_net.call.daemon_uid = self.daemon_uid
        try:
            status, reply = self._transport.request(method, path, data, headers, timeout)
        finally:
            _daemon_net.call.deadline = _daemon_net.call.daemon_uid = None
        if token and token.encode() in reply:
            # A daemon (or whatever answers at its URL) that echoes the request
            # back must not get the token into our errors, stderr or status.
            reply = reply.replace(token.encode(), b"<token>")
        return status, reply

    def _explain(self, kind: str, text: str, timeout: float) -> str:
        """Words for a call that got no whole answer: ``kind`` is what went wrong
        (``tls``, ``refused``, ``timeout``, ``connect``, ``cut`` or ``other``)."""
        if kind == "tls" or "CERTIFICATE" in text:
            return (
                f"TLS to the daemon at {self.url} failed ({_short(text)}); point DETRIX_CA_BUNDLE "
                "at the CA that signed its certificate, or use http:// on loopback"
            )
        # "Cannot connect to daemon at": the original client's words, which people grep for.
        if kind == "refused" or "refused" in text.lower():
            return (
                f"Cannot connect to daemon at {self.url} (connection refused); start it with "
                "`detrix serve` or set DETRIX_DAEMON_URL"
            )
        if kind == "timeout" or "timed out" in text.lower():
            return (
                f"daemon at {self.url} did not answer within {timeout:g}s; check it is healthy "
                "or raise the DETRIX_*_TIMEOUT setting"
            )
        if kind == "connect":
            return (
                f"Cannot connect to daemon at {self.url} ({_short(text)}); check DETRIX_DAEMON_URL"
            )
        if kind == "cut":
            return f"daemon at {self.url} closed the connection mid-reply ({_short(text)})"
        return f"Cannot connect to daemon at {self.url} ({_short(text)})"

    def _json(self, status: int, data: bytes, what: str) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise DaemonError(
                f"daemon at {self.url} answered {what} with HTTP {status} and a body that is not "
                f"JSON ({_short(data.decode('utf-8', 'replace')) or 'empty'}); is "
                "DETRIX_DAEMON_URL pointing at a Detrix daemon?",
                status=status,
            ) from None

    def _failure(self, status: int, data: bytes, what: str) -> DaemonError:
        detail = ""
        try:
            parsed = json.loads(data.decode("utf-8")) if data else None
            if isinstance(parsed, dict):
                detail = str(parsed.get("error") or parsed.get("message") or "")
        except (UnicodeDecodeError, ValueError):
            detail = data.decode("utf-8", "replace")
        detail = _short(detail)
        if status == 401:
            hint = "the daemon wants a token: set DETRIX_TOKEN or check ~/detrix/mcp-token"
        elif status == 429:
            hint = "the daemon is rate-limiting; try again shortly"
        elif status == 404:
            hint = "is DETRIX_DAEMON_URL pointing at a Detrix daemon (with the right path)?"
        else:
            hint = ""
        parts = [f"daemon at {self.url} refused {what} (HTTP {status}"]
        parts.append(f": {detail})" if detail else ")")
        if hint:
            parts.append(f"; {hint}")
        return DaemonError("".join(parts), status=status)

    # -- API --------------------------------------------------------------

    def health(self, timeout: float) -> dict[str, Any]:
        status, data = self._request("GET", "/health", timeout=timeout)
        if status != 200:
            raise self._failure(status, data, "the health check")
        body = self._json(status, data, "the health check")
        if not isinstance(body, dict) or body.get("service") != "detrix":
            raise DaemonError(
                f"{self.url} answered the health check but is not a Detrix daemon "
                '(no "service": "detrix"); check DETRIX_DAEMON_URL',
                status=status,
            )
        self._note_advertised(body)
        return body

    def register(self, registration: Registration, token: str | None, timeout: float) -> str:
        status, data = self._request(
            "POST",
            "/api/v1/connections",
            timeout=timeout,
            token=token,
            body=registration.to_json(),
        )
        if status not in (200, 201):
            raise self._failure(status, data, "the registration")
        body = self._json(status, data, "the registration")
        connection_id = body.get("connectionId") if isinstance(body, dict) else None
        if not isinstance(connection_id, str) or not connection_id:
            raise DaemonError(
                f"daemon at {self.url} accepted the registration but sent no connectionId",
                status=status,
            )
        self._note_advertised(body)
        return connection_id

    def unregister(self, connection_id: str, token: str | None, timeout: float) -> None:
        path = "/api/v1/connections/" + quote(connection_id, safe="")
        status, data = self._request("DELETE", path, timeout=timeout, token=token)
        if status in (200, 202, 204, 404):
            return  # 404: already gone, which is what we wanted
        raise self._failure(status, data, "the unregistration")

    def connection(
        self, connection_id: str, token: str | None, timeout: float
    ) -> dict[str, Any] | None:
        path = "/api/v1/connections/" + quote(connection_id, safe="")
        status, data = self._request("GET", path, timeout=timeout, token=token)
        if status == 404:
            return None
        if status != 200:
            raise self._failure(status, data, "the connection read-back")
        body = self._json(status, data, "the connection read-back")
        if not isinstance(body, dict):
            raise DaemonError(f"daemon at {self.url} sent a connection that is not an object")
        inner = body.get("connection")
        return inner if isinstance(inner, dict) else body

    def close(self) -> None:
        self._transport.close()

    def _note_advertised(self, body: Mapping[str, Any]) -> None:
        url = body.get("advertiseUrl")
        if isinstance(url, str) and url and daemon_url_problem(url) is None:
            self.advertise_url = url.strip().rstrip("/")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Daemon URLs whose client (and its pooled connections) is kept. A wake body may
#: name any daemon: without a bound, every new URL would keep a pool, and its
#: idle keep-alive sockets, for the life of the process.
MAX_CLIENTS = 4

_clients: dict[tuple[str, bool, str | None, int | None], HttpDaemonClient] = {}
_clients_lock = _native.Lock()


def client_for(
    url: str,
    *,
    verify_ssl: bool = True,
    ca_bundle: str | None = None,
    daemon_uid: int | None = None,
) -> HttpDaemonClient:
    """One pooled client per daemon URL and TLS setting, shared by every caller.

    A malformed ``url`` is a :class:`DaemonError` naming what is wrong with it.
    The most recently used :data:`MAX_CLIENTS` are kept; an older one is closed
    (its idle connections released). A caller still holding it can go on using
    it: the pool reopens connections on demand.
    """
    problem = daemon_url_problem(url)
    if problem is not None:  # a malformed URL init() kept for the wake to refuse
        raise DaemonError(problem)
    key = (url.rstrip("/"), verify_ssl, ca_bundle, daemon_uid)
    evicted: list[HttpDaemonClient] = []
    with _clients_lock:
        client = _clients.pop(key, None)
        if client is None:
            client = HttpDaemonClient(
                url, verify_ssl=verify_ssl, ca_bundle=ca_bundle, daemon_uid=daemon_uid
            )
        _clients[key] = client  # re-inserted: dicts keep insertion order, newest last
        while len(_clients) > MAX_CLIENTS:
            evicted.append(_clients.pop(next(iter(_clients))))
    for old in evicted:
        old.close()
    return client


def _forget_after_fork() -> None:
    """In a forked child: never share the parent's pooled connections.

    A keep-alive socket inherited from the parent is the same TCP connection:
    a request from the child would interleave with the parent's. The child's
    copies are just dropped (their descriptors close when collected, which
    never shuts down or ends TLS on the parent's connection); the lock is new
    in case a parent thread held it at the fork.
    """
    global _clients, _clients_lock
    _clients = {}
    _clients_lock = _native.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
