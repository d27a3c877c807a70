"""One thread multiplexes every control-plane connection; slow work goes to workers.

Why this shape: a wake can take seconds (the daemon attaches before it
answers), while ``health`` and ``status`` must answer at once even then, and a
silent or slow client must not hold anything but its own file descriptor. So
all socket I/O and parsing happens in this poll loop with per-connection
deadlines; cheap requests are answered inline; ``wake`` and ``sleep`` run on
worker threads (at most :data:`MAX_WORKERS`) and hand their response back
through a wake-up socket (opened for the first of them). Connections beyond
the limit are told 503 and closed, and running out of file descriptors pauses
accepting instead of spinning.

The loop lives only while it has something to do: :meth:`EventLoop.run`
returns once no connection is open and no request is being handled, and
workers end as soon as no job waits. The server's thread is then idle in
``accept()`` again, holding nothing but the listener (see ``server.py``).

It is built on ``_socket``, ``select.poll`` and ``_thread`` rather than
``socket``, ``selectors``, ``queue`` and ``threading``: answering a status
request then loads a few hundred kilobytes instead of megabytes, and needs no
``threading`` (which, before 3.13, the first importing thread would own; see
``_mainthread.py``). Workers are ``threading`` threads: a wake imports it
anyway, after ``_mainthread.ensure_threading``.

Every descriptor is checked before use and before close (``control/fds.py``).
"""

from __future__ import annotations

import _socket
import errno
import time

