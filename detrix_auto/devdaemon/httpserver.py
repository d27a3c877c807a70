"""The embedded daemon's HTTP server: a thread per connection, the control plane's parser.

Requests are parsed by :func:`detrix_auto.control.http.parse_request`, so
the daemon and the control plane refuse the same bytes the same way (request
line, header limits, duplicate headers, ``Content-Length``,
``Transfer-Encoding``, body size) with a JSON answer, never an HTML page or a
traceback. A thread per connection rather than a selector loop because a
request may take as long as a DAP attach, and the daemon is a development
tool serving a handful of clients; the number of connections is bounded and
each one has a socket timeout, so an idle or slow client holds only its own
thread, and not for long.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..control.http import REASONS, HttpError, Request, parse_request

__all__ = ["HttpServer", "Reply"]

_log = logging.getLogger(__name__)

_RECV_SIZE = 65536


@dataclass
class Reply:
    """One response: ``payload=None`` means no body (204, a bare answer to HEAD)."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


Handler = Callable[[Request, Any, Any, dict[str, Any]], Reply]
ErrorReply = Callable[[int, str], Reply]


def encode(reply: Reply, *, keep_alive: bool, head: bool = False) -> bytes:
    """The bytes of ``reply``: JSON body, exact length, no caching, keep-alive or close."""
    body = b"" if reply.payload is None else json.dumps(reply.payload).encode("utf-8")
    lines = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}"]
    if reply.payload is not None:
        lines.append("Content-Type: application/json")
    if reply.status != 204:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Cache-Control: no-store")
    lines.append("X-Content-Type-Options: nosniff")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    lines.extend(f"{key}: {value}" for key, value in reply.headers.items())
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head_bytes if head else head_bytes + body


class HttpServer:
    """Accepts on one listening socket; each connection is served by its own thread."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        error_reply: ErrorReply,
        *,
        request_timeout: float,
        max_body: int,
        max_connections: int,
    ) -> None:
        self._handler = handler
        self._error_reply = error_reply
        self.request_timeout = request_timeout
        self.max_body = max_body
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(64)
            # accept() wakes up this often to notice stop() on every platform.
            listener.settimeout(0.2)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.port: int = listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._accept_loop, name="devdaemon-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and cut every open connection at once; idempotent."""
        self._stopped.set()
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        try:
            self._listener.close()
        except OSError:
            pass

    # -- accepting ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopped.is_set():
                    return
                # EMFILE and friends: wait a little instead of spinning.
                self._stopped.wait(0.1)
                continue
            with self._lock:
                full = len(self._open) >= self.max_connections
                if not full:
                    self._open.add(sock)
            if full:
                self._refuse(sock, 503, "too many connections; try again shortly")
                continue
            threading.Thread(
                target=self._serve, args=(sock, peer), name="devdaemon-http-conn", daemon=True
            ).start()

    def _refuse(self, sock: socket.socket, status: int, message: str) -> None:
        try:
            sock.settimeout(1.0)
            sock.sendall(encode(self._error_reply(status, message), keep_alive=False))
        except OSError:
            pass
        finally:
            sock.close()

    # -- one connection ----------------------------------------------------------------

    def _serve(self, sock: socket.socket, peer: Any) -> None:
        cache: dict[str, Any] = {}
        try:
            sock.settimeout(self.request_timeout)
            local = sock.getsockname()
            buffer = bytearray()
            continued = False  # "100 Continue" sent for the request being read
            while not self._stopped.is_set():
                try:
                    request, used = parse_request(buffer, max_body=self.max_body)
                except HttpError as exc:
                    self._send(sock, self._error_reply(exc.status, exc.message), False)
                    _drain(sock)
                    return
                if request is None:
                    if not continued and _expects_continue(buffer):
                        # curl waits a second for this before sending a body over 1 KiB.
                        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                        continued = True
                    try:
                        chunk = sock.recv(_RECV_SIZE)
                    except TimeoutError:
                        if buffer:
                            reply = self._error_reply(408, "request not received in time")
                            self._send(sock, reply, False)
                            _drain(sock)
                        return
                    if not chunk:
                        return
                    buffer.extend(chunk)
                    continue
                del buffer[:used]
                continued = False
                try:
                    reply = self._handler(request, peer, local, cache)
                except Exception:  # noqa: BLE001 - a JSON 500, never a traceback
                    _log.exception(
                        "devdaemon: unhandled error for %s %s", request.method, request.path
                    )
                    reply = self._error_reply(500, "internal error")
                keep = request.keep_alive and not reply.close
                self._send(sock, reply, keep, head=request.method == "HEAD")
                if not keep:
                    return
        except OSError:
            return  # reset, broken pipe, stop(): the connection is over either way
        finally:
            with self._lock:
                self._open.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _send(sock: socket.socket, reply: Reply, keep_alive: bool, *, head: bool = False) -> None:
        sock.sendall(encode(reply, keep_alive=keep_alive, head=head))


def _expects_continue(buffer: bytearray) -> bool:
    """The request's header block is complete and asks for ``Expect: 100-continue``."""
    end = buffer.find(b"\r\n\r\n")
    return end >= 0 and b"\r\nexpect: 100-continue" in bytes(buffer[:end]).lower()


def _drain(sock: socket.socket, limit: int = 1 << 20) -> None:
    """Half-close and read what the client still sends (briefly, boundedly) before closing.

    Closing a socket with unread bytes makes the kernel send a reset, and a
    client still writing its (refused) body may then lose our answer unread.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        received = 0
        while received < limit:
            chunk = sock.recv(_RECV_SIZE)
            if not chunk:
                return
            received += len(chunk)
    except OSError:
        return
