"""The control plane's listening socket, cheap enough for process start-up.

Opening it costs a ``socket()``, ``bind()``, ``listen()`` and one thread that
blocks in ``accept()``, using the C modules ``_socket`` and ``_thread``
directly: the ``socket`` and ``threading`` modules cost several milliseconds
to import, more than everything else we do at start-up. Nothing else is
imported until the first connection arrives: only then does the thread load
the event loop, the HTTP parser and the router (``control/loop.py``), so an
application that nobody looks at never pays for them, and the host's own
imports do not compete with ours while it starts.

The serving thread has two modes. *Idle*: blocked in ``accept()``, holding
nothing but the listener. *Serving*: an :class:`~.loop.EventLoop` runs while
any connection is open or any request is being handled, and returns as soon
as none is; the thread is then idle again.

Only the idle thread can be asked to step aside for a ``fork()``
(:meth:`ControlServer.pause_for_fork`): on 3.12+ CPython warns about every
fork of a multi-threaded process, and a sleeping process must not make the
host's forks warn. The listener stays open meanwhile, so a client that
connects during the fork waits in the backlog and is served once the thread
is back (:meth:`ControlServer.resume_after_fork`).

Every descriptor is checked before it is used or closed (``control/fds.py``):
a host that closed our listener (``os.closerange``) and reused its number
never sees that number accepted on, shut down or closed by us, and exit never
waits for a thread blocked on a socket that is no longer there.
"""

from __future__ import annotations

import _socket
import _thread
import os
import sys
import time

from .. import _native
from ..errors import ControlPlaneError
from . import fds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["ControlServer"]

#: How long a fork waits for the idle thread to be gone before forking anyway.
PAUSE_TIMEOUT = 0.25
#: How long ``close()`` waits for a serving thread it could wake.
CLOSE_TIMEOUT = 2.0
#: Bind addresses that take connections on several of ours: each one's own end is asked.
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "::0"})

# Phases of the serving thread, changed only under ``ControlServer._lock``.
NEW = "new"  # bound, not started
ACCEPTING = "accepting"  # idle: blocked in accept()
SERVING = "serving"  # an event loop runs
PAUSING = "pausing"  # a fork asked the idle thread to end
PAUSED = "paused"  # no thread; the listener waits for resume_after_fork()
CLOSED = "closed"  # close() or a fork's child: nothing will run again
LOST = "lost"  # the listener's number no longer names our socket

#: accept() errors after which the listener is still fine.
_TRANSIENT = (103, 71, 4)  # ECONNABORTED, EPROTO, EINTR
#: accept() errors that mean "out of descriptors or memory": wait, then retry.
_EXHAUSTED = (24, 23, 105, 12)  # EMFILE, ENFILE, ENOBUFS, ENOMEM


