"""The debugger's own port: loopback whatever the control plane binds, and what sleep leaves."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sechelpers import RunningApp, clean_env, raw_http, start_app

LINUX = sys.platform.startswith("linux")
LISTEN = "0A"


def listeners(port: int) -> list[str]:
    """Every listening socket on ``port`` as ``address`` strings, read from /proc (no probe:
    a stray connection to debugpy's port would be taken for a debugger client)."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    address, _, hex_port = local.partition(":")
                    if state != LISTEN or int(hex_port, 16) != port:
                        continue
                    raw = bytes.fromhex(address)
                    if v6:
                        words = [
                            raw[i : i + 4][::-1] if sys.byteorder == "little" else raw[i : i + 4]
                            for i in range(0, 16, 4)
                        ]
                        found.append(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
                    else:
                        found.append(
                            socket.inet_ntoa(raw[::-1] if sys.byteorder == "little" else raw)
                        )
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def wide(tmp_path_factory, honest_daemon) -> Iterator[RunningApp]:
    """The control plane on every interface (DETRIX_CONTROL_HOST=0.0.0.0)."""
    app = start_app(
        tmp_path_factory.mktemp("wide"),
        allow=[honest_daemon.url],
        DETRIX_DAEMON_URL=honest_daemon.url,
        DETRIX_CONTROL_HOST="0.0.0.0",
        DETRIX_LOG_LEVEL="info",
    )
    try:
        yield app
    finally:
        app.stop()


@pytest.mark.skipif(not LINUX, reason="reads listening sockets from /proc/net/tcp")
def test_a_wide_control_plane_never_widens_the_debugger(wide, honest_daemon):
    address = ("127.0.0.1", wide.port)
    assert listeners(wide.port) == ["0.0.0.0"]
    registrations = honest_daemon.count("register")
    wake = raw_http(address, "POST", "/detrix/wake")
    # The double refuses the registration, but only after debugpy started listening.
    assert wake.status == 503, wake.body
    status = raw_http(address, "GET", "/detrix/status").body
    port = status["debug_port"]
    assert port > 0 and status["debug_port_active"] is True
    assert listeners(port) == ["127.0.0.1"]
    assert honest_daemon.count("register") == registrations + 1
    registered = json.loads(honest_daemon.calls[-1][3])
    assert registered["host"] == "127.0.0.1" and registered["port"] == port


@pytest.mark.skipif(not LINUX, reason="reads listening sockets from /proc/net/tcp")
def test_the_debug_port_stays_open_after_sleep(wide):
    """debugpy cannot close its listener: after sleep the port still listens, on loopback,
    and status says so (SECURITY.md explains what that means)."""
    address = ("127.0.0.1", wide.port)
    status = raw_http(address, "GET", "/detrix/status").body
    if not status["debug_port"]:
        raw_http(address, "POST", "/detrix/wake")
        status = raw_http(address, "GET", "/detrix/status").body
    assert raw_http(address, "POST", "/detrix/sleep").status == 200
    status = raw_http(address, "GET", "/detrix/status").body
    assert status["state"] == "sleeping" and status["connection_id"] is None
    assert status["debug_port_active"] is True
    assert listeners(status["debug_port"]) == ["127.0.0.1"]


@pytest.mark.parametrize("strict", [False, True])
def test_debug_host_beyond_loopback_needs_a_token(tmp_path, strict):
    """DETRIX_DEBUG_HOST=0.0.0.0 without DETRIX_TOKEN is refused: the host runs without us
    (or, with DETRIX_STRICT=1, stops with status 2)."""
    env = clean_env(tmp_path, DETRIX_ENABLE="1", DETRIX_DEBUG_HOST="0.0.0.0")
    if strict:
        env["DETRIX_STRICT"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", "print('host ran')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "DETRIX_DEBUG_HOST" in proc.stderr and "DETRIX_TOKEN" in proc.stderr
    if strict:
        assert proc.returncode == 2 and proc.stdout == ""
    else:
        assert proc.returncode == 0 and proc.stdout == "host ran\n"
    clients = tmp_path / "clients"
    assert not clients.exists() or not list(clients.iterdir())
