"""The debug gate: debugpy's open port refuses other users, and everyone while asleep."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from .sechelpers import as_other_user

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc"),
    pytest.mark.debugpy_contract,
]

INITIALIZE = {
    "seq": 1,
    "type": "request",
    "command": "initialize",
    "arguments": {"clientID": "probe", "adapterID": "python"},
}


def _dap(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _answered(port: int) -> bool:
    """Connect as ourselves and send initialize: does debugpy answer?"""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_dap(INITIALIZE))
        try:
            return bool(s.recv(65536))
        except (TimeoutError, ConnectionResetError):
            return False


OTHER_USER_PROBE = """
sock = connect(("127.0.0.1", job["port"]))
body = json.dumps(job["message"]).encode()
sock.sendall(b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
try:
    data = sock.recv(65536)
except (TimeoutError, ConnectionResetError):
    data = b""
print(json.dumps(len(data)))
"""


def test_nobody_attaches_while_asleep(spawn, daemon):
    app = spawn()
    assert app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})[0] == 200
    port = app.status()["debug_port"]
    assert app.request("POST", "/detrix/sleep")[0] == 200
    time.sleep(0.3)
    assert not _answered(port)  # the same user, but the client is asleep
    assert app.status()["state"] == "sleeping"
    # ... and the next wake still attaches.
    assert app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})[0] == 200


def test_another_user_cannot_attach_while_awake(spawn, daemon, other_user):
    app = spawn(env={"DETRIX_LOG_LEVEL": "info"})
    assert app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})[0] == 200
    port = app.status()["debug_port"]
    received = as_other_user(other_user, OTHER_USER_PROBE, port=port, message=INITIALIZE)
    assert received == 0
    # The daemon's session survived the attempt.
    assert app.status()["state"] == "awake"
    assert app.request("POST", "/detrix/sleep")[0] == 200
    _, err = app.stop()
    assert f"uid {other_user[0]} is not this process's user" in err
