"""Talking to the Detrix daemon's HTTP API (CONTRACT.md section 2).

:class:`DaemonClient` is the protocol the lifecycle depends on, so tests and
users can substitute their own. :class:`HttpDaemonClient` implements it on
urllib3 with one connection pool per daemon URL, a hard time limit per call
and no automatic retries: the lifecycle decides what a failure means.

The limit is a deadline for the whole call, connect to last body byte. urllib3's
own read timeout applies to each ``recv`` separately, so a daemon that trickles
its answer a byte at a time would hold a wake (and the lock sleep waits on)
for as long as it likes; here every send and receive of a call first checks
the call's deadline and waits at most until it.

Every failure becomes a :class:`DaemonError` whose message a person can act
on; no urllib3, ``ssl`` or ``json`` exception escapes.

**The daemon proves who it is before it gets anything.** Port 8090 is an
unprivileged port: another local user can bind it first and wait for our
``Authorization: Bearer <token>`` and our debug port. So every connection,
once connected and before its first byte is sent, is checked: when its
server end is on this host (always so for loopback), that socket must belong
to our own user, to root, or to the one account ``DETRIX_DAEMON_USER``
names (``netowner.server_end``: the socket the daemon accepted, or the
listener our connection waits on). Otherwise the call fails with a
:class:`DaemonError` naming the owner, and nothing was sent. Checking the
very connection that will carry the token leaves no window between a check
and a connect. A server elsewhere on the network is not checked (on Linux;
elsewhere no owner can be read, and nothing is checked).

This module imports urllib3 at import time; the lifecycle imports it only when
a wake needs it.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)

from . import _native
from .config import daemon_url_problem, is_loopback
from .errors import DaemonError

__all__ = ["DaemonClient", "HttpDaemonClient", "Registration", "client_for"]


@dataclass(frozen=True)
class Registration:
    """The body of ``POST /api/v1/connections``."""

    host: str
    port: int
    name: str
    workspace_root: str
    hostname: str
    pid: int | None = None
    safe_mode: bool = False
    #: Where the daemon can reach this process's control plane (to fetch source
    #: files, ``POST /detrix/files/read``); sent only when a routable host is known.
    control_plane_url: str | None = None

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


# -- a deadline for the whole call ---------------------------------------------

_call = threading.local()


def _verify_server(sock: socket.socket) -> None:
    """Before anything is sent: the server end of ``sock``, if on this host, must be trusted."""
    from . import netowner

    if not netowner.SUPPORTED:
        return
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return  # not connected after all: the send fails and says so
    found = netowner.server_end(sock)
    if found is None:
        if is_loopback(host):
            raise DaemonError(
                f"cannot tell which user holds port {port} on {host}, so neither the token nor "
                "the debug port is sent there; if the daemon is reached through NAT (a "
                "container's published port), point DETRIX_DAEMON_URL at its own address"
            )
        return  # a daemon on another machine: trusted as configured
    extra: int | None = getattr(_call, "daemon_uid", None)
    if found.uid in (os.geteuid(), 0) or found.uid == extra:
        return
    who = netowner.describe_uid(found.uid)
    name = who.partition("(")[2].rstrip(")") or str(found.uid)
    raise DaemonError(
        f"port {port} on {host} is held by {who}, not by you; refusing to send it the token "
        "or the debug port. Stop that process or point DETRIX_DAEMON_URL at your own daemon; "
        f"if it is a daemon you trust (a system service), set DETRIX_DAEMON_USER={name}"
    )


def _arm(sock: socket.socket) -> None:
    """Before each send or receive: wait at most until the current call's deadline."""
    deadline: float | None = getattr(_call, "deadline", None)
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")  # urllib3 turns it into a ReadTimeoutError
    sock.settimeout(left)


# The standard library's socket class even where gevent patched ``socket``: the
# daemon client runs on our own OS threads, which block for real (``_native``).
if TYPE_CHECKING:
    _Socket = socket.socket
else:
    _Socket = _native.socket_class()


