"""One thread multiplexes every control-plane connection; slow work goes to workers.

Why this shape: a wake can take seconds (the daemon attaches before it
answers), while ``health`` and ``status`` must answer at once even then, and a
silent or slow client must not hold anything but its own file descriptor. So
all socket I/O and parsing happens in this selector loop with per-connection
deadlines; cheap requests are answered inline; ``wake`` and ``sleep`` run on a
small bounded pool of worker threads and hand their response back through a
wake-up socket. Connections beyond the limit are told 503 and closed, and
running out of file descriptors pauses accepting instead of spinning.
"""

from __future__ import annotations

import collections
import errno
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .http import (
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    HttpError,
    Request,
    error_response,
    parse_request,
)

__all__ = ["Connection", "EventLoop"]

#: Seconds a started request may take to arrive completely.
REQUEST_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept.
IDLE_TIMEOUT = 30.0
#: Connections served at once; the rest get 503.
MAX_CONNECTIONS = 512
#: Worker threads for slow requests (wake/sleep); they are serialised anyway.
MAX_WORKERS = 4
RECV_SIZE = 65536
#: Bytes a client may queue behind a request that is still being handled.
MAX_PIPELINED = MAX_REQUEST_LINE + MAX_HEADER_BYTES + MAX_BODY


class Connection:
    """One client connection and what we know about it."""

    __slots__ = (
        "auth_cache",
        "busy",
        "close_after_write",
        "deadline",
        "inbuf",
        "local",
        "outbuf",
        "peer",
        "peer_closed",
        "sock",
    )

    def __init__(self, sock: socket.socket, peer: Any, local: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.local = local
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = time.monotonic() + IDLE_TIMEOUT
        self.busy = False
        self.close_after_write = False
        self.peer_closed = False
        self.auth_cache: dict[str, Any] = {}


class Deferred:
    """A request handler to run on a worker thread; returns the response bytes."""

    def __init__(self, run: Callable[[], bytes], keep_alive: bool) -> None:
        self.run = run
        self.keep_alive = keep_alive


class EventLoop:
    def __init__(self, listener: socket.socket, router: Any) -> None:
        self._listener = listener
        self._router = router
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, Connection] = {}
        self._done: collections.deque[tuple[Connection, bytes, bool]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._jobs: queue.SimpleQueue[tuple[Connection, Deferred] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._workers_lock = threading.Lock()
        self._accept_paused_until = 0.0
        self.max_connections = _connection_limit()

    # -- public -------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self._notify()

    def close_fds_after_fork(self) -> None:
        for conn in list(self._conns.values()):
            _close(conn.sock)
        for sock in (self._wake_r, self._wake_w, self._listener):
            _close(sock)
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass

    def run(self, first: tuple[socket.socket, Any] | None = None) -> None:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if first is not None:
            self._add(*first)
        try:
            while not self._stopping:
                self._tick()
        finally:
            self._shutdown()

    # -- the loop -------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self._conns:
            timeout = max(0.0, min(timeout, min(c.deadline for c in self._conns.values()) - now))
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.modify(self._listener, selectors.EVENT_READ, "listener")
        try:
            events = self._selector.select(timeout)
        except (OSError, ValueError):
            self._stopping = True
            return
        for key, mask in events:
            if key.data == "listener":
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            else:
                conn = key.data
                if mask & selectors.EVENT_READ:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                    self._flush(conn)
        self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a moment rather than spin.
                    self._accept_paused_until = time.monotonic() + 0.1
                    self._selector.modify(self._listener, selectors.EVENT_READ, "paused")
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._stopping = True
                return
            if len(self._conns) >= self.max_connections:
                try:
                    sock.setblocking(False)
                    sock.send(error_response(503, "too many connections; try again shortly"))
                except OSError:
                    pass
                _close(sock)
                continue
            self._add(sock, peer)

    def _add(self, sock: socket.socket, peer: Any) -> None:
        try:
            sock.setblocking(False)
            local = sock.getsockname()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            _close(sock)
            return
        conn = Connection(sock, peer, local)
        self._conns[sock.fileno()] = conn
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            conn.peer_closed = True
            if conn.busy:
                self._watch(conn, 0)  # finish the job, then drop
            else:
                self._drop(conn)
            return
        if conn.close_after_write:
            return  # we are answering an error; ignore what follows
        if not conn.inbuf:
            conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        conn.inbuf += data
        if conn.busy and len(conn.inbuf) > MAX_PIPELINED:
            # Pipelining while a wake runs is fine; an unbounded backlog is not.
            self._drop(conn)
            return
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        while not conn.busy and conn.inbuf and not conn.close_after_write:
            try:
                request, used = parse_request(conn.inbuf)
            except HttpError as exc:
                conn.inbuf.clear()
                self._respond(conn, error_response(exc.status, exc.message), keep_alive=False)
                return
            if request is None:
                if conn.busy is False:
                    self._watch(conn, selectors.EVENT_READ)
                return
            del conn.inbuf[:used]
            self._dispatch(conn, request)
        if not conn.inbuf and not conn.busy and not conn.close_after_write:
            conn.deadline = time.monotonic() + IDLE_TIMEOUT

    def _dispatch(self, conn: Connection, request: Request) -> None:
        try:
            outcome = self._router.handle(request, conn)
        except Exception as exc:  # noqa: BLE001 - never a traceback on the wire
            outcome = error_response(500, f"internal error: {type(exc).__name__}")
            self._respond(conn, outcome, keep_alive=False)
            return
        if isinstance(outcome, Deferred):
            conn.busy = True
            self._watch(conn, 0)
            self._submit(conn, outcome)
            return
        self._respond(conn, outcome, keep_alive=request.keep_alive)

    def _respond(self, conn: Connection, data: bytes, *, keep_alive: bool) -> None:
        conn.outbuf += data
        if not keep_alive:
            conn.close_after_write = True
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            del conn.outbuf[:sent]
        if conn.outbuf:
            conn.deadline = time.monotonic() + REQUEST_TIMEOUT
            self._watch(conn, selectors.EVENT_WRITE)
            return
        if conn.close_after_write or conn.peer_closed:
            self._drop(conn)
            return
        self._watch(conn, 0 if conn.busy else selectors.EVENT_READ)

    def _watch(self, conn: Connection, events: int) -> None:
        fd = conn.sock.fileno()
        if fd < 0 or fd not in self._conns:
            return
        # A busy connection is not read from (responses stay in order), but
        # still watched so that a peer hanging up is noticed.
        if events == 0:
            events = selectors.EVENT_READ if not conn.peer_closed else 0
        try:
            if events:
                self._selector.modify(conn.sock, events, conn)
            else:
                self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            if events:
                self._selector.register(conn.sock, events, conn)
        except OSError:
            self._drop(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now and not c.busy]:
            if conn.inbuf and not conn.close_after_write:
                conn.inbuf.clear()
                self._respond(
                    conn, error_response(408, "request not received in time"), keep_alive=False
                )
                if conn.sock.fileno() >= 0 and conn.deadline <= now:
                    self._drop(conn)
            else:
                self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            self._conns.pop(fd, None)
        else:
            for key, value in list(self._conns.items()):
                if value is conn:
                    del self._conns[key]
        _close(conn.sock)

    # -- workers ----------------------------------------------------------------

    def _submit(self, conn: Connection, job: Deferred) -> None:
        self._jobs.put((conn, job))
        with self._workers_lock:
            if self._idle_workers == 0 and len(self._workers) < MAX_WORKERS:
                worker = threading.Thread(target=self._work, name="detrix-worker", daemon=True)
                self._workers.append(worker)
                worker.start()

    def _work(self) -> None:
        while True:
            with self._workers_lock:
                self._idle_workers += 1
            item = self._jobs.get()
            with self._workers_lock:
                self._idle_workers -= 1
            if item is None:
                return
            conn, job = item
            try:
                data = job.run()
            except Exception as exc:  # noqa: BLE001
                data = error_response(500, f"internal error: {type(exc).__name__}")
            self._done.append((conn, data, job.keep_alive))
            self._notify()

    def _notify(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        while self._done:
            conn, data, keep_alive = self._done.popleft()
            conn.busy = False
            if conn.sock.fileno() < 0:
                continue
            # A peer that half-closed after sending (``nc -N``) still gets
            # its answer; one that is fully gone makes the send fail.
            self._respond(conn, data, keep_alive=keep_alive and not conn.peer_closed)
            if conn.sock.fileno() >= 0 and conn.inbuf and not conn.busy:
                self._process(conn)

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        for _ in self._workers:
            self._jobs.put(None)
        for sock in (self._listener, self._wake_r, self._wake_w):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            _close(sock)
        self._selector.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _connection_limit() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    # Leave most descriptors to the host application.
    return max(16, min(MAX_CONNECTIONS, soft // 2 - 32))
