"""Who may use the control plane: the caller, classified once per connection.

A caller is *local* (trusted without a token) only when every one of these
holds, because each alone is bypassable (SECURITY.md has the threat model):

* the TCP peer is a loopback address (parsed, IPv4-mapped included);
* no proxy header (``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``, ``Via``):
  a same-host reverse proxy turns remote callers into loopback ones;
* the ``Host`` header, when present, names loopback: DNS rebinding makes a
  browser send ``Host: attacker.example`` to 127.0.0.1;
* no ``Origin`` or ``Sec-Fetch-*`` header: a browser sent it (CSRF);
* on Linux, the peer socket belongs to our own uid or to root, asked of the
  kernel (``sock_diag``, else ``/proc/net/tcp{,6}``): another local user is
  not us. A socket its owner has already closed is reported with uid 0 and
  inode 0 (the kernel forgets the owner), so it proves nothing and is never
  taken for root.

Everyone else needs ``Authorization: Bearer <token>``, compared in constant
time. ``DETRIX_REQUIRE_TOKEN=1`` makes the token mandatory for every caller.
"""

from __future__ import annotations

import _socket as socket  # the C module: ``socket`` costs a megabyte per sleeping process
import errno
import os
import struct
import sys

from ..config import is_loopback, split_host_port

try:  # what hmac.compare_digest is, without loading hmac's OpenSSL (3.5 MiB)
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover - not CPython
    from hmac import compare_digest  # type: ignore[no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .http import Request

__all__ = ["Caller", "classify", "peer_uid"]

PROXY_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
    "forwarded-for",
    "x-forwarded",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-proxyuser-ip",
)
#: Any header starting with one of these also marks a proxy (``X-Forwarded-Port``...).
PROXY_PREFIXES = ("x-forwarded-",)
BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user")
#: Any header starting with one of these was written by a browser.
BROWSER_PREFIXES = ("sec-fetch-",)


class Caller:
    """What we know about whoever sent a request (read-only once made).

    A plain class rather than a frozen dataclass: ``dataclasses`` loads
    ``inspect``, megabytes that a sleeping process would keep.
    """

    __slots__ = ("address", "local", "port", "reason", "token_bad", "token_ok", "uid")

    address: str
    port: int
    uid: int | None
    #: Presented the configured token.
    token_ok: bool
    #: Presented a token that is wrong (always refused).
    token_bad: bool
    #: Verified as a same-user local process (no token needed).
    local: bool
    #: Why the caller is not local, for the 401 message.
    reason: str

    def __init__(
        self,
        *,
        address: str,
        port: int,
        uid: int | None,
        token_ok: bool,
        token_bad: bool,
        local: bool,
        reason: str,
    ) -> None:
        for name, value in (
            ("address", address),
            ("port", port),
            ("uid", uid),
            ("token_ok", token_ok),
            ("token_bad", token_bad),
            ("local", local),
            ("reason", reason),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in _CALLER_FIELDS)
        return f"Caller({fields})"

    @property
    def authorized(self) -> bool:
        return self.token_ok or (self.local and not self.token_bad)

    @property
    def how(self) -> str:
        return "token" if self.token_ok else ("local" if self.local else "none")


_CALLER_FIELDS = ("address", "port", "uid", "token_ok", "token_bad", "local", "reason")


def classify(
    request: Request,
    peer: Any,
    local_addr: Any,
    token: str | None,
    *,
    require_token: bool,
    conn_cache: dict[str, Any] | None = None,
) -> Caller:
    address, port = _peer_address(peer)
    presented = _bearer(request.header("authorization"))
    token_ok = bool(presented and token and compare_digest(presented.encode(), token.encode()))
    token_bad = presented is not None and not token_ok
    uid: int | None = None
    reason = ""
    if require_token:
        reason = "this process requires a token from every caller (DETRIX_REQUIRE_TOKEN)"
    elif not is_loopback(address):
        reason = "remote callers need a token"
    elif _has_any(request, PROXY_HEADERS, PROXY_PREFIXES):
        reason = "proxied requests need a token"
    elif not _host_is_loopback(request.header("host")):
        reason = "the Host header does not name this machine's loopback"
    elif _has_any(request, BROWSER_HEADERS, BROWSER_PREFIXES):
        reason = "browser requests need a token"
    else:
        cache = conn_cache if conn_cache is not None else {}
        if "uid" not in cache:
            cache["uid"] = peer_uid(peer, local_addr)
        uid = cache["uid"]
        if sys.platform.startswith("linux"):
            if uid is None:
                reason = "could not verify which user owns the connection"
            elif uid not in (os.geteuid(), 0):
                reason = f"local callers of another user (uid {uid}) need a token"
    return Caller(
        address=address,
        port=port,
        uid=uid,
        token_ok=token_ok,
        token_bad=token_bad,
        local=not reason,
        reason=reason,
    )