from .. import _native
from . import fds
from .http import (
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    HttpError,
    error_response,
    parse_request,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .http import Request

__all__ = ["Connection", "Deferred", "EventLoop"]

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

#: Fewer connections than this are always served (the lowest limit we ever set).
_FEW = 16

READ = 1  # POLLIN
WRITE = 4  # POLLOUT
_HANGUP = 8 | 16 | 32  # POLLERR, POLLHUP, POLLNVAL


class Connection:
    """One client connection and what we know about it."""

    __slots__ = (
        "auth_cache",
        "busy",
        "close_after_write",
        "deadline",
        "fd",
        "hurried",
        "ident",
        "inbuf",
        "local",
        "outbuf",
        "peer",
        "peer_closed",
        "sock",
    )

    def __init__(
        self, sock: Any, peer: Any, local: Any, ident: tuple[int, int] | None = None
    ) -> None:
        self.sock = sock
        self.fd: int = sock.fileno()
        self.ident = ident if ident is not None else fds.identity(sock)
        self.peer = peer
        self.local = local
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = time.monotonic() + IDLE_TIMEOUT
        self.busy = False
        self.close_after_write = False
        self.peer_closed = False
        self.auth_cache: dict[str, Any] = {}
        #: A wake or sleep request of this connection holds quick GIL hand-offs.
        self.hurried = False

    @property
    def open(self) -> bool:
        return bool(self.sock.fileno() >= 0)


class Deferred:
    """A request handler to run on a worker thread; returns the response bytes."""

    def __init__(self, run: Callable[[], bytes], keep_alive: bool) -> None:
        self.run = run
        self.keep_alive = keep_alive


class EventLoop:
    def __init__(
        self,
        listener: Any,
        listener_ident: tuple[int, int] | None,
        router: Any,
        local: Any = None,
    ) -> None:
        self._listener = listener
        #: Our end of every connection when the listener is bound to one address
        #: (not a wildcard): asked of the kernel once, not per connection.
        self._local = local
        self._listener_ident = listener_ident
        self._listener_fd: int = listener.fileno()
        self._router = router
        self._poller = _Poller()
        self._conns: dict[int, Connection] = {}
        self._stopping = False
        self._lost = False
        # Jobs, results and the wake-up pair are shared with the workers: _lock.
        self._lock = _native.Lock()
        self._jobs: list[tuple[Connection, Deferred]] = []
        self._done: list[tuple[Connection, bytes, bool]] = []
        self._workers = 0  # live worker threads
        self._in_flight = 0  # jobs submitted whose answer the loop has not taken yet
        self._closing = False
        self._wake_r: Any = None
        self._wake_w: Any = None
        self._wake_ident: tuple[Any, Any] = (None, None)
        self._wake_fd = -1
        self._wake_tried = False  # the pair is opened for the first worker's job
        self._accept_paused_until = 0.0
        self._max_connections = 0  # read from the descriptor limit when first needed

    # -- public -------------------------------------------------------------

    @property
    def max_connections(self) -> int:
        """Connections served at once (the rest get 503): at most :data:`MAX_CONNECTIONS`,
        and at most about half the process's descriptor limit."""
        if not self._max_connections:
            self._max_connections = _connection_limit()
        return self._max_connections

    def stop(self) -> None:
        """Ask the loop to end; safe from any thread."""
        self._stopping = True
        with self._lock:
            self._notify_locked()

    def close_fds_after_fork(self) -> None:
        """In a forked child (no thread of ours runs): close our copies, nothing else."""
        for conn in list(self._conns.values()):
            fds.release(conn.sock, conn.ident)
        self._conns.clear()
        self._release_wakeup()

    def run(self, first: tuple[Any, Any, Any] | None = None) -> bool:
        """Serve until nothing is left to do (or :meth:`stop`). True if the listener was lost."""
        if not fds.is_ours(self._listener, self._listener_ident):
            if first is not None:
                fds.release(first[0], first[2])
            return True
        try:
            self._listener.setblocking(False)
            self._poller.set(self._listener_fd, READ)
            if first is not None:
                self._add(*first)
            while not self._stopping:
                self._tick()
                if not self._conns and not self._in_flight:
                    break  # nothing to do: the server thread goes back to accept()
        finally:
            self._shutdown()
        return self._lost

    # -- the loop -------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self._conns:
            timeout = max(0.0, min(timeout, min(c.deadline for c in self._conns.values()) - now))
        if self._in_flight and self._wake_fd < 0:
            timeout = min(timeout, 0.05)  # no wake-up socket: look for answers often
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._poller.set(self._listener_fd, READ)
        try:
            events = self._poller.poll(timeout)
        except (OSError, ValueError):
            self._stopping = True
            return
        for fd, mask in events:
            if fd == self._listener_fd:
                self._accept()
            elif fd == self._wake_fd:
                self._drain_wakeup()
            else:
                conn = self._conns.get(fd)
                if conn is None:
                    self._poller.set(fd, 0)
                    continue
                if not fds.is_ours(conn.sock, conn.ident):
                    self._forget(conn)  # the host closed it and reused the number
                    continue
                if mask & (READ | _HANGUP):
                    self._read(conn)
                if mask & WRITE and conn.open:
                    self._flush(conn)
        self._take_answers()
        self._expire(time.monotonic())

    def _accept(self) -> None:
        if not fds.is_ours(self._listener, self._listener_ident):
            self._lost = self._stopping = True
            self._poller.set(self._listener_fd, 0)
            return
        for _ in range(64):
            try:
                fd, peer = self._listener._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a moment rather than spin.
                    self._accept_paused_until = time.monotonic() + 0.1
                    self._poller.set(self._listener_fd, 0)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._stopping = True
                return
            listener = self._listener
            sock = _socket.socket(listener.family, listener.type, listener.proto, fd)
            # The limit is only looked up (``resource``) once it could matter.
            if len(self._conns) >= _FEW and len(self._conns) >= self.max_connections:
                try:
                    sock.setblocking(False)
                    sock.send(error_response(503, "too many connections; try again shortly"))
                except OSError:
                    pass
                fds.release(sock, fds.identity(sock))
                continue
            self._add(sock, peer)

    def _add(self, sock: Any, peer: Any, ident: tuple[int, int] | None = None) -> None:
        ident = ident if ident is not None else fds.identity(sock)
        try:
            sock.setblocking(False)
            local = self._local if self._local is not None else sock.getsockname()
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            fds.release(sock, ident)
            return
        conn = Connection(sock, peer, local, ident)
        self._conns[conn.fd] = conn
        self._poller.set(conn.fd, READ)

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
                    self._watch(conn, READ)
                return
            del conn.inbuf[:used]
            self._dispatch(conn, request)
        if not conn.inbuf and not conn.busy and not conn.close_after_write:
            conn.deadline = time.monotonic() + IDLE_TIMEOUT

    def _dispatch(self, conn: Connection, request: Request) -> None:
        if request.method == "POST" and request.path in HURRIED:
            _hurry(conn)
        try:
            outcome = self._router.handle(request, conn)
        except Exception as exc:  # noqa: BLE001 - never a traceback on the wire
            outcome = error_response(500, f"internal error: {type(exc).__name__}")
            self._respond(conn, outcome, keep_alive=False)
            _unhurry(conn)
            return
        if isinstance(outcome, Deferred):
            conn.busy = True
            self._watch(conn, 0)
            self._submit(conn, outcome)
            return  # hurried until its answer is taken (_take_answers, _shutdown)
        self._respond(conn, outcome, keep_alive=request.keep_alive)
        _unhurry(conn)

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
            self._watch(conn, WRITE)
            return
        if conn.close_after_write or conn.peer_closed:
            self._drop(conn)
            return
        self._watch(conn, 0 if conn.busy else READ)

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.fd not in self._conns or not conn.open:
            return
        # A busy connection is not read from (responses stay in order), but
        # still watched so that a peer hanging up is noticed.
        if events == 0:
            events = READ if not conn.peer_closed else 0
        self._poller.set(conn.fd, events)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now and not c.busy]:
            if conn.inbuf and not conn.close_after_write:
                conn.inbuf.clear()
                self._respond(
                    conn, error_response(408, "request not received in time"), keep_alive=False
                )
                if conn.open and conn.deadline <= now:
                    self._drop(conn)
            else:
                self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self._poller.set(conn.fd, 0)
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        fds.release(conn.sock, conn.ident)

    def _forget(self, conn: Connection) -> None:
        """The host closed this connection's number (and maybe reused it): let go, untouched."""
        self._poller.set(conn.fd, 0)
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        fds.forget(conn.sock)

    # -- workers ----------------------------------------------------------------

    def _submit(self, conn: Connection, job: Deferred) -> None:
        if not self._wake_tried:
            # Only a worker needs it, so a status request never pays for it: five
            # system calls, each a wait for the GIL beside a host that computes.
            self._wake_tried = True
            self._open_wakeup()
        with self._lock:
            self._jobs.append((conn, job))
            self._in_flight += 1
            start = self._workers < MAX_WORKERS
            if start:
                self._workers += 1
        if not start:
            return
        try:
            _start_worker(self._work)
        except Exception as exc:  # noqa: BLE001 - no thread: answer rather than hang
            with self._lock:
                self._workers -= 1
                if self._workers:
                    return  # a running worker takes the job
                stranded, self._jobs = self._jobs, []
                refusal = error_response(500, f"internal error: {type(exc).__name__}")
                self._done += [(waiting, refusal, False) for waiting, _ in stranded]

    def _work(self) -> None:
        """A worker: runs jobs until none waits, then ends (no idle threads)."""
        while True:
            with self._lock:
                if not self._jobs or self._closing:
                    self._workers -= 1
                    return
                conn, job = self._jobs.pop(0)
            try:
                data = job.run()
            except Exception as exc:  # noqa: BLE001
                data = error_response(500, f"internal error: {type(exc).__name__}")
            with self._lock:
                closed = self._closing
                if not closed:
                    self._done.append((conn, data, job.keep_alive))
                    self._notify_locked()
            if closed:
                # The loop ended while this job ran: nobody will take its answer,
                # so its hold on quick hand-offs ends here (else the host's switch
                # interval would stay short for good).
                _unhurry(conn)

    def _open_wakeup(self) -> None:
        pair = getattr(_socket, "socketpair", None)
        if pair is None:  # Windows: socket emulates it over loopback
            import socket

            pair = socket.socketpair
        try:
            wake_r, wake_w = pair()
            wake_r.setblocking(False)
            wake_w.setblocking(False)
        except OSError:
            return  # answers are then picked up by polling often (see _tick)
        self._wake_r, self._wake_w = wake_r, wake_w
        self._wake_ident = (fds.identity(wake_r), fds.identity(wake_w))
        self._wake_fd = wake_r.fileno()
        self._poller.set(self._wake_fd, READ)

    def _notify_locked(self) -> None:
        wake_w = self._wake_w
        if wake_w is None or not fds.is_ours(wake_w, self._wake_ident[1]):
            return
        try:
            wake_w.send(b"x")
        except OSError:
            pass

    def _drain_wakeup(self) -> None:
        wake_r = self._wake_r
        if wake_r is None or not fds.is_ours(wake_r, self._wake_ident[0]):
            with self._lock:
                self._release_wakeup()  # the host closed it: poll for answers instead
            return
        try:
            while wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _release_wakeup(self) -> None:
        if self._wake_fd >= 0:
            self._poller.set(self._wake_fd, 0)
        (ident_r, ident_w) = self._wake_ident
        for sock, ident in ((self._wake_r, ident_r), (self._wake_w, ident_w)):
            if sock is not None:
                fds.release(sock, ident)
        self._wake_r = self._wake_w = None
        self._wake_fd = -1

    def _take_answers(self) -> None:
        if not self._done:
            return
        with self._lock:
            done, self._done = self._done, []
        for conn, data, keep_alive in done:
            self._in_flight -= 1
            conn.busy = False
            if not conn.open or self._conns.get(conn.fd) is not conn:
                _unhurry(conn)
                continue
            # A peer that half-closed after sending (``nc -N``) still gets
            # its answer; one that is fully gone makes the send fail.
            self._respond(conn, data, keep_alive=keep_alive and not conn.peer_closed)
            _unhurry(conn)
            if conn.open and conn.inbuf and not conn.busy:
                self._process(conn)

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        with self._lock:
            self._closing = True
            stranded = [conn for conn, _ in self._jobs] + [conn for conn, _, _ in self._done]
            self._jobs.clear()
            self._release_wakeup()
        for conn in stranded:  # their answers will never be taken
            _unhurry(conn)
        self._poller.set(self._listener_fd, 0)
        if not self._lost and fds.is_ours(self._listener, self._listener_ident):
            try:
                self._listener.setblocking(True)  # the idle thread blocks in accept() again
            except OSError:
                pass


