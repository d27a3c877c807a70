"""Who owns a TCP socket on this machine, asked of the kernel, exactly.

Three questions are asked of it, each about one socket:

* :func:`peer_uid`: the owner of the other end of a connection we accepted
  (the control plane's and the debug gate's "is this caller us?");
* :func:`server_end`: the owner of the server end of a connection we opened
  (the daemon client's and the CLI's "is this server ours?");
* :func:`listener`: the listening socket a connect to ``host:port`` would
  reach, and :func:`process_holds`: whether a process holds a given socket.

On Linux the kernel is asked with ``sock_diag`` over netlink (what ``ss``
uses: one hash lookup, however many sockets the host has); where netlink is
not available (some sandboxes), ``/proc/net/tcp`` and ``/proc/net/tcp6`` are
read instead. Elsewhere every answer is "unknown" (``None``), which every
caller treats as "refuse" unless it documents otherwise.

**Exactness.** The kernel's lookup of one socket falls back to a *listening*
socket when no connection matches the 4-tuple asked for. Another user can
exploit that: bind ``127.0.0.2:PORT`` beside our wildcard listener, connect,
send a request and reset; the lookup of the vanished socket then names our
own listener, and the caller passes for us. So an answer counts only when
its state is the one asked for (ESTABLISHED or LISTEN) and the socket the
kernel describes has exactly the addresses and ports asked for (IPv4-mapped
and plain IPv4 are the same address). A socket no process holds (inode 0:
not yet accepted, or already closed by its owner) proves nothing about its
owner: old kernels report such sockets as uid 0.
"""

from __future__ import annotations

import _socket as socket  # the C module: ``socket`` costs a megabyte in a sleeping process
import errno
import os
import struct
import sys
import time

from . import _native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SUPPORTED",
    "TcpSocket",
    "describe_uid",
    "find_established",
    "listener",
    "listener_uid",
    "peer_uid",
    "process_holds",
    "server_end",
]

#: Whether this platform can answer at all (elsewhere: always "unknown").
SUPPORTED = sys.platform.startswith("linux")

TCP_ESTABLISHED = 1
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_LISTEN = 10
#: A client's socket while its request is being read: connected, or half-closed by a
#: client that shut down its sending side after the request (``nc -N``, some
#: HTTP/1.0 clients). It still has an owner; once closed it has inode 0.
_CLIENT_STATES = (TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2)

_V4_PREFIX = bytes(10) + b"\xff\xff"
_ANY_V6 = bytes(16)
_ANY_V4 = _V4_PREFIX + bytes(4)


class TcpSocket:
    """One TCP socket as the kernel describes it.

    A plain slotted class, not a NamedTuple: ``typing`` is megabytes that the
    control plane's status path (which asks :func:`peer_uid`) would keep loaded.
    """

    __slots__ = ("inode", "local", "remote", "state", "uid")

    def __init__(
        self, state: int, local: tuple[str, int], remote: tuple[str, int], uid: int, inode: int
    ) -> None:
        self.state = state
        #: (address, port) of this socket's own end; IPv4 addresses in plain form.
        self.local = local
        self.remote = remote
        self.uid = uid
        #: 0 when no process holds the socket (not yet accepted, or closed by its owner).
        self.inode = inode

    def without_owner(self) -> TcpSocket:
        return TcpSocket(self.state, self.local, self.remote, self.uid, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TcpSocket):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TcpSocket(state={self.state}, local={self.local}, remote={self.remote}, "
            f"uid={self.uid}, inode={self.inode})"
        )


# -- the public questions ----------------------------------------------------------


def peer_uid(peer: Any, local_addr: Any) -> int | None:
    """The uid owning the other end of a loopback TCP connection we accepted.

    ``peer`` is what ``accept()`` returned as the address and ``local_addr``
    is our end (``conn.getsockname()``). The answer is the owner of the
    connected socket (ESTABLISHED, or half-closed by its owner after sending:
    FIN_WAIT1/2) whose local end is ``peer`` and whose remote end is
    ``local_addr``, exactly, and that a process still holds; anything else (no
    such socket, a listener, a socket in TIME_WAIT or closed by its owner) is
    ``None``: unknown, which callers treat as "refuse".
    """
    if not SUPPORTED:
        return None
    try:
        found = find_established(_address(peer), _address(local_addr), states=_CLIENT_STATES)
    except (OSError, ValueError, TypeError, struct.error):
        return None
    if found is None or not found.inode:
        return None
    return found.uid