class ControlServer:
    """A bound listener plus the thread that serves it."""

    def __init__(
        self,
        host: str,
        port: int,
        make_router: Callable[[], Any],
    ) -> None:
        self.host = host
        self._make_router = make_router
        self._router: Any = None
        self._sock = self._bind(host, port)
        self._ident = fds.identity(self._sock)
        bound = self._sock.getsockname()
        self.port: int = bound[1]
        #: Our end of each connection, when one address is bound: the loop then
        #: need not ask the kernel for it at every connection.
        self._local: Any = None if host in _WILDCARDS else bound
        self._lock = _native.Lock()
        self._phase = NEW
        self._loop: Any = None
        #: A client accepted while a fork paused us: served first on resume.
        self._pending: tuple[Any, Any, Any] | None = None
        #: Where the connection that ends the idle thread for a fork comes from.
        self._wakeup_peer: Any = None
        # Held by the serving thread while it runs: close() and forks wait on it.
        self._running = _native.Lock()
        # Held from a thread's start until it has said who it is (_thread_ident, _native_id).
        self._starting = _native.Lock()
        self._thread_ident = 0
        self._native_id = 0

    @staticmethod
    def _bind(host: str, port: int) -> Any:
        family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            if os.name != "nt":
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if family == _socket.AF_INET6 and host in ("::", "::0"):
                # A wildcard IPv6 bind also takes IPv4 clients, like 0.0.0.0 would.
                sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            hint = (
                "another process holds that port: choose another DETRIX_CONTROL_PORT or use 0"
                if exc.errno in (98, 48, 10048)
                else "check DETRIX_CONTROL_HOST names an address of this machine"
            )
            raise ControlPlaneError(
                f"cannot listen on {host}:{port} for the control plane ({exc.strerror}); {hint}"
            ) from None
        return sock

    @property
    def url(self) -> str:
        host = self._connect_host()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def _connect_host(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host in ("::", "::0"):
            return "::1"
        return host

    # -- the serving thread ----------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._phase != NEW:
                return
            self._phase = ACCEPTING
        self._spawn()

    def _spawn(self) -> None:
        self._running.acquire()
        self._starting.acquire()
        try:
            _native.start_new_thread(self._serve, ())
        except BaseException:
            self._starting.release()
            self._running.release()
            with self._lock:
                if self._phase == ACCEPTING:
                    self._phase = PAUSED  # a later fork or call may try again
            raise

    def _serve(self) -> None:
        self._thread_ident = _native.get_ident()
        self._native_id = _thread.get_native_id()
        self._starting.release()
        try:
            self._serve_until_done()
        except Exception as exc:  # noqa: BLE001 - a dying control plane says so once
            from .. import _log

            _log.warn(f"control plane stopped: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                if self._phase == PAUSING:
                    self._phase = PAUSED
                self._loop = None
            self._running.release()

    def _serve_until_done(self) -> None:
        with self._lock:
            first, self._pending = self._pending, None
            if first is not None:
                if self._phase != ACCEPTING or first[1] == self._wakeup_peer:
                    fds.release(first[0], first[2])  # closing, or only our own knock
                    first = None
                else:
                    self._phase = SERVING  # a client that came during a fork
            self._wakeup_peer = None
        fresh = False  # a connection accepted before a fork: looked at again before use
        while True:
            if first is None:
                first = self._accept()
                if first is None:
                    return
                fresh = True
            self._serve_connections(first, fresh=fresh)
            first = None
            with self._lock:
                if self._phase != SERVING:
                    return
                self._phase = ACCEPTING
            if not fds.is_ours(self._sock, self._ident):
                self._lose()
                return

    def _accept(self) -> tuple[Any, Any, Any] | None:
        """Block until a client connects; None when the thread is to end."""
        while True:
            if not fds.is_ours(self._sock, self._ident):
                self._lose()
                return None
            try:
                fd, peer = self._sock._accept()
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                if exc.errno in _EXHAUSTED:
                    _native.sleep(0.1)  # out of descriptors: the host needs them more
                    continue
                with self._lock:
                    if self._phase in (CLOSED, PAUSING):
                        return None
                if not fds.is_ours(self._sock, self._ident):
                    self._lose()
                    return None
                raise
            sock = _socket.socket(self._sock.family, self._sock.type, self._sock.proto, fd)
            conn = (sock, peer, fds.identity(sock))
            if not fds.is_ours(self._sock, self._ident):
                # Closed under us while we waited (accept() kept the socket
                # alive until now): the port is gone with this connection.
                # Said before the close: whoever sees the connection end (and
                # then lets the host exit) can already read why.
                self._lose()
                fds.release(sock, conn[2])
                return None
            with self._lock:
                phase = self._phase
                if phase == ACCEPTING:
                    self._phase = SERVING
                    return conn
                if phase == PAUSING and peer != self._wakeup_peer and self._pending is None:
                    # A client come during a fork, or our knock before the knocker
                    # could say where it comes from: looked at again on restart.
                    self._pending = conn
                    return None
            # Our knock (closed here first, so that no TIME_WAIT socket of ours
            # holds an ephemeral port of the host), or we are closing.
            fds.release(sock, conn[2])
            return None

    def _serve_connections(self, first: tuple[Any, Any, Any], *, fresh: bool) -> None:
        """Serve ``first`` and whatever comes while it is served.

        ``fresh``: accepted a moment ago. When the first request's modules are
        imported first, or the connection waited through a fork, the host had
        time to close its number and open something else there: it is looked
        at again before anything is done to it.
        """
        fresh = fresh and self._router is not None
        try:
            if self._router is None and "gevent.monkey" in sys.modules:
                # What the first request imports must not race a gevent host's first hub.
                from .. import _import_races

                _import_races.wait_for_gevents_hub()
            from .loop import EventLoop

            if self._router is None:
                self._router = self._make_router()
            loop = EventLoop(self._sock, self._ident, self._router, self._local)
        except BaseException:
            fds.release(first[0], first[2])
            raise
        start: tuple[Any, Any, Any] | None = first
        if not fresh and not fds.is_ours(first[0], first[2]):
            fds.forget(first[0])  # the host's now: not ours to close
            start = None
        with self._lock:
            if self._phase != SERVING:
                if start is not None:
                    fds.release(start[0], start[2])
                return
            self._loop = loop
        try:
            lost = loop.run(start)
        finally:
            with self._lock:
                self._loop = None
        if lost:
            self._lose()

    def _lose(self) -> None:
        """Our listener's number names something else now: let go of it, untouched."""
        with self._lock:
            if self._phase in (CLOSED, LOST):
                return
            self._phase = LOST
        fds.forget(self._sock)
        from .. import _log

        _log.warn(
            "the control plane's listening socket was closed by the application; "
            "this process cannot be woken until it restarts"
        )

    # -- forks -------------------------------------------------------------------

    def pause_for_fork(self) -> bool:
        """Just before ``fork()``: end the idle thread, so the host forks single-threaded.

        Only an idle thread steps aside; with a request in flight, or another
        thread of ours or the host's running, the process is multi-threaded
        anyway and CPython's warning about it is the truth. Waits (at most
        :data:`PAUSE_TIMEOUT`) until the OS thread is really gone: CPython counts
        the threads of ``/proc/self/stat``, and a thread outlives the end of
        its Python code by a little. True when paused.
        """
        if _native.get_ident() == self._thread_ident:
            return False  # forking from our own thread
        if self._phase != ACCEPTING:
            return False
        # A thread started a moment ago may not have run yet: let it say who it is.
        if not self._starting.acquire(timeout=PAUSE_TIMEOUT):
            return False
        self._starting.release()
        if _other_threads(self._native_id) != 0:
            return False
        with self._lock:
            if self._phase != ACCEPTING or not self._running.locked():
                return False
            self._phase = PAUSING
        knock = self._knock()
        if knock is None:
            with self._lock:
                if self._phase == PAUSING:
                    self._phase = ACCEPTING  # still blocked in accept(): carry on
                    return False
        try:
            return self._wait_gone()
        finally:
            if knock is not None:
                knock.close()

    def _knock(self) -> Any:
        """Connect to ourselves: accept() returns, and the thread sees it is to end.

        The knocking socket stays open until the thread has closed its end, so
        that the TIME_WAIT state falls on our listening port's side.
        """
        family = self._sock.family
        address: tuple[Any, ...] = (self._connect_host(), self.port)
        if family == _socket.AF_INET6:
            address = (*address, 0, 0)
        try:
            knock = _socket.socket(family, _socket.SOCK_STREAM)
        except OSError:
            return None
        try:
            knock.settimeout(0.1)
            knock.connect(address)
            with self._lock:
                self._wakeup_peer = knock.getsockname()
        except OSError:
            knock.close()
            return None
        return knock

    def _wait_gone(self) -> bool:
        deadline = time.monotonic() + PAUSE_TIMEOUT
        if not self._running.acquire(timeout=PAUSE_TIMEOUT):
            return False
        self._running.release()
        # Its Python part is over (we hold the GIL again); the OS thread ends
        # within microseconds: poll, yielding the CPU to it meanwhile.
        yield_cpu = getattr(os, "sched_yield", None) or (lambda: _native.sleep(0))
        while not _native.os_thread_gone(self._native_id):
            if time.monotonic() > deadline:
                return False
            yield_cpu()
        with self._lock:
            return self._phase == PAUSED

    def resume_after_fork(self, *, later: Callable[[Callable[[], None]], bool] | None) -> None:
        """In the parent after ``fork()``: the idle thread comes back.

        ``later`` schedules the restart in the main thread once it runs Python
        again (3.13+ counts threads only after the after-fork hooks have run);
        when it cannot, the thread is started now.
        """
        with self._lock:
            if self._phase == PAUSING:
                self._phase = ACCEPTING  # it never left: it serves the knock, harmlessly
                return
            if self._phase != PAUSED:
                return
        if later is not None and later(self.restart):
            return
        self.restart()

    def restart(self) -> None:
        """Start the idle thread again after a pause (idempotent)."""
        with self._lock:
            if self._phase != PAUSED:
                return
            self._phase = ACCEPTING
        try:
            self._spawn()
        except Exception as exc:  # noqa: BLE001 - the host's fork must go on
            from .. import _log

            _log.warn(f"control plane not restarted after fork: {type(exc).__name__}: {exc}")

    # -- the end -----------------------------------------------------------------

    def close(self) -> None:
        """Stop serving and release the port. Safe from any thread, idempotent."""
        with self._lock:
            phase = self._phase
            if phase == CLOSED:
                return
            self._phase = CLOSED
            loop, pending, self._pending = self._loop, self._pending, None
        if pending is not None:
            fds.release(pending[0], pending[2])
        if loop is not None:
            loop.stop()
        ours = phase != LOST and fds.is_ours(self._sock, self._ident)
        if ours:
            try:
                # Wakes a thread blocked in accept() (close() alone does not on Linux).
                self._sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
        # Wait (bounded) for a serving thread we could wake, unless we are it.
        if (
            (ours or loop is not None)
            and _native.get_ident() != self._thread_ident
            and self._running.acquire(timeout=CLOSE_TIMEOUT)
        ):
            self._running.release()
        fds.release(self._sock, self._ident)

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copies of the parent's sockets, touch nothing else."""
        with self._lock:
            self._phase = CLOSED
            loop, pending, self._pending = self._loop, self._pending, None
        if loop is not None:
            loop.close_fds_after_fork()
        if pending is not None:
            fds.release(pending[0], pending[2])
        fds.release(self._sock, self._ident)


def _other_threads(ours: int) -> int:
    """OS threads besides the calling one and ours (0 when it cannot be told)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    return len(set(tasks) - {str(_thread.get_native_id()), str(ours)})
