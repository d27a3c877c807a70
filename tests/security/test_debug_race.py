"""The debug listener is ours from its first byte: another user never gets a DAP session.

Each test is the attack as another local user runs it:

* the *first-connection race*: the victim wakes with a fixed debug port, and the attacker
  spins on ``connect()`` to that port so that it is the very first client after ``listen()``
  (the tightest race there is; watching ``/proc/net/tcp`` for a new port is slower). Run many
  times, with the CPUs loaded, the attacker must never get a DAP answer;
* the *failed wake*: registration fails (the daemon answers 500), and the attacker connects
  at leisure afterwards. Nothing may be accepted while the client is not awake.

"Got a DAP session" is measured as debugpy answering the attacker's ``initialize``: a
session that answers takes ``evaluate`` and logpoints, which run code in the victim.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sechelpers import FaultDaemon, spawn_as_other_user
from support import quiet_port, wait_until

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sockets"),
    pytest.mark.debugpy_contract,
]

#: How many races one test run; DETRIX_TEST_RACE_RUNS=50 for the full evidence run.
RACE_RUNS = int(os.environ.get("DETRIX_TEST_RACE_RUNS", "8"))

#: The attacker: connect to the port as early as possible, say initialize, report the answer.
SPIN_AND_ATTACH = """
port = job["port"]
body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                   "arguments": {"clientID": "attacker", "adapterID": "python"}}).encode()
print("ready", flush=True)
deadline = time.monotonic() + job["seconds"]
sock = None
while time.monotonic() < deadline:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    sock = s
    break
received = b""
closed = False  # the other end closed the connection (the gate refused it)
if sock is not None:
    sock.settimeout(job["answer_wait"])
    try:
        sock.sendall(b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            received += chunk
    except ConnectionResetError:
        closed = True
    except OSError:
        pass
print(json.dumps({"connected": sock is not None, "received": len(received), "closed": closed,
                  "head": received[:200].decode("latin-1")}), flush=True)
"""


def _attacker(other_user, port: int, seconds: float, answer_wait: float = 3.0):
    proc = spawn_as_other_user(
        other_user, SPIN_AND_ATTACH, port=port, seconds=seconds, answer_wait=answer_wait
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _result(proc: subprocess.Popen[str]) -> dict:
    """The attacker's report. Read through the same text stream as its "ready" line:
    an attacker refused at once has printed both before the test read the first, and
    ``communicate()`` reads the pipe itself, past what that stream holds already."""
    import json

    proc.wait(timeout=60)  # one short line: the pipe never fills
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert out.strip(), f"the attacker printed no report (exit {proc.returncode})"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def cpu_load():
    """Busy loops on every CPU for the duration of the test: races are won under load."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.slow
@pytest.mark.timeout(60 + 10 * RACE_RUNS)
def test_the_first_connection_after_listen_is_gated(spawn, daemon, other_user, cpu_load):
    for attempt in range(RACE_RUNS):
        port = quiet_port()  # nobody but this app ever listens there
        app = spawn(env={"DETRIX_DEBUG_PORT": str(port), "DETRIX_LOG_LEVEL": "info"})
        attacker = _attacker(other_user, port, seconds=60, answer_wait=30)
        try:
            code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
        except OSError as exc:
            attacker.kill()
            out, err = app.stop()
            raise AssertionError(f"run {attempt}: wake failed ({exc!r}): {out}\n{err}") from None
        result = _result(attacker)
        assert result["connected"], f"run {attempt}: the attacker never reached the port"
        if result["received"] or not result["closed"]:
            _, err = app.stop()
            raise AssertionError(f"run {attempt}: the attacker got a DAP session: {result}\n{err}")
        # The owner's wake is unharmed, on the port the attacker raced for.
        assert code == 200, body
        assert body["debug_port"] == port
        assert app.status()["state"] == "awake"
        assert app.request("POST", "/detrix/sleep")[0] == 200
        _, err = app.stop()
        assert f"uid {other_user[0]} is not this process's user" in err, err


def test_a_failed_wake_leaves_nothing_to_attach_to(spawn, other_user):
    with FaultDaemon() as refusing:  # healthy, but answers every registration with 500
        app = spawn(env={"DETRIX_LOG_LEVEL": "info"})
        code, _ = app.request("POST", "/detrix/wake", {"daemon_url": refusing.url})
        assert code == 503
        status = app.status()
        assert status["state"] == "sleeping"
        port = status["debug_port"]
        assert port > 0
        # Seconds later, no race at all: the attacker simply connects.
        time.sleep(0.5)
        result = _result(_attacker(other_user, port, seconds=10, answer_wait=30))
        assert result["received"] == 0 and result["closed"], result
        _, err = app.stop()
        assert "refused: the client is not awake" in err, err


def test_the_owner_is_refused_too_while_asleep_after_a_failed_wake(spawn):
    """Not only other users: after a failed wake nothing is accepted (a restarted daemon of
    ours re-attaching on its own would otherwise observe a process that says it sleeps)."""
    import socket

    with FaultDaemon() as refusing:  # healthy, but answers every registration with 500
        app = spawn()
        assert app.request("POST", "/detrix/wake", {"daemon_url": refusing.url})[0] == 503
        port = app.status()["debug_port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            body = b'{"seq": 1, "type": "request", "command": "initialize", "arguments": {}}'
            sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            sock.settimeout(3)
            try:
                data = sock.recv(100)
            except (TimeoutError, ConnectionResetError):
                data = b""
        assert data == b""
        wait_until(lambda: app.status()["state"] == "sleeping", timeout=5)