def find_established(
    local: tuple[str, int],
    remote: tuple[str, int],
    *,
    states: tuple[int, ...] = (TCP_ESTABLISHED,),
) -> TcpSocket | None:
    """The connected socket whose own end is ``local`` and other end ``remote``, or None.

    Only a socket in one of ``states`` (ESTABLISHED unless told otherwise) counts.
    """
    if not SUPPORTED:
        return None
    want_local, want_remote = _endpoint(*local), _endpoint(*remote)
    try:
        found = _diag_lookup(local, remote)
    except _Unavailable:
        return _proc_established(want_local, want_remote, states)
    if found is None or found.state not in states:
        return None
    if _endpoint(*found.local) != want_local or _endpoint(*found.remote) != want_remote:
        return None
    return found


def listener(host: str, port: int) -> TcpSocket | None:
    """The LISTEN socket a TCP connect to ``host:port`` would reach, or None.

    ``host`` is a literal address. A socket bound to exactly that address wins
    over a wildcard one (``0.0.0.0``, ``::``), as in the kernel. None when
    nothing listens there, when it cannot be determined, and (from
    ``/proc``) when several sockets of different owners could be meant.
    """
    if not SUPPORTED:
        return None
    try:
        want = _endpoint(host, port)
        v6 = not want[0].startswith(_V4_PREFIX)
        wildcard = ("::", 0) if v6 else ("0.0.0.0", 0)
        try:
            found = _diag_lookup((_plain(want[0]), port), wildcard)
        except _Unavailable:
            return _proc_listener(want)
    except (OSError, ValueError, TypeError, struct.error):
        return None
    if found is None or found.state != TCP_LISTEN or found.local[1] != port:
        return None
    address = _endpoint(*found.local)[0]
    if address not in (want[0], _ANY_V6, _ANY_V4):
        return None
    return found


def listener_uid(host: str, port: int) -> int | None:
    """The uid owning the listener :func:`listener` finds, or None."""
    found = listener(host, port)
    return None if found is None else found.uid


def server_end(sock: Any, *, settle: float = 0.05) -> TcpSocket | None:
    """The server end of our connected TCP socket ``sock``, when it is on this host.

    That is the socket its server accepted, or, while the server has not
    accepted it yet, the listener it waits on (whose owner is the server's).
    None when the server end is not on this host (a remote server) or cannot
    be determined. The last packet of the handshake may still be on its way
    through the loopback device when ``connect`` returns: for up to
    ``settle`` seconds the lookup is repeated before concluding.
    """
    if not SUPPORTED:
        return None
    try:
        ours = _address(sock.getsockname())
        theirs = _address(sock.getpeername())
    except (OSError, ValueError, TypeError):
        return None
    deadline = time.monotonic() + settle
    pause = 0.0005
    while True:
        try:
            accepted = find_established(theirs, ours)
            if accepted is not None and accepted.inode:
                return accepted
            waiting_on = listener(*theirs)
        except (OSError, ValueError, TypeError, struct.error):
            return None
        if accepted is not None:
            return waiting_on if waiting_on is not None and waiting_on.inode else None
        if waiting_on is None or time.monotonic() >= deadline:
            # No connection and no listener here: the server is elsewhere.
            return None
        _native.sleep(pause)
        pause = min(pause * 2, 0.01)


def process_holds(pid: int, inode: int) -> bool | None:
    """Whether process ``pid`` has socket ``inode`` among its descriptors.

    None when that cannot be read (``/proc/<pid>/fd`` of another user or of a
    non-dumpable process, or no ``/proc``).
    """
    if not SUPPORTED or inode <= 0 or pid <= 0:
        return None
    target = f"socket:[{inode}]"
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False  # the process is gone
    except OSError:
        return None
    for name in names:
        try:
            if os.readlink(os.path.join(directory, name)) == target:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def describe_uid(uid: int) -> str:
    """``uid 1001 (alice)``, or ``uid 1001`` when the name cannot be found."""
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError, OverflowError):
        return f"uid {uid}"


# -- addresses ---------------------------------------------------------------------


