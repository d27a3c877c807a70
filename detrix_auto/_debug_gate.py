"""A gate in front of debugpy's listening socket: who may attach, and when.

debugpy's DAP port has no authentication and, once opened, cannot be closed.
Left alone, that means any local process could attach (code execution) at any
time after the first wake, including while the client says it is asleep, and
a stray connection (a port scanner, a health probe) silently takes over the
daemon's session. With the in-process adapter the listening socket lives in
this process, so we wrap it: every accepted connection is kept only when

* the client is waking or awake (``policy()`` says so): while asleep nobody
  attaches, not even a restarted daemon re-attaching on its own, which keeps
  the daemon's view consistent with ours; and
* on Linux, the peer socket belongs to our own user or to root (the same
  ``/proc/net/tcp`` lookup as the control plane uses); or, when the peer is
  not on this host at all (no socket of this network namespace has its
  address: a daemon in another container, reaching a debugger that
  ``DETRIX_DEBUG_HOST`` bound beyond loopback), its address is one the
  daemon's host name resolves to. A local peer whose owner cannot be found is
  refused, as before: another user could have closed its socket already.

Refused connections are closed at once and leave an audit line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from . import _log

__all__ = ["GatedServerSocket", "install", "set_daemon_url", "set_policy"]

_policy: Callable[[], bool] = lambda: True  # noqa: E731 - replaced by the lifecycle
_daemon_url: Callable[[], str] = lambda: ""  # noqa: E731 - replaced by the lifecycle


def set_policy(policy: Callable[[], bool]) -> None:
    """Tell the gate whether an attach is expected now (the client is waking or awake)."""
    global _policy
    _policy = policy


def set_daemon_url(source: Callable[[], str]) -> None:
    """Tell the gate which daemon the client registers with (a remote peer must be it)."""
    global _daemon_url
    _daemon_url = source


def _not_on_this_host(host: str) -> bool:
    """True when ``host`` is no address of this network namespace: binding to it fails.

    Fails closed: anything unexpected (or a host that allows binding to foreign
    addresses) counts as local, whose owner must then be found.
    """
    import errno
    import socket

    from .config import is_loopback

    if is_loopback(host):
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        return exc.errno == errno.EADDRNOTAVAIL
    return False


def _daemon_addresses() -> set[str]:
    """The addresses the daemon's host name resolves to now (asked at each remote attach)."""
    import socket
    from urllib.parse import urlsplit

    try:
        host = urlsplit(_daemon_url()).hostname
        if not host:
            return set()
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in infos}


def _plain(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _peer_allowed(conn: Any, addr: Any) -> tuple[bool, str]:
    if not _policy():
        return False, "the client is asleep"
    if not sys.platform.startswith("linux"):
        return True, ""
    from .control.auth import peer_uid

    try:
        uid = peer_uid(addr, conn.getsockname())
    except OSError:
        uid = None
    if uid is None:
        host = _plain(str(addr[0])) if isinstance(addr, tuple) and addr else ""
        if host and _not_on_this_host(host):
            # From another host or container: no local user to ask about. Only
            # the daemon we register with may attach (it connects from its address).
            if host in {_plain(a) for a in _daemon_addresses()}:
                return True, ""
            return False, f"{host} is not an address of the daemon ({_daemon_url()})"
        # A live local peer is always found; an unknown one closed its socket
        # already (or wrote and left): nothing proves it is us, so refuse.
        return False, "the peer's owner cannot be determined"
    if uid in (os.geteuid(), 0):
        return True, ""
    return False, f"uid {uid} is not this process's user"


class GatedServerSocket:
    """Stands in for pydevd's server socket; only ``accept`` behaves differently."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def accept(self) -> tuple[Any, Any]:
        while True:
            conn, addr = self._sock.accept()
            try:
                allowed, why = _peer_allowed(conn, addr)
            except Exception as exc:  # noqa: BLE001 - fail closed
                allowed, why = False, f"gate error {type(exc).__name__}"
            if allowed:
                return conn, addr
            try:
                conn.close()
            except OSError:
                pass
            _log.audit("debug-attach peer=%s refused: %s", _format(addr), why)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _format(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def install() -> bool:
    """Wrap pydevd's listening socket; True when the gate is in place.

    Called right after ``debugpy.listen(..., in_process_debug_adapter=True)``.
    pydevd's accept loop re-reads its ``_server_socket`` attribute before each
    ``accept()``, so the gate applies from the second connection on; the first
    is the daemon's own attach of the wake in progress.
    """
    try:
        from _pydevd_bundle.pydevd_constants import get_global_debugger

        py_db = get_global_debugger()
        thread: Any = getattr(py_db, "_waiting_for_connection_thread", None)
        sock = getattr(thread, "_server_socket", None)
        if sock is None or isinstance(sock, GatedServerSocket):
            return isinstance(sock, GatedServerSocket)
        thread._server_socket = GatedServerSocket(sock)
        return True
    except Exception as exc:  # noqa: BLE001 - a debugpy without this shape: no gate
        _log.debug("debug gate not installed: %s", exc)
        return False
