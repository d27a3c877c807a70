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
  kernel (``netowner.peer_uid``: ``sock_diag``, else ``/proc/net/tcp{,6}``):
  another local user is not us. Only the ESTABLISHED socket with exactly this
  connection's 4-tuple counts: the kernel's lookup falls back to a listener
  (ours, on a wildcard address) when the peer has reset its connection, and a
  socket its owner has already closed is reported with uid 0 and inode 0; both
  are "unknown", never us and never root.

Everyone else needs ``Authorization: Bearer <token>``, compared in constant
time. ``DETRIX_REQUIRE_TOKEN=1`` makes the token mandatory for every caller.
"""

from __future__ import annotations

import os
import sys

from ..config import is_loopback, split_host_port
from ..netowner import peer_uid

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
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
    "x-original-host",
    "x-envoy-external-address",
)
#: Any header starting with one of these also marks a proxy: ``X-Forwarded-Port``...,
#: and Envoy's ``x-envoy-*`` (``x-envoy-original-path``, ``x-envoy-internal``...),
#: which only a proxy writes.
PROXY_PREFIXES = ("x-forwarded-", "x-envoy-")
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
    if "%" in host_header:
        return False  # a zone id (or its encoding) never belongs in a Host header
    host, port = split_host_port(host_header)
    if port is not None and not (port.isdigit() and port.isascii()):
        return False
    return is_loopback(host)
