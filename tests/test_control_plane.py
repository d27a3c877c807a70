"""The control plane in this process: routes, errors, limits, keep-alive, concurrency.

No wake happens here (debugpy would then trace the whole test run); waking is
covered by the subprocess tests.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import detrix_auto
from detrix_auto import (
    AlreadyInitializedError,
    ConfigError,
    DaemonError,
    NotInitializedError,
)
from detrix_auto.control import loop as control_loop


@pytest.fixture
def plane(home):
    detrix_auto.init(detrix_home=str(home), name="plane", daemon_url="http://127.0.0.1:9")
    status = detrix_auto.status()
    yield status["control_host"], status["control_port"]
    detrix_auto.shutdown()


def _raw(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _split(response: bytes) -> tuple[int, dict[str, str], object]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def test_api_before_init_answers_as_the_original_did():
    # status and sleep tell the truth (nothing runs); wake is a DaemonError, which
    # code written for detrix-py guards, and says what to do.
    status = detrix_auto.status()
    assert (status["state"], status["control_port"], status["connection_id"]) == (
        "sleeping",
        0,
        None,
    )
    assert detrix_auto.sleep() == {"status": "already_sleeping"}
    with pytest.raises(DaemonError, match=r"init\(\)") as info:
        detrix_auto.wake()
    assert isinstance(info.value, NotInitializedError)


def test_init_twice_is_refused(plane, home):
    with pytest.raises(ConfigError, match="already initialized") as info:
        detrix_auto.init(detrix_home=str(home))
    assert isinstance(info.value, AlreadyInitializedError)


def test_health_status_info(plane):
    _, port = plane
    code, headers, body = _split(
        _raw(port, b"GET /detrix/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert (code, body) == (200, {"status": "ok", "service": "detrix-client"})
    assert headers["Content-Type"] == "application/json"
    code, _, body = _split(_raw(port, b"GET /detrix/status HTTP/1.0\r\n\r\n"))
    assert code == 200
    assert body["state"] == "sleeping" and body["name"].startswith("plane-")
    assert body["control_port"] == port and body["connection_id"] is None
    code, _, body = _split(_raw(port, b"GET /detrix/info HTTP/1.0\r\n\r\n"))
    assert code == 200 and set(body) == {"name", "pid", "python_version", "python_executable"}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.0\r\n\r\n", 404),
        (b"POST /detrix/status HTTP/1.0\r\n\r\n", 405),
        (b"GET /detrix/wake HTTP/1.0\r\n\r\n", 405),
        (b"BREW /detrix/health HTTP/1.0\r\n\r\n", 405),
        (b"GET /detrix/health HTTP/9.9\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),  # a TLS hello
        (b"POST /detrix/wake HTTP/1.0\r\nContent-Length: 999999\r\n\r\n", 413),
        (
            b"POST /detrix/wake HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\n\r\n{nope",
            400,
        ),
        (
            b"POST /detrix/wake HTTP/1.0\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            415,
        ),
        (
            b"POST /detrix/wake HTTP/1.0\r\nContent-Type: application/json\r\n"
            b'Content-Length: 25\r\n\r\n{"daemon_url": "ftp://x"}',
            400,
        ),
    ],
)
def test_every_failure_is_a_json_error(plane, request_bytes, status):
    _, port = plane
    code, headers, body = _split(_raw(port, request_bytes))
    assert code == status
    assert headers["Content-Type"] == "application/json"
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    if status == 405:
        assert "Allow" in headers


def test_keep_alive_and_pipelining(plane):
    _, port = plane
    one = b"GET /detrix/health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    last = b"GET /detrix/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    data = _raw(port, one * 5 + last)
    assert data.count(b"HTTP/1.1 200 OK") == 6


def test_an_idle_connection_does_not_hold_the_control_plane(plane):
    _, port = plane
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    partial = socket.create_connection(("127.0.0.1", port))
    partial.sendall(b"GET /detrix/status HTTP/1.1\r\nHost: loc")  # and then nothing
    try:
        start = time.perf_counter()
        code, _, _ = _split(_raw(port, b"GET /detrix/status HTTP/1.0\r\n\r\n"))
        assert code == 200
        assert time.perf_counter() - start < 1.0
    finally:
        for s in [*idle, partial]:
            s.close()


def test_a_slow_client_gets_408(plane, monkeypatch):
    _, port = plane
    monkeypatch.setattr(control_loop, "REQUEST_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /detrix/status HTTP/1.1\r\n")
        time.sleep(0.1)
        s.sendall(b"Host: localhost\r\n")  # ... and never finishes
        data = s.recv(65536)
    assert _split(data)[0] == 408


def test_many_concurrent_connections_are_all_served(plane):
    _, port = plane
    results: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        code = _split(_raw(port, b"GET /detrix/status HTTP/1.0\r\n\r\n", timeout=15))[0]
        with lock:
            results.append(code)

    threads = [threading.Thread(target=client) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(200) == 200


def test_ipv6_bind(home):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    detrix_auto.init(detrix_home=str(home), control_host="::1")
    try:
        port = detrix_auto.status()["control_port"]
        code, _, body = _split(
            _raw(
                port,
                b"GET /detrix/status HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n",
                host="::1",
            )
        )
        assert code == 200 and body["control_host"] == "::1"
    finally:
        detrix_auto.shutdown()


def test_port_already_taken_is_a_control_plane_error(home):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(detrix_auto.ControlPlaneError, match="DETRIX_CONTROL_PORT"):
            detrix_auto.init(detrix_home=str(home), control_port=port)
    assert not _runtime_started()


def _runtime_started() -> bool:
    from detrix_auto import _runtime

    return _runtime.is_started()


def test_discovery_record_is_private_and_removed_on_shutdown(home):
    detrix_auto.init(detrix_home=str(home))
    import os

    record = home / "clients" / f"{os.getpid()}.json"
    try:
        assert record.exists()
        assert (record.stat().st_mode & 0o777) == 0o600
        assert ((home / "clients").stat().st_mode & 0o777) == 0o700
        data = json.loads(record.read_text())
        assert data["control_port"] == detrix_auto.status()["control_port"]
    finally:
        detrix_auto.shutdown()
    assert not record.exists()


def test_shutdown_then_init_again(home):
    detrix_auto.init(detrix_home=str(home))
    first = detrix_auto.status()["control_port"]
    detrix_auto.shutdown()
    assert detrix_auto.status()["control_port"] == 0  # nothing listens after shutdown
    detrix_auto.init(detrix_home=str(home))
    try:
        assert detrix_auto.status()["control_port"] > 0
    finally:
        detrix_auto.shutdown()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", first), timeout=1).close()


def test_a_half_closed_client_still_gets_its_wake_answer(plane):
    """`nc -N` style: send the request, shut down writing, read the answer."""
    _, port = plane
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /detrix/wake HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    code, _, body = _split(data)
    assert code == 503 and "Cannot connect to daemon" in body["error"]


def test_a_backlog_behind_a_running_wake_is_bounded(plane):
    _, port = plane
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /detrix/wake HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            for _ in range(64):
                s.sendall(b"x" * 65536)
        except OSError:
            pass  # dropped: what we want
    assert _split(_raw(port, b"GET /detrix/health HTTP/1.0\r\n\r\n"))[0] == 200


def test_a_wake_still_running_when_the_loop_stops_gives_the_interval_back():
    """A wake holds quick GIL hand-offs until the loop takes its answer. When the loop
    stops while the wake still runs (``shutdown()`` gives up waiting for it, or at
    exit), nobody takes that answer, and the hold must end anyway: else the host's
    switch interval would stay at 0.1 ms for good (seen in CI: a later test in the
    same process found the interval short)."""
    import sys

    from detrix_auto import _handoff
    from detrix_auto.control.http import Request

    running, finish = threading.Event(), threading.Event()

    def slow_wake() -> bytes:
        running.set()
        finish.wait(10)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    class OneSlowWake:
        def handle(self, request: Request, conn: object) -> control_loop.Deferred:
            return control_loop.Deferred(slow_wake, keep_alive=False)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    from detrix_auto.control import fds

    loop = control_loop.EventLoop(listener, fds.identity(listener), OneSlowWake())
    server = threading.Thread(target=loop.run)
    before = sys.getswitchinterval()
    try:
        server.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as s:
            s.sendall(b"POST /detrix/wake HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert running.wait(10)
            assert sys.getswitchinterval() == pytest.approx(_handoff.WAKE_SWITCH_INTERVAL)
            loop.stop()
            server.join(10)
            assert not server.is_alive()
            finish.set()  # the wake ends after the loop did
            deadline = time.monotonic() + 10
            while _handoff._holders and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        finish.set()
        loop.stop()
        listener.close()
    assert _handoff._holders == 0
    assert sys.getswitchinterval() == before


def test_a_connection_whose_number_the_host_reused_while_it_waited_is_left_alone():
    """The host closes the number of a connection we accepted (``closerange``) while
    our thread waits (the first request's imports, a fork) and opens a pipe there:
    the control plane must neither set the pipe non-blocking nor close it."""
    import os

    from detrix_auto.control import fds
    from detrix_auto.control import server as control_server

    srv = control_server.ControlServer("127.0.0.1", 0, lambda: object())
    client = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    fd, peer = srv._sock._accept()
    accepted = socket.socket(fileno=fd)
    ident = fds.identity(accepted)
    read_end, write_end = os.pipe()
    try:
        os.dup2(read_end, fd)  # the host's pipe now has our connection's number
        srv._phase = control_server.SERVING  # as if this thread had accepted it
        srv._serve_connections((accepted, peer, ident), fresh=False)
        assert os.get_blocking(fd), "the host's pipe was set non-blocking"
        os.write(write_end, b"x")
        assert os.read(fd, 1) == b"x", "the host's pipe was closed or read"
    finally:
        accepted.detach()
        for number in (fd, read_end, write_end):
            os.close(number)
        client.close()
        srv.close()
