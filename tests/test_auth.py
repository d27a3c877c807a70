"""Who counts as local: each rule alone, with real sockets for the peer-uid lookup."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from detrix_auto.control.auth import classify, peer_uid
from detrix_auto.control.http import parse_request

LINUX = sys.platform.startswith("linux")


def _request(*headers: str, method: str = "GET", path: str = "/detrix/status"):
    raw = f"{method} {path} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    request, _ = parse_request(raw.encode())
    assert request is not None
    return request


@pytest.fixture
def loopback_pair():
    """A real accepted loopback connection: (server side socket, peer, local)."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, peer = server.accept()
    yield conn, peer, conn.getsockname()
    for s in (client, conn, server):
        s.close()


def test_same_user_loopback_without_headers_is_local(loopback_pair):
    _, peer, local = loopback_pair
    caller = classify(_request("Host: 127.0.0.1:1"), peer, local, None, require_token=False)
    assert caller.local and caller.authorized and caller.how == "local"
    if LINUX:
        assert caller.uid == os.geteuid()


@pytest.mark.skipif(not LINUX, reason="/proc/net/tcp is Linux only")
def test_peer_uid_is_read_from_proc(loopback_pair):
    _, peer, local = loopback_pair
    assert peer_uid(peer, local) == os.geteuid()


@pytest.mark.skipif(not LINUX, reason="/proc/net/tcp6 is Linux only")
def test_peer_uid_over_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    client = socket.create_connection(server.getsockname()[:2])
    conn, peer = server.accept()
    try:
        assert peer_uid(peer, conn.getsockname()) == os.geteuid()
    finally:
        for s in (client, conn, server):
            s.close()


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("X-Forwarded-For: 203.0.113.9", "proxied"),
        ("Forwarded: for=203.0.113.9", "proxied"),
        ("X-Real-IP: 203.0.113.9", "proxied"),
        ("Via: 1.1 nginx", "proxied"),
        ("Origin: http://evil.example", "browser"),
        ("Sec-Fetch-Site: cross-site", "browser"),
        ("Host: attacker.example:8091", "Host header"),
        ("Host: 127.0.0.1.nip.io", "Host header"),
    ],
)
def test_each_bypass_needs_a_token(loopback_pair, header, why):
    _, peer, local = loopback_pair
    caller = classify(_request(header), peer, local, None, require_token=False)
    assert not caller.local and not caller.authorized
    assert why in caller.reason


def test_remote_peer_needs_a_token():
    caller = classify(_request(), ("203.0.113.5", 4000), ("0.0.0.0", 1), None, require_token=False)
    assert not caller.authorized and "remote" in caller.reason
    good = classify(
        _request("Authorization: Bearer s3cret"),
        ("203.0.113.5", 4000),
        ("0.0.0.0", 1),
        "s3cret",
        require_token=False,
    )
    assert good.authorized and good.how == "token"


def test_wrong_token_is_refused_even_from_loopback(loopback_pair):
    _, peer, local = loopback_pair
    caller = classify(
        _request("Authorization: Bearer nope"), peer, local, "right", require_token=False
    )
    assert caller.token_bad and not caller.authorized


def test_a_token_presented_when_none_is_configured_is_refused(loopback_pair):
    _, peer, local = loopback_pair
    caller = classify(_request("Authorization: Bearer x"), peer, local, None, require_token=False)
    assert not caller.authorized


def test_require_token_switch_refuses_local_callers(loopback_pair):
    _, peer, local = loopback_pair
    caller = classify(_request(), peer, local, "t", require_token=True)
    assert not caller.authorized and "DETRIX_REQUIRE_TOKEN" in caller.reason
    caller = classify(_request("Authorization: Bearer t"), peer, local, "t", require_token=True)
    assert caller.authorized


def test_ipv4_mapped_loopback_is_loopback():
    caller = classify(
        _request(),
        ("::ffff:127.0.0.1", 5, 0, 0),
        ("::ffff:127.0.0.1", 6, 0, 0),
        None,
        require_token=False,
    )
    # No such socket exists, so on Linux the owner cannot be verified.
    assert ("verify" in caller.reason) if LINUX else caller.local
