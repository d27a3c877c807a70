"""The debug listener, ours from its first byte: who may attach, and when.

debugpy's DAP port has no authentication, and whoever speaks DAP to it runs
code in this process (``evaluate``, a logpoint's expression). So we never let
pydevd open that port itself: :func:`open_listener` binds and listens on a
socket of our own, and pydevd is handed it (``_pydevd.hand_listener``) in
place of the one it would create. Every connection pydevd accepts then goes
through :meth:`GatedListener.accept`, the very first one included: there is no
moment between ``listen()`` and the check in which another process could get
in (a gate put around pydevd's socket *after* ``listen()`` came too late for
whoever connected first, and an attacker polling ``/proc/net/tcp`` for the new
port won that race every time).

A connection is kept only when

* the client is waking or awake (the lifecycle's policy says so): while
  asleep, and after a wake that failed, nothing attaches, not another user,
  not a port scanner, not even a daemon of ours re-attaching on its own;
* and the peer is this process's user, root, or the daemon account the user
  named (``DETRIX_DAEMON_USER``), asked of the kernel for exactly this
  connection; a peer whose owner cannot be determined is refused. A peer
  beyond loopback is accepted only when the user opened the debugger beyond
  loopback (``DETRIX_DEBUG_HOST``, which needs a token) and the peer is the
  daemon the current wake registered with.

Everything else is closed at once, with an audit line.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from . import _log, _native, netowner
from .config import is_ipv4_literal, is_loopback
from .errors import DebuggerError

__all__ = ["AttachPolicy", "GatedListener", "addresses_of", "open_listener", "set_policy"]


class AttachPolicy:
    """Who may attach now; the lifecycle keeps the process's one up to date."""

    def __init__(
        self,
        expected: Callable[[], bool],
        *,
        extra_uids: frozenset[int] = frozenset(),
        remote_daemon: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        #: Is a wake in progress or done (else nobody may attach)?
        self.expected = expected
        #: Accounts besides ours and root's (the daemon account the user named).
        self.extra_uids = extra_uids
        #: Addresses of the current wake's daemon, for a debugger opened beyond loopback.
        self.remote_daemon = remote_daemon

    def verdict(self, conn: Any, peer: Any) -> tuple[str | None, str]:
        """(``None`` to keep the connection, else why it is refused; who the peer is)."""
        if not self.expected():
            return "the client is not awake", "?"
        address = _plain(str(peer[0]) if isinstance(peer, tuple) and peer else str(peer))
        if not netowner.SUPPORTED:
            # No way to ask who owns a socket here (SECURITY.md says so): loopback
            # peers are taken on trust, remote ones must be the daemon.
            if is_loopback(address):
                return None, "?"
            return self._remote(address)
        try:
            uid = netowner.peer_uid(peer, conn.getsockname())
        except OSError:
            uid = None
        if uid is not None:
            if uid in (os.geteuid(), 0) or uid in self.extra_uids:
                return None, f"uid {uid}"
            return f"uid {uid} is not this process's user", f"uid {uid}"
        if not is_loopback(address) and _not_on_this_host(address):
            # From another host or container: no local user to ask about.
            return self._remote(address)
        # A live local peer is always found; an unknown one closed its socket
        # already (or wrote and left): nothing proves it is us, so refuse.
        return "the peer's owner cannot be determined", "?"

    def _remote(self, address: str) -> tuple[str | None, str]:
        if address in {_plain(a) for a in self.remote_daemon()}:
            return None, "the daemon"
        return f"{address} is not an address of this wake's daemon", "?"


def _plain(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _not_on_this_host(host: str) -> bool:
    """True when ``host`` is no address of this network namespace: binding to it fails.

    Fails closed: anything unexpected (or a host that allows binding to foreign
    addresses) counts as local, whose owner must then be found.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with _native.socket_class()(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        return exc.errno == errno.EADDRNOTAVAIL
    return False


def addresses_of(url: str) -> frozenset[str]:
    """The addresses a daemon URL's host name resolves to now (asked at each remote attach)."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname
        if not host:
            return frozenset()
        infos = _native.original("socket", "getaddrinfo")(host, None, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)


#: Until a client sets its own: nobody attaches.
_policy = AttachPolicy(lambda: False)


def set_policy(policy: AttachPolicy) -> None:
    global _policy
    _policy = policy


class GatedListener:
    """Our listening socket, handed to pydevd; only ``accept`` and ``listen`` differ."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]

    def listen(self, backlog: int = 0) -> None:
        """pydevd calls this before every accept: we listen already, with our backlog."""

    def accept(self) -> tuple[Any, Any]:
        while True:
            conn, peer = _accept(self._sock)
            try:
                why, who = _policy.verdict(conn, peer)
            except Exception as exc:  # noqa: BLE001 - fail closed
                why, who = f"gate error {type(exc).__name__}", "?"
            if why is None:
                _log.audit("debug-attach peer=%s %s accepted", _format(peer), who)
                return conn, peer
            # Said before the close: whoever sees the connection end can read why.
            _log.audit("debug-attach peer=%s refused: %s", _format(peer), why)
            try:
                conn.close()
            except OSError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _accept(listener: socket.socket) -> tuple[socket.socket, Any]:
    """``listener.accept()``, made with the class of ``_native``: the standard library's
    ``accept`` builds its socket from the ``socket`` module's class, gevent's if patched."""
    fd, peer = listener._accept()  # type: ignore[attr-defined]
    cls = _native.socket_class()
    conn: socket.socket = cls(listener.family, listener.type, listener.proto, fileno=fd)
    if socket.getdefaulttimeout() is None and listener.gettimeout():  # as socket.accept()
        conn.setblocking(True)
    return conn, peer


def _format(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def open_listener(host: str, port: int) -> GatedListener:
    """Bind and listen on ``host:port`` (0 = any free port); a clear error at once if not.

    pydevd's listener is IPv4 only and resolves nothing, so ``host`` must be
    an IPv4 address written out (``127.0.0.1``): a name or an IPv6 address
    made ``debugpy.listen()`` wait forever for a socket that never came.
    """
    if not is_ipv4_literal(host):
        raise DebuggerError(
            f"the debugger can listen only on an IPv4 address such as 127.0.0.1, not {host!r}: "
            "set DETRIX_DEBUG_HOST accordingly (or leave it unset)"
        )
    # The standard library's socket even under gevent: pydevd's threads accept on it
    # and use what it accepts; a gevent socket would wait in a hub of theirs.
    sock = _native.socket_class()(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As pydevd does: a fixed port can be reused at once after a restart. On
        # Linux this never lets another socket bind over a listening one.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DebuggerError(
                f"the debug port {port} on {host} is taken by another process; choose another "
                "DETRIX_DEBUG_PORT or leave it at 0 (any free port)"
            ) from None
        raise DebuggerError(
            f"the debugger cannot listen on {host}:{port} ({exc.strerror or exc}); check "
            "DETRIX_DEBUG_HOST names an address of this machine"
        ) from None
    return GatedListener(sock)