#: Requests that hold quick GIL hand-offs (``_handoff``) from their parsing to their
#: answer: beside a host that computes, each of the dozen blocking calls of a
#: request (reading it, who the caller is, the worker thread, the answer) would
#: otherwise wait a whole switch interval (5 ms) for the GIL. A wake or a sleep
#: holds them for its own work anyway; a status request does not (it changes
#: nothing in the host, the interval included).
HURRIED = frozenset({"/detrix/wake", "/detrix/sleep"})


def _hurry(conn: Connection) -> None:
    if not conn.hurried:
        from .. import _handoff

        conn.hurried = True
        _handoff.enter()


def _unhurry(conn: Connection) -> None:
    if conn.hurried:
        from .. import _handoff

        conn.hurried = False
        _handoff.leave()


def _start_worker(target: Callable[[], None]) -> None:
    from .._mainthread import ensure_threading

    ensure_threading()  # before 3.13 the first importer of threading becomes "main"
    _native.Thread(target, "detrix-worker").start()


class _Poller:
    """``select.poll`` where there is one, else ``select.select`` (Windows)."""

    def __init__(self) -> None:
        self._masks: dict[int, int] = {}
        self._poll: Any = _native.poll()

    def set(self, fd: int, mask: int) -> None:
        """Watch ``fd`` for ``mask``; 0 stops watching it."""
        if fd < 0:
            return
        old = self._masks.get(fd)
        if mask:
            self._masks[fd] = mask
        else:
            self._masks.pop(fd, None)
        if self._poll is None or old == mask:
            return
        if not mask:
            try:
                self._poll.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        elif old is None:
            self._poll.register(fd, mask)
        else:
            self._poll.modify(fd, mask)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        if self._poll is not None:
            ready: list[tuple[int, int]] = self._poll.poll(max(0, int(timeout * 1000 + 0.999)))
            return ready
        readers = [fd for fd, m in self._masks.items() if m & READ]
        writers = [fd for fd, m in self._masks.items() if m & WRITE]
        if not readers and not writers:
            _native.sleep(timeout)
            return []
        r, w, _ = _native.select(readers, writers, [], timeout)
        events: dict[int, int] = {}
        for fd in r:
            events[fd] = events.get(fd, 0) | READ
        for fd in w:
            events[fd] = events.get(fd, 0) | WRITE
        return list(events.items())


def _connection_limit() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    # Leave most descriptors to the host application.
    return max(_FEW, min(MAX_CONNECTIONS, soft // 2 - 32))
