"""Who may use the control plane: the caller, classified once per connection.

A caller is *local* (trusted without a token) only when every one of these
holds, because each alone is bypassable (SECURITY.md has the threat model):

* the TCP peer is a loopback address (parsed, IPv4-mapped included);
* no proxy header (``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``, ``Via``):
  a same-host reverse proxy turns remote callers into loopback ones;
* the ``Host`` header, when present, names loopback: DNS rebinding makes a
  browser send ``Host: attacker.example`` to 127.0.0.1;
* no ``Origin`` or ``Sec-Fetch-*`` header: a browser sent it (CSRF);
* on Linux, the peer socket belongs to our own uid or to root, read from
  ``/proc/net/tcp{,6}``: another local user is not us.

Everyone else needs ``Authorization: Bearer <token>``, compared in constant
time. ``DETRIX_REQUIRE_TOKEN=1`` makes the token mandatory for every caller.
"""

from __future__ import annotations

import hmac
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from ..config import is_loopback, split_host_port
from .http import Request

__all__ = ["Caller", "classify", "peer_uid"]

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                 "x-real-ip", "via")
BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest")


@dataclass(frozen=True)
class Caller:
    """What we know about whoever sent a request."""

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

    @property
    def authorized(self) -> bool:
        return self.token_ok or (self.local and not self.token_bad)

    @property
    def how(self) -> str:
        return "token" if self.token_ok else ("local" if self.local else "none")


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
    token_ok = bool(presented and token and hmac.compare_digest(presented.encode(), token.encode()))
    token_bad = presented is not None and not token_ok
    uid: int | None = None
    reason = ""
    if require_token:
        reason = "this process requires a token from every caller (DETRIX_REQUIRE_TOKEN)"
    elif not is_loopback(address):
        reason = "remote callers need a token"
    elif any(request.header(h) is not None for h in PROXY_HEADERS):
        reason = "proxied requests need a token"
    elif not _host_is_loopback(request.header("host")):
        reason = "the Host header does not name this machine's loopback"
    elif any(request.header(h) is not None for h in BROWSER_HEADERS):
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
    return Caller(address=address, port=port, uid=uid, token_ok=token_ok, token_bad=token_bad,
                  local=not reason, reason=reason)


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

    The peer's socket is listed with our address as its remote end; the
    ``uid`` column is its owner. Returns None when it cannot be found.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        peer_host, peer_port = _peer_address(peer)
        our_host, our_port = _peer_address(local_addr)
        candidates: list[tuple[str, str, str]] = []
        for table, v6 in (("/proc/net/tcp6", True), ("/proc/net/tcp", False)):
            hosts = [(peer_host, our_host)]
            if peer_host.startswith("::ffff:") and our_host.startswith("::ffff:"):
                hosts.append((peer_host[7:], our_host[7:]))
            for p_host, o_host in hosts:
                if v6 == (":" in p_host):
                    candidates.append((table, _proc_address(p_host, peer_port, v6),
                                       _proc_address(o_host, our_port, v6)))
    except (OSError, ValueError):
        return None
    for table, want_local, want_remote in candidates:
        try:
            with open(table, encoding="ascii", errors="replace") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                        return int(fields[7])
        except (OSError, ValueError):
            continue
    return None