def _address(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    raise TypeError(f"not a socket address: {value!r}")


def _packed16(host: str) -> bytes:
    """Any literal address as 16 bytes; IPv4 as IPv4-mapped IPv6."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)
    return _V4_PREFIX + socket.inet_pton(socket.AF_INET, host)


def _endpoint(host: str, port: int) -> tuple[bytes, int]:
    return _packed16(host), int(port)


def _plain(packed: bytes) -> str:
    """The text form, IPv4(-mapped) addresses as plain IPv4."""
    if packed.startswith(_V4_PREFIX):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


# -- sock_diag over netlink ----------------------------------------------------------


class _Unavailable(Exception):
    """This kernel or sandbox does not answer sock_diag requests: read /proc instead."""


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF


def _diag_lookup(local: tuple[str, int], remote: tuple[str, int]) -> TcpSocket | None:
    """The kernel's lookup of one socket by its 4-tuple (it may answer a listener).

    ``struct inet_diag_req_v2`` with an exact ``struct inet_diag_sockid``
    (linux/inet_diag.h). Both ends IPv4 or IPv4-mapped: asked as IPv4 (the
    kernel would do the same), which also finds dual-stack IPv6 sockets.
    """
    local_packed, remote_packed = _packed16(local[0]), _packed16(remote[0])
    v4 = local_packed.startswith(_V4_PREFIX) and remote_packed.startswith(_V4_PREFIX)
    if v4:
        src, dst, family = local_packed[12:] + bytes(12), remote_packed[12:] + bytes(12), 2
    else:
        src, dst, family = local_packed, remote_packed, 10
    sockid = (
        struct.pack("!HH", local[1], remote[1])
        + src
        + dst
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )
    af = socket.AF_INET if family == 2 else socket.AF_INET6
    body = struct.pack("=BBBBI", af, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    message = struct.pack("=IHHII", 16 + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        raise _Unavailable from None
    try:
        nl.settimeout(1.0)
        nl.sendto(message + body, (0, 0))
        reply = nl.recv(8192)
    except OSError:
        raise _Unavailable from None
    finally:
        nl.close()
    if len(reply) < 20:
        raise _Unavailable
    length, kind = struct.unpack_from("=IH", reply)
    if kind == _NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, 16)
        if error in (-errno.ENOENT, 0):
            return None  # no such socket (any more)
        raise _Unavailable  # EPERM, EINVAL...: let /proc decide
    if kind != _SOCK_DIAG_BY_FAMILY or length < 16 + 72 or len(reply) < 16 + 72:
        return None
    return _parse_diag_msg(reply, 16)


def _parse_diag_msg(data: bytes, at: int) -> TcpSocket:
    """``struct inet_diag_msg``: family, state, timer, retrans, the sockid, then uid, inode."""
    family, state = struct.unpack_from("=BB", data, at)
    sport, dport = struct.unpack_from("!HH", data, at + 4)
    src, dst = data[at + 8 : at + 24], data[at + 24 : at + 40]
    if family == socket.AF_INET:
        src, dst = _V4_PREFIX + src[:4], _V4_PREFIX + dst[:4]
    uid, inode = struct.unpack_from("=II", data, at + 64)
    return TcpSocket(state, (_plain(src), sport), (_plain(dst), dport), uid, inode)


# -- /proc/net/tcp{,6} ------------------------------------------------------------------


def _proc_rows() -> list[TcpSocket]:
    rows: list[TcpSocket] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        for line in data.splitlines()[1:]:
            fields = line.split()
            try:
                local, remote = _proc_endpoint(fields[1]), _proc_endpoint(fields[2])
                rows.append(
                    TcpSocket(
                        int(fields[3], 16),
                        (_plain(local[0]), local[1]),
                        (_plain(remote[0]), remote[1]),
                        int(fields[7]),
                        int(fields[9]),
                    )
                )
            except (IndexError, ValueError):
                continue
    return rows


def _proc_endpoint(text: bytes) -> tuple[bytes, int]:
    """``0100007F:1F90`` (words in host byte order) as 16 bytes and a port."""
    address, _, port = text.partition(b":")
    words = [int(address[i : i + 8], 16) for i in range(0, len(address), 8)]
    packed = b"".join(w.to_bytes(4, sys.byteorder) for w in words)
    if len(packed) == 4:
        packed = _V4_PREFIX + packed
    elif len(packed) != 16:
        raise ValueError("bad address")
    return packed, int(port, 16)


def _proc_established(
    want_local: tuple[bytes, int], want_remote: tuple[bytes, int], states: tuple[int, ...]
) -> TcpSocket | None:
    for row in _proc_rows():
        if (
            row.state in states
            and _endpoint(*row.local) == want_local
            and _endpoint(*row.remote) == want_remote
        ):
            return row
    return None


def _proc_listener(want: tuple[bytes, int]) -> TcpSocket | None:
    """The best listener for ``want``: exact address, else wildcard; None if ambiguous."""
    address, port = want
    v4 = address.startswith(_V4_PREFIX)
    levels: list[list[TcpSocket]] = [[], [], []]
    for row in _proc_rows():
        if row.state != TCP_LISTEN or row.local[1] != port:
            continue
        bound = _endpoint(*row.local)[0]
        if bound == address:
            levels[0].append(row)
        elif bound == (_ANY_V4 if v4 else _ANY_V6):
            levels[1].append(row)
        elif v4 and bound == _ANY_V6:
            levels[2].append(row)  # dual-stack, unless IPV6_V6ONLY (which /proc does not say)
    for rows in levels:
        if not rows:
            continue
        if len({row.uid for row in rows}) != 1:
            return None
        return rows[0] if len(rows) == 1 else rows[0].without_owner()
    return None
