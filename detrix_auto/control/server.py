"""The control plane's listening socket, cheap enough for process start-up.

Opening it costs a ``socket()``, ``bind()``, ``listen()`` and one thread that
blocks in ``accept()``, using the C modules ``_socket`` and ``_thread``
directly: the ``socket`` and ``threading`` modules cost several milliseconds
to import, more than everything else we do at start-up. Nothing else is
imported until the first connection arrives: only then does the thread load
the event loop, the HTTP parser and the router (``control/loop.py``), so an
application that nobody looks at never pays for them, and the host's own
imports do not compete with ours while it starts.
"""

from __future__ import annotations

import _socket
import _thread
import os

from ..errors import ControlPlaneError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["ControlServer"]


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
        self._loop: Any = None
        self._closed = False
        self._pid = os.getpid()
        self._sock = self._bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        # Held by the serving thread while it runs: close() waits on it.
        self._running = _thread.allocate_lock()
        self._thread_ident = 0

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
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host in ("::", "::0"):
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._running.acquire()
        try:
            _thread.start_new_thread(self._serve, ())
        except BaseException:
            self._running.release()
            raise

    def _serve(self) -> None:
        self._thread_ident = _thread.get_ident()
        try:
            self._serve_until_closed()
        except Exception as exc:  # noqa: BLE001 - a dying control plane says so once
            from .. import _log

            _log.warn(f"control plane stopped: {type(exc).__name__}: {exc}")
        finally:
            self._running.release()

    def _serve_until_closed(self) -> None:
        try:
            fd, peer = self._sock._accept()
        except OSError:
            return  # closed before anyone connected
        from .._mainthread import ensure_threading

        ensure_threading()
        import socket

        first = socket.socket(fileno=fd)
        if self._closed:
            first.close()
            return
        from .loop import EventLoop

        listener = socket.socket(fileno=self._sock.detach())
        self._sock = listener
        loop = EventLoop(listener, self._make_router())
        self._loop = loop
        if self._closed:
            loop.stop()
        loop.run((first, peer))

    def close(self) -> None:
        """Stop serving and release the port. Safe from any thread, idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None:
            loop.stop()
        try:
            # Wakes a thread blocked in accept() (close() alone does not on Linux).
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        if loop is None:
            try:
                self._sock.close()
            except OSError:
                pass
        # Wait (bounded) for the serving thread, unless we are it.
        if _thread.get_ident() != self._thread_ident and self._running.acquire(timeout=2.0):
            self._running.release()

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copies of the parent's sockets, touch nothing else."""
        self._closed = True
        loop = self._loop
        if loop is not None:
            loop.close_fds_after_fork()
        try:
            self._sock.close()
        except OSError:
            pass