class _DeadlineSocket(_Socket):
    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        _arm(self)
        return super().recv(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        _arm(self)
        return super().recv_into(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        _arm(self)
        return super().send(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        _arm(self)
        super().sendall(*args, **kwargs)


class _DeadlineSSLSocket(ssl.SSLSocket):
    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        _arm(self)
        return super().recv(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        _arm(self)
        return super().recv_into(*args, **kwargs)

    def read(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self)
        return super().read(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        _arm(self)
        return super().send(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        _arm(self)
        super().sendall(*args, **kwargs)


def _deadline_socket(sock: socket.socket) -> socket.socket:
    timeout = sock.gettimeout()
    wrapped = _DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.settimeout(timeout)
    return wrapped


def _connect(conn: HTTPConnection) -> socket.socket:
    """urllib3's ``_new_conn``; where gevent patched ``socket``, on the unpatched one.

    gevent's socket would run a gevent hub in the calling thread (one of ours),
    left behind when it ends; its resolver would start a thread pool there.
    """
    if not _native.gevent_patched("socket"):
        return HTTPConnection._new_conn(conn)
    timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
    try:
        sock: socket.socket = _native.create_connection(
            (conn._dns_host, conn.port),
            timeout,
            source_address=conn.source_address,
            socket_options=conn.socket_options,
        )
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={timeout})"
        ) from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
    return sock


class _HTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = _deadline_socket(_connect(self))
        _checked(sock)
        return sock


class _HTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = _deadline_socket(_connect(self))
        _checked(sock)  # before the TLS handshake: nothing at all goes to a squatter
        _arm(sock)  # bounds the TLS handshake too
        return sock


def _checked(sock: socket.socket) -> None:
    try:
        _verify_server(sock)
    except BaseException:
        sock.close()
        raise


class _Slots:
    """The pool's LIFO queue of connections, on locks that block the OS thread.

    urllib3's is ``queue.LifoQueue``, which gevent replaces with a greenlet queue
    when it patches ``queue``: used from our threads (a wake's worker, the keeper)
    it would start a gevent hub in each. Only what urllib3 calls is here.
    """

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: list[Any] = []
        self._lock = _native.Lock()
        self._more = _native.Event()

    def qsize(self) -> int:
        return len(self._items)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self._lock:
            if self.maxsize > 0 and len(self._items) >= self.maxsize:
                raise queue.Full  # urllib3 puts back at most what it took
            self._items.append(item)
            self._more.set()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._items:
                    item = self._items.pop()
                    if not self._items:
                        self._more.clear()
                    return item
            if not block:
                raise queue.Empty
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise queue.Empty
            self._more.wait(left)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection
    QueueCls = _Slots  # type: ignore[assignment]


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection
    QueueCls = _Slots  # type: ignore[assignment]


def _tls_context(verify_ssl: bool, ca_bundle: str | None) -> ssl.SSLContext:
    """urllib3's own context, whose sockets honour the call's deadline."""
    from urllib3.util.ssl_ import create_urllib3_context

    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if verify_ssl else ssl.CERT_NONE)
    if verify_ssl and not ca_bundle:
        # urllib3 loads the system's CAs only into contexts it made itself.
        context.load_default_certs()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class HttpDaemonClient:
    """The daemon over HTTP(S), pooled, with a hard time limit per call."""

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
        kwargs: dict[str, Any] = {"maxsize": 4, "retries": False, "block": False}
        if self.url.startswith("https:"):
            kwargs["cert_reqs"] = "CERT_REQUIRED" if verify_ssl else "CERT_NONE"
            if ca_bundle:
                kwargs["ca_certs"] = ca_bundle
            kwargs["ssl_context"] = _tls_context(verify_ssl, ca_bundle)
            if not verify_ssl:
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._pool = urllib3.PoolManager(num_pools=2, **kwargs)
        self._pool.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

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
        url = self.url + path
        _call.deadline = time.monotonic() + timeout
        _call.daemon_uid = self.daemon_uid
        try:
            response = self._pool.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=urllib3.Timeout(total=timeout),
                redirect=False,
                preload_content=True,
            )
        except (SSLError, MaxRetryError, NewConnectionError, Urllib3Timeout, ProtocolError) as exc:
            raise DaemonError(self._explain(exc, timeout)) from None
        except HTTPError as exc:
            raise DaemonError(f"daemon at {self.url} failed: {exc}") from None
        except (OSError, ValueError) as exc:
            raise DaemonError(f"daemon at {self.url} failed: {exc}") from None
        finally:
            _call.deadline = _call.daemon_uid = None
        reply: bytes = response.data or b""
        if token and token.encode() in reply:
            # A daemon (or whatever answers at its URL) that echoes the request
            # back must not get the token into our errors, stderr or status.
            reply = reply.replace(token.encode(), b"<token>")
        return response.status, reply

    def _explain(self, exc: Exception, timeout: float) -> str:
        reason = getattr(exc, "reason", None) or exc
        text = str(reason)
        if isinstance(reason, SSLError) or "SSL" in type(reason).__name__ or "CERTIFICATE" in text:
            return (
                f"TLS to the daemon at {self.url} failed ({_short(text)}); point DETRIX_CA_BUNDLE "
                "at the CA that signed its certificate, or use http:// on loopback"
            )
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        # "Cannot connect to daemon at": the original client's words, which people grep for.
        if "refused" in text.lower():
            return (
                f"Cannot connect to daemon at {self.url} (connection refused); start it with "
                "`detrix serve` or set DETRIX_DAEMON_URL"
            )
        if isinstance(reason, Urllib3Timeout) or "timed out" in text.lower():
            return (
                f"daemon at {self.url} did not answer within {timeout:g}s; check it is healthy "
                "or raise the DETRIX_*_TIMEOUT setting"
            )
        if isinstance(reason, NewConnectionError):
            return (
                f"Cannot connect to daemon at {self.url} ({_short(text)}); check DETRIX_DAEMON_URL"
            )
        if isinstance(reason, ProtocolError):
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
        self._pool.clear()

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
