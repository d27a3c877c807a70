"""The sockets every daemon call runs on: a deadline per call, and a daemon that proves who it is.

Shared by the two transports of :mod:`detrix_auto.daemon` (``http.client`` for
``http://``, urllib3 for ``https://``); imports neither.

**A deadline for the whole call.** A read timeout applies to each ``recv``
separately, so a daemon that trickles its answer a byte at a time would hold a
wake (and the lock sleep waits on) for as long as it likes. Here every send and
receive of a call first checks the call's deadline (:data:`call`, per thread)
and waits at most until it.

**The daemon proves who it is before it gets anything.** Port 8090 is an
unprivileged port: another local user can bind it first and wait for our
``Authorization: Bearer <token>`` and our debug port. So every connection, once
connected and before its first byte is sent, is checked (:func:`checked`): when
its server end is on this host (always so for loopback), that socket must
belong to our own user, to root, or to the one account ``DETRIX_DAEMON_USER``
names (``netowner.server_end``). Otherwise the call fails with a
:class:`DaemonError` naming the owner, and nothing was sent. Checking the very
connection that will carry the token leaves no window between a check and a
connect. A server elsewhere on the network is not checked.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _native
from .config import is_loopback
from .errors import DaemonError

#: The current call of this thread: ``deadline`` (monotonic seconds) and
#: ``daemon_uid`` (the extra account trusted to hold the daemon's port).
call = threading.local()


def verify_server(sock: socket.socket) -> None:
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
    extra: int | None = getattr(call, "daemon_uid", None)
    if found.uid in (os.geteuid(), 0) or found.uid == extra:
        return
    who = netowner.describe_uid(found.uid)
    name = who.partition("(")[2].rstrip(")") or str(found.uid)
    raise DaemonError(
        f"port {port} on {host} is held by {who}, not by you; refusing to send it the token "
        "or the debug port. Stop that process or point DETRIX_DAEMON_URL at your own daemon; "
        f"if it is a daemon you trust (a system service), set DETRIX_DAEMON_USER={name}"
    )


def checked(sock: socket.socket) -> None:
    """:func:`verify_server`, closing ``sock`` when it fails."""
    try:
        verify_server(sock)
    except BaseException:
        sock.close()
        raise


def arm(sock: socket.socket) -> None:
    """Before each send or receive: wait at most until the current call's deadline."""
    deadline: float | None = getattr(call, "deadline", None)
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)


# The standard library's socket class even where gevent patched ``socket``: the
# daemon client runs on our own OS threads, which block for real (``_native``).
if TYPE_CHECKING:
    _Socket = socket.socket
else:
    _Socket = _native.socket_class()


class DeadlineCalls:
    """Mixed into a socket class: every send and receive first :func:`arm` s it."""

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        arm(self)  # type: ignore[arg-type]
        return super().recv(*args, **kwargs)  # type: ignore[misc, no-any-return]

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        arm(self)  # type: ignore[arg-type]
        return super().recv_into(*args, **kwargs)  # type: ignore[misc, no-any-return]

    def send(self, *args: Any, **kwargs: Any) -> int:
        arm(self)  # type: ignore[arg-type]
        return super().send(*args, **kwargs)  # type: ignore[misc, no-any-return]

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        arm(self)  # type: ignore[arg-type]
        super().sendall(*args, **kwargs)  # type: ignore[misc]


class DeadlineSocket(DeadlineCalls, _Socket):
    """A plain socket whose every send and receive honours the call's deadline."""


def deadline_socket(sock: socket.socket) -> socket.socket:
    """``sock``'s descriptor in a :class:`DeadlineSocket` (``sock`` is detached)."""
    timeout = sock.gettimeout()
    wrapped = DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.settimeout(timeout)
    return wrapped


def connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """A connection to ``(host, port)``, on the unpatched socket where gevent patched it.

    gevent's socket would run a gevent hub in the calling thread (one of ours),
    left behind when it ends; its resolver would start a thread pool there.
    Raises ``OSError`` (``socket.gaierror``, ``TimeoutError`` among them).
    """
    if _native.gevent_patched("socket"):
        sock: socket.socket = _native.create_connection((host, port), timeout)
        return sock
    return socket.create_connection((host.strip("[]"), port), timeout)