def _has_any(request: Request, names: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    headers = request.headers  # keys are lower case
    return any(n in headers for n in names) or any(k.startswith(prefixes) for k in headers)


def _peer_address(peer: Any) -> tuple[str, int]:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return str(peer), 0


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return credentials.strip()


def _host_is_loopback(host_header: str | None) -> bool:
    if host_header is None:
        return True  # HTTP/1.0 clients may omit it; browsers always send it
    host, port = split_host_port(host_header)
    if port is not None and not (port.isdigit() and port.isascii()):
        return False
    return is_loopback(host)


def _proc_address(address: str, port: int, v6: bool) -> str:
    """An address as ``/proc/net/tcp{,6}`` prints it (host byte order words)."""
    if v6:
        packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
        words = [int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, 16, 4)]
        return "".join(f"{w:08X}" for w in words) + f":{port:04X}"
    packed = socket.inet_aton(address)
    return f"{int.from_bytes(packed, sys.byteorder):08X}:{port:04X}"


def peer_uid(peer: Any, local_addr: Any) -> int | None:
    """The uid owning the other end of a loopback TCP connection (Linux only).

    The kernel is asked for exactly one socket, the one whose local end is the
    peer's address and whose remote end is ours (``sock_diag`` over netlink,
    what ``ss`` uses: a hash lookup, however many sockets the host has). Where
    netlink is unavailable, ``/proc/net/tcp{,6}`` is read instead.

    Returns None when the socket cannot be found, and when it has no inode:
    the peer closed it already (an orphaned or TIME_WAIT socket), and the
    kernel then reports uid 0 whoever owned it, which must not pass for
    root. A client that waits for its answer always has a live socket.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        peer_host, peer_port = _peer_address(peer)
        our_host, our_port = _peer_address(local_addr)
        owner = _diag_owner(peer_host, peer_port, our_host, our_port)
    except _Unavailable:
        owner = _proc_owner(peer_host, peer_port, our_host, our_port)
    except (OSError, ValueError, TypeError, struct.error):
        return None
    if owner is None:
        return None
    uid, inode = owner
    return uid if inode else None


class _Unavailable(Exception):
    """This kernel or sandbox does not answer sock_diag requests."""


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF


def _packed(host: str, v6: bool) -> bytes:
    if v6:
        return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    return socket.inet_aton(host) + bytes(12)


def _diag_owner(
    peer_host: str, peer_port: int, our_host: str, our_port: int
) -> tuple[int, int] | None:
    """(uid, inode) of the socket ``peer_host:peer_port`` -> ``our_host:our_port``."""
    v6 = ":" in peer_host
    # struct inet_diag_req_v2 with an exact struct inet_diag_sockid (see linux/inet_diag.h).
    sockid = (
        struct.pack("!HH", peer_port, our_port)
        + _packed(peer_host, v6)
        + _packed(our_host, v6)
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )
    family = socket.AF_INET6 if v6 else socket.AF_INET
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
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
    length, kind = struct.unpack_from("=IH", reply)
    if kind == _NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, 16)
        if error in (-errno.ENOENT, 0):
            return None  # no such socket (any more)
        raise _Unavailable  # EPERM, EINVAL...: let /proc decide
    if kind != _SOCK_DIAG_BY_FAMILY or length < 16 + 72:
        return None
    # struct inet_diag_msg: 4 bytes, the sockid (48), expires, rqueue, wqueue, uid, inode.
    uid, inode = struct.unpack_from("=II", reply, 16 + 4 + 48 + 12)
    return uid, inode


def _proc_owner(
    peer_host: str, peer_port: int, our_host: str, our_port: int
) -> tuple[int, int] | None:
    """The same from ``/proc/net/tcp{,6}``: the peer socket's uid and inode columns."""
    try:
        candidates: list[tuple[str, str, str]] = []
        for table, v6 in (("/proc/net/tcp6", True), ("/proc/net/tcp", False)):
            hosts = [(peer_host, our_host)]
            if peer_host.startswith("::ffff:") and our_host.startswith("::ffff:"):
                hosts.append((peer_host[7:], our_host[7:]))
            for p_host, o_host in hosts:
                if v6 == (":" in p_host):
                    candidates.append(
                        (
                            table,
                            _proc_address(p_host, peer_port, v6),
                            _proc_address(o_host, our_port, v6),
                        )
                    )
    except (OSError, ValueError):
        return None
    for table, want_local, want_remote in candidates:
        needle = f": {want_local} {want_remote} ".encode()
        try:
            with open(table, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        at = data.find(needle)
        if at < 0:
            continue
        fields = data[at : data.find(b"\n", at)].split()
        try:
            return int(fields[7]), int(fields[9])  # fields[0] is the ":" after "sl"
        except (IndexError, ValueError):
            return None
    return None
