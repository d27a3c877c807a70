"""Issue 7's attacks, each as real requests over real sockets.

Every attack runs twice through the ``target`` fixture: against a naive
server that trusts any loopback peer (it must be fooled, or the test would
prove nothing) and against detrix-auto running in a real subprocess (it must
not be). An attack "succeeds" when it reads the status, when a wake reaches
the daemon (every wake starts with the daemon's health check), or when a
bearer token reaches a daemon the attacker chose.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest
from sechelpers import (
    TOKEN,
    FaultDaemon,
    NaiveServer,
    Target,
    as_other_user,
    authorization_headers,
    build_request,
    parse_responses,
    raw_http,
    start_app,
)
from support import wait_until

JSON = {"Content-Type": "application/json"}


def _wake(
    target: Target,
    *,
    headers: dict[str, str] | None = None,
    body: str | None = "{}",
    host: str | None = "default",
    source: str | None = None,
) -> tuple[int, bool]:
    """POST /detrix/wake; returns (status, whether a wake reached the daemon)."""
    before = target.wake_attempts()
    response = raw_http(
        target.address, "POST", "/detrix/wake", headers=headers, body=body, host=host, source=source
    )
    return response.status, target.wake_attempts() > before


# -- another local user ---------------------------------------------------------------

OTHER_USER_REQUESTS = """\
results = []
for raw in job["requests"]:
    reply = exchange(job["address"], raw.encode("latin-1"), job.get("source"))
    results.append(reply.decode("latin-1"))
print(json.dumps(results))
"""


def _request_bytes(
    method: str,
    path: str,
    port: int,
    *,
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> str:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + (body or "")


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
def test_another_local_user_can_neither_read_nor_wake(target, other_user, attacker_daemon, source):
    port = target.port
    wake_body = json.dumps({"daemon_url": attacker_daemon.url})
    before_wakes, before_calls = target.wake_attempts(), len(attacker_daemon.calls)
    raw = as_other_user(
        other_user,
        OTHER_USER_REQUESTS,
        address=list(target.address),
        source=source,
        requests=[
            _request_bytes("GET", "/detrix/status", port),
            _request_bytes("POST", "/detrix/wake", port, headers=JSON, body="{}"),
            _request_bytes("POST", "/detrix/wake", port, headers=JSON, body=wake_body),
        ],
    )
    status, wake, redirect = (parse_responses(r.encode("latin-1"))[0] for r in raw)
    woke = target.wake_attempts() > before_wakes or len(attacker_daemon.calls) > before_calls
    target.verdict(
        status.status == 200 or woke, f"another user (uid {other_user[0]}) from {source}"
    )
    if not target.naive:
        assert {status.status, wake.status, redirect.status} == {401}
        assert f"uid {other_user[0]}" in status.error


ORPHAN_ATTACK = """\
# Send every request but its last byte; then cork each socket, queue the last
# byte and close(). The server can finish reading a request only once its
# owner is closing it, and often only after the socket is orphaned: then
# /proc/net/tcp and sock_diag report it with uid 0 and inode 0.
raw = job["request"].encode("latin-1")
socks = [connect(job["address"]) for _ in range(job["count"])]
for sock in socks:
    sock.sendall(raw[:-1])
time.sleep(0.2)
ports = []
for sock in socks:
    ports.append(sock.getsockname()[1])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    sock.send(raw[-1:])
    sock.close()
