"""The daemon over ``https://``: urllib3's pool, on sockets that keep the call's deadline.

urllib3 is here for TLS: its context (the system's CAs, or ``DETRIX_CA_BUNDLE``)
and its hostname matching. A plain ``http://`` daemon (the default, on
loopback) needs none of it and goes through ``http.client`` in
:mod:`detrix_auto.daemon`, which debugpy has loaded anyway: importing urllib3
costs a cold wake some 20-40 ms (its URL regular expressions alone take a
third of that), so it is imported only when a daemon URL is ``https://``.

Every failure becomes a :class:`DaemonError` whose message a person can act
on; no urllib3 or ``ssl`` exception escapes.
"""

from __future__ import annotations

import queue
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
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
from ._daemon_net import DeadlineCalls, arm, checked, deadline_socket
from .errors import DaemonError


class _DeadlineSSLSocket(DeadlineCalls, ssl.SSLSocket):
    def read(self, *args: Any, **kwargs: Any) -> Any:
        arm(self)
        return super().read(*args, **kwargs)


def _connect(conn: HTTPConnection) -> socket.socket:
    """urllib3's ``_new_conn``; where gevent patched ``socket``, on the unpatched one."""
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


class _HTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = deadline_socket(_connect(self))
        checked(sock)  # before the TLS handshake: nothing at all goes to a squatter
        arm(sock)  # bounds the TLS handshake too
        return sock


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


class PooledTransport:
    """One ``https://`` daemon URL's connection pool; :meth:`request` is one bounded call."""

    def __init__(
        self,
        url: str,
        verify_ssl: bool,
        ca_bundle: str | None,
        explain: Callable[[str, str, float], str],
    ) -> None:
        self.url = url
        #: Words for a failure to connect, time out or get a whole answer (the
        #: client's, shared with its ``http.client`` transport).
        self._explain_text = explain
        kwargs: dict[str, Any] = {"maxsize": 4, "retries": False, "block": False}
        kwargs["cert_reqs"] = "CERT_REQUIRED" if verify_ssl else "CERT_NONE"
        if ca_bundle:
            kwargs["ca_certs"] = ca_bundle
        kwargs["ssl_context"] = _tls_context(verify_ssl, ca_bundle)
        if not verify_ssl:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._pool = urllib3.PoolManager(num_pools=2, **kwargs)
        self._pool.pool_classes_by_scheme = {"https": _HTTPSPool}

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        try:
            response = self._pool.request(
                method,
                self.url + path,
                body=body,
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
        return response.status, response.data or b""

    def _explain(self, exc: Exception, timeout: float) -> str:
        reason = getattr(exc, "reason", None) or exc
        text = str(reason)
        if isinstance(reason, SSLError) or "SSL" in type(reason).__name__ or "CERTIFICATE" in text:
            return self._explain_text("tls", text, timeout)
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        if "refused" in text.lower():
            return self._explain_text("refused", text, timeout)
        if isinstance(reason, Urllib3Timeout) or "timed out" in text.lower():
            return self._explain_text("timeout", text, timeout)
        if isinstance(reason, NewConnectionError):
            return self._explain_text("connect", text, timeout)
        if isinstance(reason, ProtocolError):
            return self._explain_text("cut", text, timeout)
        return self._explain_text("other", text, timeout)

    def close(self) -> None:
        self._pool.clear()
