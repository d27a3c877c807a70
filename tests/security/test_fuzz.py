"""Fuzzing the control plane over real sockets (hypothesis).

A live, in-process control plane (``detrix_auto.init()``) gets raw bytes,
generated requests, and byte-level mutations of valid requests. Whatever
arrives, every answer must be a well-formed HTTP/1.1 response with a JSON
object body; the status is 2xx or 4xx, or exactly the documented 503 of a wake
whose daemon cannot be reached; the server closes the connection promptly
(socket timeouts catch a hang); and afterwards it still answers, holding no
extra descriptors or threads.

The client's daemon factory is replaced by one that always fails as an
unreachable daemon does, so no wake ever reaches debugpy (it would trace this
whole test process) or the network. ``bench/fuzz_control_plane.py`` runs the
same idea for 100,000+ requests; this module stays within a few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sechelpers import TOKEN, MalformedResponse, parse_responses
from support import EXAMPLES_SHARE

import detrix_auto
from detrix_auto import lifecycle
from detrix_auto.errors import DaemonError

ROUTES = ["/detrix/health", "/detrix/status", "/detrix/info", "/detrix/wake", "/detrix/sleep"]
ALLOWED = {200, 400, 401, 404, 405, 408, 411, 413, 415, 431}
GUARD = "daemon not reachable (fuzz guard)"
#: Examples per test are multiplied by this (the default suite stays near 10 s), and
#: by ``DETRIX_TEST_EXAMPLES`` (support.examples).
SCALE = float(os.environ.get("DETRIX_FUZZ_SCALE", "1"))


class _Unreachable:
    url = "http://127.0.0.1:9"

    def health(self, *args: object) -> None:
        raise DaemonError(GUARD)

    register = unregister = connection = health


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Iterator[tuple[str, int]]:
    saved = lifecycle._default_daemon_factory
    lifecycle._default_daemon_factory = lambda url, settings: _Unreachable()
    home = tmp_path_factory.mktemp("fuzz-home")
    detrix_auto.init(
        detrix_home=str(home),
        name="fuzz",
        token=TOKEN,
        discovery=False,
        daemon_url="http://127.0.0.1:9",
    )
    try:
        yield ("127.0.0.1", detrix_auto.status()["control_port"])
    finally:
        detrix_auto.shutdown()
        lifecycle._default_daemon_factory = saved


def send(address: tuple[str, int], data: bytes, *, half_close: bool) -> bytes:
    """Send ``data``; with ``half_close`` also end our side, then read until the server closes.

    A server that neither answers nor closes within the timeout is a hang."""
    with socket.create_connection(address, timeout=5) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: what it sent is still readable
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(
                    f"no answer and no close within 5 s for {data[:300]!r}"
                ) from None
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def check(data: bytes, reply: bytes) -> list[int]:
    try:
        responses = parse_responses(reply, head_requests=data.count(b"HEAD "))
    except MalformedResponse as exc:
        raise AssertionError(f"{exc}\nrequest: {data[:500]!r}\nreply: {reply[:500]!r}") from None
    for response in responses:
        if response.status == 503:
            assert b"/detrix/wake" in data and response.error == GUARD, (data[:300], response)
        else:
            assert response.status in ALLOWED, (response.status, response.body, data[:300])
    return [r.status for r in responses]


# -- strategies --------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
methods = st.sampled_from(
    ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "TRACE"]
) | st.text(TOKEN_CHARS, min_size=1, max_size=8)
paths = st.sampled_from(
    [
        *ROUTES,
        "/",
        "/detrix",
        "/detrix/wake/",
        "//detrix/status",
        "/detrix/status?x=1",
        "/detrix/%77ake",
        "*",
        "http://evil/detrix/wake",
        "/detrix/wake#x",
    ]
) | st.text(max_size=30).map(lambda s: "/" + s)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 x"])
header_values = {
    "Host": st.sampled_from(
        [
            "127.0.0.1",
            "localhost:1",
            "evil.example",
            "[::1]:8",
            "",
            "a:b:c",
            "127.0.0.1:99999999999",
        ]
    ),
    "Content-Type": st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "APPLICATION/JSON",
            "",
        ]
    ),
    "Authorization": st.sampled_from(
        [
            f"Bearer {TOKEN}",
            "Bearer",
            "Bearer x",
            "Basic eA==",
            f"bearer {TOKEN}",
            "",
            f"Bearer {TOKEN[:-1]}",
        ]
    ),
    "Origin": st.sampled_from(["http://evil.example", "null", ""]),
    "X-Forwarded-For": st.just("203.0.113.9"),
    "Sec-Fetch-Site": st.sampled_from(["cross-site", "same-origin"]),
    "Connection": st.sampled_from(["close", "keep-alive", "Upgrade", ""]),
    "Transfer-Encoding": st.sampled_from(["chunked", "identity"]),
    "Expect": st.just("100-continue"),
    "Content-Length": st.sampled_from(["0", "-1", "1e3", "99999999999999", "+5", " 2", "0x10"]),
}
headers = st.lists(
    st.one_of(
        st.sampled_from(sorted(header_values)).flatmap(
            lambda name: header_values[name].map(lambda value: (name, value))
        ),
        st.tuples(
            st.text(TOKEN_CHARS, min_size=1, max_size=12),
            st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
        ),
    ),
    max_size=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
daemon_urls = st.sampled_from(
    [
        "http://127.0.0.1:9",
        "https://127.0.0.1:9/x/",
        "ftp://x",
        "http://user:pw@127.0.0.1:9",
        "http://[::1]:9",
        "http://h:0",
        "http://evil.example:80",
        "http://127.0.0.1:9?q",
        "",
        " ",
    ]
) | st.text(max_size=40)
bodies = st.one_of(
    st.none(),
    st.just(b"{}"),
    daemon_urls.map(lambda u: ('{"daemon_url": ' + __import__("json").dumps(u) + "}").encode()),
    json_values.map(lambda v: __import__("json").dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(1, 3000).map(lambda n: b"[" * n),  # nesting deeper than the JSON decoder allows
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request assembled from parts; returns (bytes, complete): complete when it asks to
    close and its framing is ours (no Content-Length of the fuzzer's choosing)."""
    method, path, version = draw(methods), draw(paths), draw(versions)
    hdrs = draw(headers)
    body = draw(bodies)
    close = draw(st.booleans())
    if close:
        hdrs = [(n, v) for n, v in hdrs if n.lower() != "connection"] + [("Connection", "close")]
    lines = [f"{method} {path} {version}"]
    lines += [f"{name}: {value}" for name, value in hdrs]
    names = {name.lower() for name, _ in hdrs}
    if body is not None and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    data = "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + (body or b"")
    complete = close and not names & {"content-length", "transfer-encoding"}
    return data, complete


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with a few byte-level mutations."""
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
    path = draw(st.sampled_from(ROUTES))
    body = b'{"daemon_url": "http://127.0.0.1:9"}' if method == "POST" else b""
    data = bytearray(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=16)
                | st.sampled_from([b"\r\n", b"\r\n\r\n", b":", b" ", b"\x00", b"\r", b"\n", b"\t"])
            )
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def budget(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE * EXAMPLES_SHARE)),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def test_raw_bytes(plane):
    @budget(2000)
    @given(st.binary(max_size=3000) | st.binary(max_size=40).map(lambda b: b + b"\r\n\r\n"))
    def run(data: bytes) -> None:
        check(data, send(plane, data, half_close=True))

    run()


def test_generated_requests(plane):
    @budget(600)
    @given(st.lists(requests(), min_size=1, max_size=3))
    def run(batch: list[tuple[bytes, bool]]) -> None:
        # Pipelined, then our side ends: whatever is incomplete is dropped, and the
        # server must close at once rather than wait for more.
        data = b"".join(d for d, _ in batch)
        check(data, send(plane, data, half_close=True))

    run()


def test_generated_single_requests_are_answered(plane):
    """A complete request with Connection: close is answered exactly once, then closed
    (wake and sleep included: they run on a worker)."""

    @budget(500)
    @given(requests().filter(lambda item: item[1]))
    def run(item: tuple[bytes, bool]) -> None:
        data, _ = item
        assert len(check(data, send(plane, data, half_close=False))) == 1

    run()


def test_mutated_valid_requests(plane):
    @budget(1000)
    @given(mutated())
    def run(data: bytes) -> None:
        check(data, send(plane, data, half_close=True))

    run()


def test_the_plane_survives_and_leaks_nothing(plane):
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    threads = threading.active_count()
    for _ in range(200):
        send(
            plane,
            b"GET /detrix/status HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"BROKEN\r\n\r\n",
            half_close=False,
        )
    time.sleep(0.2)
    reply = send(plane, b"GET /detrix/health HTTP/1.0\r\n\r\n", half_close=False)
    assert check(b"", reply) == [200]
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds + 2
    assert threading.active_count() <= threads + 1
