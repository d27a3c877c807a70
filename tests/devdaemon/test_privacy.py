"""The embedded daemon is private (issue 11, item 7): attacked as another local user.

Every attack runs in a process of the second user (``other_user``,
``as_other_user``) against a daemon of ours with a registered connection: list
the connections (pids, debug ports, workspaces), delete one, register a port
of the attacker's choosing (a DAP attach to any local port), read and add
metrics, read events. Each is also sent with the daemon's token, to show the
attack code works and that the token, not the attacker's luck, is the guard.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from detrix_auto.devdaemon import STATUS_CONNECTED, DevDaemon

SECURITY = Path(__file__).resolve().parent.parent / "security"
if str(SECURITY) not in sys.path:
    sys.path.insert(0, str(SECURITY))

from sechelpers import as_other_user  # noqa: E402

API = "/api/v1/connections"

#: Runs as the other user: each request over a raw socket, the status codes back.
ATTACK = """
results = []
for method, path, body, headers in job["requests"]:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{job['address'][1]}",
             "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    raw = exchange(job["address"], ("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode() + data)
    head, _, rest = raw.partition(b"\\r\\n\\r\\n")
    results.append([int(head.split(b" ", 2)[1]), rest.decode("utf-8", "replace")])
print(json.dumps(results))
"""


class Trap:
    """A listening port that records whether anything connected to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def attack(user: tuple[int, int], daemon: DevDaemon, requests: list[Any]) -> list[Any]:
    return as_other_user(user, ATTACK, address=["127.0.0.1", daemon.port], requests=requests)