print(json.dumps(ports))
"""


def test_another_user_closing_early_is_not_taken_for_root(target, other_user):
    """A socket its owner already closed is reported as uid 0: that must not read as root.

    Whether the server reads a request before or after the socket is orphaned
    is a race; rounds are repeated until the orphaned case has been seen."""
    before = target.wake_attempts()
    request = _request_bytes("POST", "/detrix/wake", target.port, headers=JSON, body="{}")
    orphaned = 0
    for _ in range(5):
        ports = as_other_user(
            other_user, ORPHAN_ATTACK, address=list(target.address), request=request, count=20
        )
        if target.naive:
            wait_until(lambda: target.wake_attempts() > before, timeout=10)
            break
        app = target.app
        assert app is not None

        def lines(ports: list[int] = ports) -> list[str]:
            return [
                line
                for line in app.stderr().splitlines()
                if "wake peer=" in line and any(f":{p} " in line for p in ports)
            ]

        assert wait_until(lambda: len(lines()) == len(ports), timeout=15), (
            "the server did not process every attempt"
        )
        for line in lines():
            assert "auth=none outcome=refused" in line, line
            orphaned += "uid=? " in line
        if orphaned:
            break
    target.verdict(
        target.wake_attempts() > before,
        "another user closing its socket before the server reads it",
    )
    if not target.naive and not orphaned:
        pytest.skip(
            "the server always read the request before the socket was orphaned: "
            "the closed-socket case was not exercised on this machine"
        )


@pytest.fixture(scope="module")
def ours_mapped(tmp_path_factory, honest_daemon) -> Iterator[Target]:
    """detrix-auto listening on an IPv6 socket: IPv4 peers appear as ::ffff:127.0.0.1."""
    app = start_app(
        tmp_path_factory.mktemp("mapped"),
        allow=[honest_daemon.url],
        DETRIX_DAEMON_URL=honest_daemon.url,
        DETRIX_TOKEN=TOKEN,
        DETRIX_CONTROL_HOST="::ffff:127.0.0.1",
    )
    try:
        yield Target("ours", False, "::ffff:127.0.0.1", app.port, honest_daemon, TOKEN, app=app)
    finally:
        app.stop()


@pytest.fixture(scope="module")
def naive_mapped() -> Iterator[Target]:
    with FaultDaemon() as daemon:
        server = NaiveServer(daemon.url, TOKEN, host="::ffff:127.0.0.1")
        try:
            yield Target("naive", True, "::ffff:127.0.0.1", server.port, daemon, TOKEN)
        finally:
            server.stop()


@pytest.mark.parametrize("kind", ["naive_mapped", "ours_mapped"])
@pytest.mark.parametrize("via", ["127.0.0.1", "::ffff:127.0.0.1"])
def test_ipv4_mapped_loopback_peer_of_another_user(request, kind, via, other_user):
    target: Target = request.getfixturevalue(kind)
    address = [via, target.port]
    before = target.wake_attempts()
    raw = as_other_user(
        other_user,
        OTHER_USER_REQUESTS,
        address=address,
        requests=[
            _request_bytes("GET", "/detrix/status", target.port),
            _request_bytes("POST", "/detrix/wake", target.port, headers=JSON, body="{}"),
        ],
    )
    status, wake = (parse_responses(r.encode("latin-1"))[0] for r in raw)
    target.verdict(
        status.status == 200 or target.wake_attempts() > before,
        f"another user through an IPv4-mapped peer address (via {via})",
    )


def test_the_same_user_stays_local_from_any_loopback_form(ours, ours_mapped):
    """The legitimate workflow: no token needed from 127.0.0.2 or an IPv4-mapped peer."""
    assert raw_http(ours.address, "GET", "/detrix/status", source="127.0.0.2").status == 200
    assert raw_http(("127.0.0.1", ours_mapped.port), "GET", "/detrix/status").status == 200
    assert raw_http(ours_mapped.address, "GET", "/detrix/status").status == 200
    assert (
        raw_http(ours.address, "GET", "/detrix/status", host=f"localhost:{ours.port}").status == 200
    )


# -- a reverse proxy on the same host ---------------------------------------------------

PROXY_HEADERS = {
    "X-Forwarded-For": "203.0.113.7",
    "Forwarded": "for=203.0.113.7;proto=http",
    "X-Real-IP": "203.0.113.7",
    "Via": "1.1 nginx",
}


@pytest.mark.parametrize("header", sorted(PROXY_HEADERS))
def test_a_same_host_reverse_proxy_is_not_local(target, header):
    """nginx on the same host connects from 127.0.0.1 on behalf of anyone on the network."""
    headers = {header: PROXY_HEADERS[header]}
    status = raw_http(target.address, "GET", "/detrix/status", headers=headers).status
    code, woke = _wake(target, headers={**headers, **JSON})
    target.verdict(status == 200 or woke, f"a proxied request ({header})")
    if not target.naive:
        assert (status, code) == (401, 401)
        # With the token, a proxied caller is served.
        authed = {**headers, "Authorization": f"Bearer {TOKEN}"}
        assert raw_http(target.address, "GET", "/detrix/status", headers=authed).status == 200


# -- a web page in the developer's browser ------------------------------------------------

CSRF_VARIANTS = {
    # <form enctype="text/plain"> smuggling a JSON body
    "text-plain-json": (
        {"Origin": "http://evil.example", "Content-Type": "text/plain"},
        '{"x": "="}',
    ),
    # an ordinary HTML form
    "form-urlencoded": (
        {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
        "a=b",
    ),
    # fetch(url, {method: "POST", mode: "no-cors"}) without a body
    "no-cors-fetch": (
        {
            "Origin": "http://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
        },
        None,
    ),
    # a browser too old to send Origin: the content type alone must stop it
    "no-origin-text-plain": ({"Content-Type": "text/plain"}, "{}"),
    "no-origin-form": ({"Content-Type": "application/x-www-form-urlencoded"}, "a=b"),
}


@pytest.mark.parametrize("variant", sorted(CSRF_VARIANTS))
def test_a_cross_site_post_cannot_wake(target, variant):
    headers, body = CSRF_VARIANTS[variant]
    code, woke = _wake(target, headers=headers, body=body)
    target.verdict(woke, f"a cross-site request ({variant})")
    if not target.naive:
        assert code in (401, 415)


def test_no_cors_preflight_is_ever_granted(ours):
    """A JSON POST from a page needs a preflight: it is refused, with no CORS header."""
    response = raw_http(
        ours.address,
        "OPTIONS",
        "/detrix/wake",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status in (401, 405)
    assert not any(k.startswith("access-control-") for k in response.headers)


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_dns_rebinding_cannot_read_or_wake(target, host):
    """A page whose name now resolves to 127.0.0.1 is same-origin with us, but sends its Host."""
    hosted = f"{host}:{target.port}"
    status = raw_http(target.address, "GET", "/detrix/status", host=hosted)
    code, woke = _wake(target, headers=JSON, host=hosted)
    target.verdict(status.status == 200 or woke, f"DNS rebinding (Host: {hosted})")
    if not target.naive:
        assert (status.status, code) == (401, 401)
        assert "Host" in status.error


# -- daemon_url: redirecting the wake, stealing the token ------------------------------------

REDIRECT_CALLERS = {
    "same-user": ({}, "default"),
    "proxied": ({"X-Forwarded-For": "203.0.113.7"}, "default"),
    "browser": ({"Origin": "http://evil.example"}, "default"),
    "rebinding": ({}, "evil.example"),
}


@pytest.mark.parametrize("caller", sorted(REDIRECT_CALLERS))
def test_a_daemon_url_override_never_receives_the_token(target, attacker_daemon, caller):
    headers, host = REDIRECT_CALLERS[caller]
    if host != "default":
        host = f"{host}:{target.port}"
    before = len(attacker_daemon.calls)
    before_tokens = len(authorization_headers(attacker_daemon))
    body = json.dumps({"daemon_url": attacker_daemon.url})
    code, _ = _wake(target, headers={**headers, **JSON}, body=body, host=host)
    reached = len(attacker_daemon.calls) > before
    stolen = len(authorization_headers(attacker_daemon)) > before_tokens
    target.verdict(stolen, f"token theft through daemon_url ({caller} caller)")
    if not target.naive:
        if caller == "same-user":
            # A verified same-user caller may point the client elsewhere, without the token.
            assert reached and code == 503
        else:
            # Anyone else cannot redirect the client at all.
            assert not reached and code == 401


def test_only_a_token_holder_sends_the_token_to_its_own_daemon(
    ours, attacker_daemon, honest_daemon
):
    """The positive side: the configured daemon gets the token; a caller with the token may
    redirect with it (it could use the token itself anyway)."""
    before = len(authorization_headers(honest_daemon))
    assert _wake(ours, headers=JSON)[0] == 503
    assert authorization_headers(honest_daemon)[before:] == [f"Bearer {TOKEN}"]
    before = len(authorization_headers(attacker_daemon))
    body = json.dumps({"daemon_url": attacker_daemon.url})
    code, _ = _wake(
        ours,
        headers={**JSON, "Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.7"},
        body=body,
    )
    assert code == 503
    assert authorization_headers(attacker_daemon)[before:] == [f"Bearer {TOKEN}"]


# -- audit lines ---------------------------------------------------------------------------


def test_every_wake_and_sleep_leaves_an_audit_line(ours):
    """Peer address and port, uid where known, how the caller was trusted, and the outcome."""
    app = ours.app
    assert app is not None
    me = os.geteuid()
    cases = [
        ("/detrix/wake", JSON, f"uid={me} auth=local outcome=failed (503): daemon at "),
        ("/detrix/sleep", {}, f"uid={me} auth=local outcome=already_sleeping"),
        (
            "/detrix/wake",
            {**JSON, "Authorization": f"Bearer {TOKEN}", "Via": "1.1 proxy"},
            "uid=? auth=token outcome=failed (503)",
        ),
        ("/detrix/sleep", {"Via": "1.1 proxy"}, "uid=? auth=none outcome=refused (unauthorized)"),
    ]
    # The app serves the whole module: only what it writes from here on is this test's,
    # and each connection stays open to the end, so that no two share a client port
    # (CI once found another test's line under a reused port).
    before = len(app.stderr())
    seen = []
    held = []
    try:
        for path, headers, expect in cases:
            body = "{}" if path.endswith("wake") else None
            data = build_request(
                "POST", path, host=f"127.0.0.1:{ours.port}", headers=headers, body=body
            )
            sock = socket.create_connection(ours.address, timeout=15)
            held.append(sock)
            port = sock.getsockname()[1]
            sock.sendall(data)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            parse_responses(reply)
            seen.append((port, path.rsplit("/", 1)[1], expect))
    finally:
        for sock in held:
            sock.close()
    for port, verb, expect in seen:

        def lines(port: int = port) -> list[str]:
            written = app.stderr()[before:]
            return [line for line in written.splitlines() if f"peer=127.0.0.1:{port} " in line]

        found = wait_until(lines, timeout=5)
        assert len(found) == 1, f"expected one audit line for {verb} from port {port}: {found}"
        line = found[0]
        assert line.startswith("detrix-auto: INFO detrix_auto.audit: ")
        assert f" {verb} peer=127.0.0.1:{port} {expect}" in line, line
        assert TOKEN not in line
