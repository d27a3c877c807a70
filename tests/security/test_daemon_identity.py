"""Issue 11, attack 3: the daemon must prove who it is before it gets anything.

Another local user binds the port our daemon should be on (8090 by default,
or whatever ``DETRIX_DAEMON_URL``, ``daemon.pid`` or a wake body names) and
waits: a client that trusts the port sends it ``Authorization: Bearer
<token>`` and the debug port, and the impostor's attach would run code in
the host. Every test here runs that impostor as the other user
(:class:`sechelpers.ImpostorDaemon`) and asserts that it receives no request
at all (the connection is checked before its first byte), that the wake is
refused with a message naming the owner, and that the audit line says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sechelpers import TOKEN, FaultDaemon, ImpostorDaemon, raw_http, start_app
from support import clean_env, wait_until

from detrix_auto.config import resolve
from detrix_auto.errors import ConfigError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

JSON = {"Content-Type": "application/json"}
HERE = Path(__file__).resolve().parent


def _wake(app, body: str = "{}", headers: dict[str, str] | None = None):
    return raw_http(
        ("127.0.0.1", app.port),
        "POST",
        "/detrix/wake",
        headers={**JSON, **(headers or {})},
        body=body,
        timeout=60,
    )


def _status(app) -> dict:
    response = raw_http(("127.0.0.1", app.port), "GET", "/detrix/status")
    assert response.status == 200
    return response.body  # type: ignore[no-any-return]


def _held_by(port: int, user: tuple[int, int]) -> str:
    return f"port {port} on 127.0.0.1 is held by uid {user[0]} (detrixsec), not by you"


def _audit(app, verb: str = "wake") -> list[str]:
    return [line for line in app.stderr().splitlines() if f" {verb} peer=" in line]


def _assert_refused(app, impostor: ImpostorDaemon, response, other_user) -> None:
    expected = _held_by(impostor.port, other_user)
    assert response.status == 503, response.body
    assert expected in response.error
    assert "DETRIX_DAEMON_USER=detrixsec" in response.error
    assert impostor.requests == [], "the impostor received a request"
    assert impostor.tokens() == []
    status = _status(app)
    assert status["state"] == "sleeping"
    assert status["debug_port_active"] is False, "the debugger listened for the impostor"
    assert expected in str(status["last_error"])
    lines = wait_until(lambda: _audit(app), timeout=10)
    assert lines and f"outcome=failed (503): {expected}" in lines[-1], lines
    assert TOKEN not in app.stderr()


# -- a configured URL, a wake-body override ---------------------------------------------


def test_an_impostor_on_the_configured_port_gets_nothing(tmp_path, other_user):
    with ImpostorDaemon(other_user) as impostor:
        app = start_app(
            tmp_path / "victim",
            allow=[impostor.url],
            DETRIX_DAEMON_URL=impostor.url,
            DETRIX_TOKEN=TOKEN,
            DETRIX_LOG_LEVEL="info",
        )
        try:
            _assert_refused(app, impostor, _wake(app), other_user)
        finally:
            app.stop()


def test_a_token_holders_override_is_checked_the_same_way(tmp_path, other_user):
    with FaultDaemon() as honest, ImpostorDaemon(other_user) as impostor:
        app = start_app(
            tmp_path / "victim",
            allow=[honest.url, impostor.url],
            DETRIX_DAEMON_URL=honest.url,
            DETRIX_TOKEN=TOKEN,
            DETRIX_LOG_LEVEL="info",
        )
        try:
            response = _wake(
                app,
                json.dumps({"daemon_url": impostor.url}),
                {"Authorization": f"Bearer {TOKEN}"},
            )
            _assert_refused(app, impostor, response, other_user)
            assert honest.calls == []
        finally:
            app.stop()


def test_the_account_daemon_user_names_is_trusted(tmp_path, other_user):
    """A system daemon under its own account: trusted only because the setting names it."""
    with ImpostorDaemon(other_user) as daemon:
        app = start_app(
            tmp_path / "victim",
            allow=[daemon.url],
            DETRIX_DAEMON_URL=daemon.url,
            DETRIX_DAEMON_USER="detrixsec",
            DETRIX_TOKEN=TOKEN,
            DETRIX_REGISTER_TIMEOUT="3",
        )
        try:
            _wake(app)
            wait_until(lambda: any(r["method"] == "POST" for r in daemon.requests), timeout=20)
            registration = next(r for r in daemon.requests if r["method"] == "POST")
            assert registration["authorization"] == f"Bearer {TOKEN}"
            assert json.loads(registration["body"])["port"] > 0
        finally:
            app.stop()


# -- daemon.pid -------------------------------------------------------------------------


def _home_with_pid_file(root: Path, impostor: ImpostorDaemon, how: str, other_user) -> Path:
    """A HOME whose ``detrix/daemon.pid`` names the impostor, made untrustworthy ``how``."""
    if how == "parent owned by the other user":
        root.mkdir(mode=0o755)
        os.chown(root, *other_user)
    else:
        root.mkdir(mode=0o700)
    detrix = root / "detrix"
    detrix.mkdir(mode=0o700)
    pid_file = detrix / "daemon.pid"
    pid_file.write_text(
        json.dumps(
            {"pid": impostor.proc.pid, "host": "127.0.0.1", "ports": {"http": impostor.port}}
        )
    )
    pid_file.chmod(0o644)
    if how == "directory writable by others":
        detrix.chmod(0o777)
    elif how == "file owned by the other user":
        os.chown(pid_file, *other_user)
    elif how == "file writable by others":
        pid_file.chmod(0o666)
    return root


@pytest.mark.parametrize(
    "how",
    [
        "directory writable by others",
        "file owned by the other user",
        "file writable by others",
        "parent owned by the other user",
    ],
)
def test_a_daemon_pid_file_others_could_write_is_ignored(tmp_path, other_user, how):
    with ImpostorDaemon(other_user) as impostor:
        home = _home_with_pid_file(tmp_path / "user", impostor, how, other_user)
        app = start_app(
            tmp_path / "victim",
            allow=[impostor.url],  # the real client, were the file believed
            HOME=str(home),
            DETRIX_TOKEN=TOKEN,
        )
        try:
            response = _wake(app)
            assert response.status == 503
            assert impostor.connections == 0, "the pid file was believed"
            assert _status(app)["daemon_url"] == "http://127.0.0.1:8090"
            assert f"{home}/detrix/daemon.pid is ignored: " in app.stderr()
            assert app.stderr().count("daemon.pid is ignored") == 1
        finally:
            app.stop()


# -- the default port, squatted in a private network namespace ---------------------------

SCENARIO = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from sechelpers import TOKEN, ImpostorDaemon, raw_http, start_app
    from support import wait_until

    work, uid, gid = Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    home = work / "user"
    home.mkdir(mode=0o700)
    result = {}
    with ImpostorDaemon((uid, gid), port=8090) as impostor:
        app = start_app(
            work / "victim",
            allow=["http://127.0.0.1:8090"],
            HOME=str(home),
            DETRIX_TOKEN=TOKEN,
            DETRIX_LOG_LEVEL="info",
        )
        try:
            address = ("127.0.0.1", app.port)
            response = raw_http(
                address, "POST", "/detrix/wake",
                headers={"Content-Type": "application/json"}, body="{}", timeout=60,
            )
            status = raw_http(address, "GET", "/detrix/status").body
            wait_until(lambda: " wake peer=" in app.stderr(), timeout=10)
            result = {
                "wake": [response.status, response.error],
                "status": status,
                "requests": impostor.requests,
                "tokens": impostor.tokens(),
                "stderr": app.stderr(),
            }
        finally:
            app.stop()
    print(json.dumps(result))
    """
)


