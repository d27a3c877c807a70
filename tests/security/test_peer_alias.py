"""Issue 11, attack 5: aliasing the peer-uid lookup onto our own listener.

With the control plane on a wildcard address and a fixed port, another user
binds ``127.0.0.N:PORT`` (``SO_REUSEADDR``) before we listen, connects from
it to our port, sends ``POST /detrix/wake`` and resets the connection. The
kernel's lookup of that 4-tuple then finds no connection and falls back to
the listener bound to ``*:PORT``: ours. A lookup that accepted that answer
let the request pass as our own (``uid=<victim> auth=local``).
"""

from __future__ import annotations

import socket
import sys

import pytest
from sechelpers import TOKEN, FaultDaemon, spawn_as_other_user, start_app
from support import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

#: How many aliased attempts: one source address each (127.0.0.2 ...).
ROUNDS = 8

#: SO_LINGER {on, 0 s}: close() sends a reset (no struct module after the uid switch).
LINGER = """\
LINGER_RESET = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
"""

PREBIND = (
    LINGER
    + """\
socks = []
for n in range(job["rounds"]):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((f"127.0.0.{n + 2}", job["port"]))
    socks.append(sock)
print("bound", flush=True)
sys.stdin.readline()  # the victim listens now
for sock in socks:
    sock.connect(("127.0.0.1", job["port"]))
    sock.sendall(job["request"].encode("latin-1"))
    # Reset at once: the kernel forgets the connection, and a lookup of its
    # 4-tuple would fall back to the listener on *:PORT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()
print("done", flush=True)
"""
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def test_a_reset_connection_from_an_aliased_address_is_not_taken_for_us(tmp_path, other_user):
    port = _free_port()
    body = "{}"
    request = (
        f"POST /detrix/wake HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n{body}"
    )
    attacker = spawn_as_other_user(other_user, PREBIND, port=port, rounds=ROUNDS, request=request)
    assert attacker.stdout is not None and attacker.stdin is not None
    try:
        assert attacker.stdout.readline().strip() == "bound"
        with FaultDaemon() as daemon:
            app = start_app(
                tmp_path / "victim",
                allow=[daemon.url],
                DETRIX_DAEMON_URL=daemon.url,
                DETRIX_TOKEN=TOKEN,
                DETRIX_CONTROL_HOST="0.0.0.0",
                DETRIX_CONTROL_PORT=str(port),
                DETRIX_LOG_LEVEL="info",
            )
            try:
                attacker.stdin.write("\n")
                attacker.stdin.flush()
                assert attacker.stdout.readline().strip() == "done"

                def audit() -> list[str]:
                    return [
                        line
                        for line in app.stderr().splitlines()
                        if " wake peer=127.0.0." in line and f":{port} " in line
                    ]

                lines = wait_until(lambda: len(audit()) >= ROUNDS, timeout=20) and audit()
                assert len(lines) == ROUNDS, f"not every attempt was served:\n{app.stderr()}"
                assert daemon.count("health") == 0, "an aliased wake reached the daemon"
                for line in lines:
                    # Truthful: the owner is the attacker (read before the reset) or unknown.
                    assert "auth=none outcome=refused (unauthorized)" in line, line
                    assert f"uid={other_user[0]} " in line or "uid=? " in line, line
            finally:
                app.stop()
    finally:
        attacker.kill()
        attacker.communicate(timeout=10)


def test_the_aliased_lookup_itself_answers_unknown(other_user):
    """The same race, made deterministic: the lookup runs after the reset, every time."""
    from detrix_auto import netowner

    port = _free_port()
    attacker = spawn_as_other_user(
        other_user,
        LINGER
        + """\
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.2", job["port"]))
print("bound", flush=True)
sys.stdin.readline()
sock.connect(("127.0.0.1", job["port"]))
print("connected", flush=True)
sys.stdin.readline()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
sock.close()
print("reset", flush=True)
sys.stdin.readline()
""",
        port=port,
    )
    assert attacker.stdout is not None and attacker.stdin is not None

    def step(expect: str) -> None:
        attacker.stdin.write("\n")  # type: ignore[union-attr]
        attacker.stdin.flush()  # type: ignore[union-attr]
        assert attacker.stdout.readline().strip() == expect  # type: ignore[union-attr]

    try:
        assert attacker.stdout.readline().strip() == "bound"
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("0.0.0.0", port))
            server.listen()
            server.settimeout(15)
            step("connected")
            conn, peer = server.accept()
            with conn:
                assert peer == ("127.0.0.2", port)
                local = conn.getsockname()
                assert netowner.peer_uid(peer, local) == other_user[0]
                step("reset")
                # The kernel now answers this 4-tuple with our own listener.
                assert netowner.peer_uid(peer, local) is None
    finally:
        attacker.kill()
        attacker.communicate(timeout=10)