def the_attacks(cid: str, trap_port: int, token: str | None) -> list[Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    register = {
        "host": "127.0.0.1",
        "port": trap_port,
        "language": "python",
        "name": "evil",
        "workspaceRoot": "/tmp",
        "hostname": "h",
    }
    metric = {
        "name": "steal",
        "connectionId": cid,
        "location": {"file": "/etc/x.py", "line": 1},
        "expressions": ["__import__('os').getcwd()"],
        "enabled": True,
    }
    return [
        ["GET", API, None, headers],
        ["GET", f"{API}/{cid}", None, headers],
        ["POST", API, register, headers],
        ["GET", "/api/v1/metrics", None, headers],
        ["POST", "/api/v1/metrics", metric, headers],
        ["GET", "/api/v1/events", None, headers],
        ["GET", "/api/v1/status", None, headers],
        ["POST", f"{API}/cleanup", None, headers],
        ["DELETE", f"{API}/{cid}", None, headers],
    ]


@pytest.fixture
def trap() -> Any:
    trap = Trap()
    yield trap
    trap.close()


@pytest.mark.parametrize("token", [None, "t0ken-of-the-owner"])
def test_another_user_can_do_nothing_but_health(
    other_user: Any, trap: Trap, reg_body: Any, http: Any, debuggee: Any, token: str | None
) -> None:
    with DevDaemon(token=token) as daemon:
        cid = http(daemon.url, "POST", API, reg_body(debuggee)).json()["connectionId"]
        results = attack(other_user, daemon, [["GET", "/health", None, {}]])
        assert results[0][0] == 200  # the real daemon's health is public too
        every_route = [
            *the_attacks(cid, trap.port, None),
            ["GET", "/status", None, {}],
            ["GET", "/api/v1/metrics/1", None, {}],
            ["PUT", "/api/v1/metrics/1", {"enabled": False}, {}],
            ["POST", "/api/v1/metrics/1/enable", None, {}],
            ["POST", "/api/v1/metrics/1/disable", None, {}],
            ["GET", "/api/v1/metrics/1/value", None, {}],
            ["GET", "/api/v1/metrics/1/history", None, {}],
            ["DELETE", "/api/v1/metrics/1", None, {}],
            ["GET", "/api/v1/events?metricId=1", None, {}],
        ]
        results = attack(other_user, daemon, every_route)
        statuses = [status for status, _ in results]
        assert statuses == [401] * len(statuses), results
        for _, body in results:
            assert f"uid {other_user[0]}" in json.loads(body)["error"]
            assert str(debuggee.port) not in body and "/srv/app" not in body  # nothing leaks
        wrong = attack(other_user, daemon, the_attacks(cid, trap.port, "guess"))
        assert [s for s, _ in wrong] == [401] * len(wrong)
        assert daemon.connections[cid].status == STATUS_CONNECTED  # not deleted
        assert trap.hits == 0 and daemon.attaches == 1  # no attach to the attacker's port
        assert daemon.metrics == {}
        if token is not None:
            # The same attack code with the token gets through: it is the token that guards.
            granted = attack(other_user, daemon, the_attacks(cid, trap.port, token))
            assert [s for s, _ in granted] == [200, 200, 500, 200, 201, 200, 200, 200, 204]
            assert trap.hits >= 1  # it did make the daemon connect to that port


def test_an_apps_uid_may_register_and_nothing_more(
    other_user: Any, trap: Trap, reg_body: Any, http: Any, debuggee: Any
) -> None:
    with DevDaemon(token="owner", app_uids=[other_user[0]]) as daemon:
        cid = http(daemon.url, "POST", API, reg_body(debuggee)).json()["connectionId"]
        results = attack(other_user, daemon, the_attacks(cid, trap.port, None))
        by_route = {
            f"{r[0]} {r[1]}": status for r, (status, _) in zip(the_attacks(cid, 0, None), results)
        }
        assert by_route[f"POST {API}"] == 500  # past access: the attach to the trap failed
        assert by_route[f"GET {API}/{cid}"] == 200
        assert by_route[f"DELETE {API}/{cid}"] == 204
        for route in (
            f"GET {API}",
            "GET /api/v1/metrics",
            "POST /api/v1/metrics",
            "GET /api/v1/events",
            "GET /api/v1/status",
            f"POST {API}/cleanup",
        ):
            assert by_route[route] == 401, route


def _start_module(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "detrix_auto.devdaemon", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or dict(os.environ),
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready, proc.stderr.read() if proc.stderr else ""
    return proc, proc.stdout.readline().strip()


def _stop_module(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _out, err = proc.communicate(timeout=10)
    return err


READ_PROC = """
out = {}
for name in ("cmdline", "environ"):
    try:
        with open(f"/proc/{job['pid']}/{name}", "rb") as fh:
            out[name] = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        out[name] = f"error: {exc.strerror}"
print(json.dumps(out))
"""


def test_the_module_says_when_it_is_unauthenticated_and_refuses_other_users(
    other_user: Any, tmp_path: Path
) -> None:
    proc, url = _start_module([])
    try:
        port = int(url.rsplit(":", 1)[1])
        results = as_other_user(
            other_user, ATTACK, address=["127.0.0.1", port], requests=[["GET", API, None, {}]]
        )
        assert results[0][0] == 401
    finally:
        err = _stop_module(proc)
    assert "is unauthenticated; processes of your user (and root) may use its API" in err
    assert "other local users are refused" in err


def test_a_token_file_stays_out_of_reach_of_other_users(other_user: Any, tmp_path: Path) -> None:
    token = "tok-" + os.urandom(12).hex()
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    proc, url = _start_module(["--token-file", str(path)])
    try:
        seen = as_other_user(other_user, READ_PROC, pid=proc.pid)
        assert token not in seen["cmdline"] and token not in seen["environ"], seen
        port = int(url.rsplit(":", 1)[1])
        results = as_other_user(
            other_user, ATTACK, address=["127.0.0.1", port], requests=[["GET", API, None, {}]]
        )
        assert results[0][0] == 401
    finally:
        _stop_module(proc)
    # A token on the command line is readable by them: the daemon warns about it.
    proc, _url = _start_module(["--token", token])
    try:
        assert token in as_other_user(other_user, READ_PROC, pid=proc.pid)["cmdline"]
    finally:
        err = _stop_module(proc)
    assert "--token is visible to every local user in ps: prefer --token-file" in err


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc\n")
    path.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "detrix_auto.devdaemon", "--token-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "readable by other users" in done.stderr and "Traceback" not in done.stderr