def test_an_impostor_on_the_default_port_gets_nothing(tmp_path, other_user):
    """No DETRIX_DAEMON_URL, no daemon.pid: 127.0.0.1:8090, bound first by the other user.

    Run in a network namespace of its own (``unshare --net``), so that port
    8090 is free whatever runs on this machine and parallel runs never collide.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a private network namespace")
    probe = subprocess.run(
        [unshare, "--net", "--", ip, "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace: {probe.stderr.strip()}")
    work = tmp_path / "netns"
    work.mkdir()
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    proc = subprocess.run(
        [
            unshare,
            "--net",
            "--",
            "sh",
            "-c",
            f'{ip} link set lo up && exec "$@"',
            "sh",
            sys.executable,
            str(script),
            str(HERE),
            str(HERE.parent),
            str(work),
            str(other_user[0]),
            str(other_user[1]),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = _held_by(8090, other_user)
    assert result["tokens"] == [], "the token reached the impostor on port 8090"
    assert result["requests"] == [], "the impostor on port 8090 received a request"
    assert result["wake"][0] == 503 and expected in result["wake"][1]
    assert result["status"]["state"] == "sleeping"
    assert result["status"]["debug_port_active"] is False
    audit = [line for line in result["stderr"].splitlines() if " wake peer=" in line]
    assert len(audit) == 1 and f"auth=local outcome=failed (503): {expected}" in audit[0]


# -- the setting ----------------------------------------------------------------------------


def test_daemon_user_is_a_name_or_a_uid(other_user):
    assert resolve({}, {"DETRIX_DAEMON_USER": "detrixsec"}).daemon_uid == other_user[0]
    assert resolve({}, {"DETRIX_DAEMON_USER": str(other_user[0])}).daemon_uid == other_user[0]
    assert resolve({"daemon_user": "detrixsec"}, {}).daemon_uid == other_user[0]
    assert resolve({"daemon_user": 1234}, {}).daemon_uid == 1234
    assert resolve({}, {}).daemon_uid is None
    with pytest.raises(ConfigError, match="Invalid DETRIX_DAEMON_USER='no-such-user-here'"):
        resolve({}, {"DETRIX_DAEMON_USER": "no-such-user-here"})
    for bad in ("a\x00b", "-1", "4294967295", True):
        with pytest.raises(ConfigError, match="a user name of this machine or a numeric uid"):
            resolve({"daemon_user": bad}, {})


def test_doctor_says_the_pid_file_is_ignored_and_why(tmp_path, other_user):
    with ImpostorDaemon(other_user) as impostor:
        home = _home_with_pid_file(
            tmp_path / "user", impostor, "directory writable by others", other_user
        )
        proc = subprocess.run(
            [sys.executable, "-m", "detrix_auto", "doctor"],
            env=clean_env(tmp_path / "dhome", HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    out = proc.stdout + proc.stderr
    assert f"{home}/detrix/daemon.pid is ignored: directory {home}/detrix is writable" in out
    assert impostor.connections == 0


def test_doctor_says_whose_daemon_answers(tmp_path, other_user):
    with ImpostorDaemon(other_user) as impostor:
        for user, level in (("", "error"), ("detrixsec", "ok")):
            env = clean_env(tmp_path, DETRIX_DAEMON_URL=impostor.url, DETRIX_TOKEN=TOKEN)
            if user:
                env["DETRIX_DAEMON_USER"] = user
            proc = subprocess.run(
                [sys.executable, "-m", "detrix_auto", "doctor", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            found = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "daemon"]
            assert [f["level"] for f in found] == [level], found
            if level == "error":
                assert _held_by(impostor.port, other_user) in found[0]["text"]
        assert impostor.tokens() == []


def test_a_loopback_daemon_whose_owner_cannot_be_read_gets_nothing(monkeypatch):
    """Fail closed: when the kernel names no owner (netlink and /proc both silent, as
    for a port NAT forwards elsewhere), a loopback daemon is refused, not trusted."""
    from detrix_auto import daemon as daemon_module
    from detrix_auto import netowner
    from detrix_auto.errors import DaemonError

    def unavailable(*args: object) -> None:
        raise netowner._Unavailable

    monkeypatch.setattr(netowner, "_diag_lookup", unavailable)
    monkeypatch.setattr(netowner, "_proc_rows", list)
    with FaultDaemon() as honest:
        client = daemon_module.HttpDaemonClient(honest.url)
        with pytest.raises(DaemonError, match="cannot tell which user holds port"):
            client.health(5)
        client.close()
        assert honest.calls == []
