"""``ps``, ``status``, ``wake`` and ``sleep`` against real instrumented subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from cli_support import APP, one_error_line
from security.sechelpers import spawn_as_other_user

PS_KEYS = {
    "pid",
    "name",
    "state",
    "control_url",
    "debug_port",
    "debug_port_active",
    "connection_id",
    "daemon_url",
    "last_error",
    "uptime_seconds",
    "started_at",
    "python",
    "argv",
    "command",
    "cwd",
    "error",
    "reachable",
    "forked_from",
    "wakeable",
    "workers",
    "note",
}


def _write_record(home, pid, control_url, name):
    clients = home / "clients"
    clients.mkdir(mode=0o700, exist_ok=True)
    record = {
        "pid": pid,
        "name": name,
        "control_url": control_url,
        "started_at": time.time(),
        "argv": ["python", "fake.py"],
    }
    path = clients / f"{pid}.json"
    path.write_text(json.dumps(record))
    path.chmod(0o600)
    return path


def test_ps_without_processes(cli, home):
    result = cli("ps")
    assert result.returncode == 0
    assert "no instrumented processes" in result.stdout
    result = cli("ps", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == []
    # with DETRIX_ENABLE=1 in the shell the hook runs inside the CLI too: it must not
    # list itself, nor leave a record behind
    result = cli("ps", "--json", env={"DETRIX_ENABLE": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert not list((home / "clients").glob("*.json"))


def test_ps_lists_live_processes_prunes_stale_records_and_hides_unreachable(
    cli, spawn, procs, home
):
    one = spawn(APP, name="alpha.py")
    two = spawn(APP, name="beta.py")
    # a live process whose record points at a port nobody listens on
    quiet = procs([sys.executable, "-c", "import time; time.sleep(60)"])
    _write_record(home, quiet.pid, "http://127.0.0.1:9", f"quiet-{quiet.pid}")
    # a record of a process that has exited
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = _write_record(home, gone.pid, "http://127.0.0.1:9", f"gone-{gone.pid}")

    result = cli("ps", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["pid"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {one.pid, two.pid}  # the unreachable one is left out...
    assert "1 more instrumented process(es) do not answer" in result.stderr  # ...and counted
    assert "ps --all" in result.stderr
    assert not stale.exists()
    for row in rows.values():
        assert set(row) == PS_KEYS
    alpha = rows[one.pid]
    assert alpha["name"] == f"alpha-{one.pid}"
    assert alpha["state"] == "sleeping" and alpha["reachable"] is True
    assert alpha["control_url"] == one.url
    assert alpha["debug_port"] is None and alpha["error"] is None
    assert alpha["argv"][-1].endswith("alpha.py")
    assert alpha["uptime_seconds"] >= 0
    assert alpha["forked_from"] is None and alpha["wakeable"] is True
    assert alpha["workers"] == [] and alpha["note"] is None

    everything = cli("ps", "--all", "--json")
    assert everything.returncode == 0 and everything.stderr == ""
    rows = {row["pid"]: row for row in json.loads(everything.stdout)}
    assert set(rows) == {one.pid, two.pid, quiet.pid}
    assert rows[quiet.pid]["state"] == "unreachable" and rows[quiet.pid]["reachable"] is False
    assert "connection refused" in rows[quiet.pid]["error"]

    table = cli("ps")
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["PID", "NAME", "STATE", "CONTROL", "DEBUG", "UPTIME", "COMMAND"]
    by_pid = {line.split()[0]: line for line in lines}
    assert set(by_pid) == {str(one.pid), str(two.pid)}
    assert "sleeping" in by_pid[str(one.pid)] and "alpha.py" in by_pid[str(one.pid)]

    table = cli("ps", "--all")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    row = next(line for line in lines if line.startswith(f"{quiet.pid} "))
    assert "unreachable" in row
    # below the table, why it cannot be reached
    why = next(line for line in lines if line.startswith(f"{quiet.pid}: "))
    assert "connection refused" in why


def test_ps_leaves_out_other_users_processes_and_never_asks_them(cli, home, other_user):
    # The other user's "control plane": a listener of their own process, which reports
    # whether anybody connected (ps must not, and never with our token).
    theirs = spawn_as_other_user(other_user, LISTEN_AND_REPORT)
    try:
        assert theirs.stdout is not None
        port = int(theirs.stdout.readline())
        _write_record(home, theirs.pid, f"http://127.0.0.1:{port}", f"theirs-{theirs.pid}")
        hidden = cli("ps", "--json", env={"DETRIX_TOKEN": "our-secret"})
        assert hidden.returncode == 0, hidden.stderr
        assert json.loads(hidden.stdout) == []
        assert "1 more instrumented process(es)" in hidden.stderr
        shown = cli("ps", "--all", "--json", env={"DETRIX_TOKEN": "our-secret"})
        (row,) = json.loads(shown.stdout)
        assert row["pid"] == theirs.pid and row["state"] == "other-user"
        assert row["reachable"] is False
        assert f"uid {other_user[0]}" in row["error"] and "not to you" in row["error"]
        text = cli("ps")
        assert "no instrumented process of this user answers" in text.stdout
        out, _ = theirs.communicate("report\n", timeout=20)
        assert out.strip() == "0", "ps connected to another user's process"
    finally:
        if theirs.poll() is None:
            theirs.kill()
            theirs.wait()


#: Runs as the other user: listen, print the port, and on a line from stdin print how
#: many connections arrived meanwhile.
LISTEN_AND_REPORT = """
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
listener.setblocking(False)
print(listener.getsockname()[1], flush=True)
sys.stdin.readline()
count = 0
while True:
    try:
        listener.accept()
    except BlockingIOError:
        break
    count += 1
print(count, flush=True)
"""


#: An app that ignores its arguments (which are the test's control characters).
QUIET_APP = "import time\nwhile True:\n    time.sleep(0.05)\n"


def test_one_row_per_process_whatever_its_command_line(cli, spawn, home):
    nasty = ["two\nlines", "\x1b[2J\x1b[31mred", "tab\there", "bidi\u202eevil", "it's"]
    app = spawn(QUIET_APP, *nasty, name="nasty.py")
    record = json.loads((home / "clients" / f"{app.pid}.json").read_text())

    table = cli("ps")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 2, table.stdout  # the header and one row
    row = lines[1]
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
    assert "$'two\\nlines'" in row
    assert "$'\\e[2J\\e[31mred'" in row
    assert "$'tab\\there'" in row
    assert "$'bidi\\u202eevil'" in row
    assert "'it'\"'\"'s'" in row  # printable arguments keep their shell quoting
    # JSON keeps the exact arguments (JSON escapes them itself)
    (data,) = json.loads(cli("ps", "--json").stdout)
    assert data["argv"][-len(nasty) :] == nasty == record["argv"][-len(nasty) :]

    # an error line quoting process-supplied text stays one line too: a record that a
    # process of ours could have written, with a name holding a newline and an escape
    forged = dict(record, pid=app.pid, name="evil\nname\x1b[0m", control_url="http://127.0.0.1:9")
    (home / "clients" / f"{app.pid}.json").write_text(json.dumps(forged))
    result = cli("status", str(app.pid))
    assert result.returncode == 1
    line = one_error_line(result)
    assert "evil\\nname\\e[0m" in line and "\x1b" not in result.stderr


def test_status_shows_every_key_the_process_reports(cli, spawn):
    spawn(APP)
    result = cli("status", "app")
    assert result.returncode == 0, result.stderr
    body = json.loads(cli("status", "app", "--json").stdout)
    shown = {line.split()[0] for line in result.stdout.splitlines()[1:]}
    # every key of the status document beyond the named lines appears as it is
    extra = set(body) - {
        "state",
        "name",
        "control_host",
        "control_port",
        "debug_port",
        "debug_port_active",
        "daemon_url",
        "connection_id",
        "last_error",
        "pid",
        "control_url",
    }
    assert "warm" in extra
    assert extra <= shown, (extra, result.stdout)


def test_status_by_pid_name_base_name_and_url(cli, spawn):
    app = spawn(APP)
    for target in (str(app.pid), f"app-{app.pid}", "app", app.url):
        result = cli("status", target, "--json")
        assert result.returncode == 0, (target, result.stderr)
        body = json.loads(result.stdout)
        assert body["state"] == "sleeping"
        assert body["pid"] == app.pid
        assert body["name"] == f"app-{app.pid}"
        assert body["control_url"] == app.url
        assert {"debug_port", "debug_port_active", "daemon_url", "connection_id"} <= set(body)
    human = cli("status", "app")
    assert human.returncode == 0
    assert human.stdout.startswith(f"app-{app.pid} (pid {app.pid})")
    assert "state          sleeping" in human.stdout


def test_wake_and_sleep_with_a_daemon_url(cli, spawn, daemon):
    app = spawn(APP)
    woke = cli("wake", "app", "--daemon-url", daemon.url, "--json")
    assert woke.returncode == 0, woke.stderr
    body = json.loads(woke.stdout)
    assert body["status"] == "awake" and body["pid"] == app.pid
    assert len(body["connection_id"]) == 32 and body["debug_port"] > 0
    assert cli("status", "app", "--json").stdout.count('"awake"') == 1

    again = cli("wake", str(app.pid), "--daemon-url", daemon.url)
    assert again.returncode == 0
    assert "was already awake" in again.stdout

    slept = cli("sleep", "app", "--json")
    assert slept.returncode == 0, slept.stderr
    assert json.loads(slept.stdout)["status"] == "sleeping"
    assert daemon.unregistrations == 1
    human = cli("sleep", "app")
    assert human.returncode == 0 and "was already asleep" in human.stdout


def test_wake_without_a_daemon_says_what_to_do_here(cli, spawn, tmp_path):
    spawn(APP, env={"DETRIX_DAEMON_URL": "http://127.0.0.1:9"})  # nobody listens there
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    path = os.pathsep.join([str(bare_path), "/usr/bin", "/bin"])
    result = cli("wake", "app", env={"PATH": path})
    assert result.returncode == 1
    line = one_error_line(result)
    assert "cannot wake app-" in line and "Cannot connect to daemon at http://127.0.0.1:9" in line
    # no `detrix` here: the advice does not tell the operator to run it as if it were
    assert "not installed here (no `detrix` on PATH)" in line
    assert "https://github.com/flashus/detrix" in line
    # a variable set in this shell cannot reach a running process; --daemon-url can
    assert "--daemon-url" in line and "set DETRIX_DAEMON_URL" not in line
    assert "detrix-auto observe" in line

    detrix = bare_path / "detrix"
    detrix.write_text("#!/bin/sh\nexit 0\n")
    detrix.chmod(0o755)
    result = cli("wake", "app", env={"PATH": path})
    line = one_error_line(result)
    assert "start the Detrix daemon with `detrix serve`" in line
    assert "not installed" not in line


def test_wake_rejects_a_bad_daemon_url(cli, spawn):
    spawn(APP)
    result = cli("wake", "app", "--daemon-url", "ftp://x")
    assert result.returncode == 2
    assert "--daemon-url" in one_error_line(result)


def test_target_errors_read_well(cli, spawn):
    spawn(APP, name="app.py")
    spawn(APP, name="app.py")  # a second process with the same base name
    ambiguous = cli("status", "app")
    assert ambiguous.returncode == 1
    assert "matches 2 processes" in one_error_line(ambiguous)

    unknown = cli("status", "nosuch")
    assert unknown.returncode == 1
    assert "no instrumented process named 'nosuch'" in one_error_line(unknown)

    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        not_instrumented = cli("sleep", str(plain.pid))
    finally:
        plain.kill()
        plain.wait()
    assert not_instrumented.returncode == 1
    line = one_error_line(not_instrumented)
    assert "is not instrumented" in line and "doctor" in line

    gone = cli("status", str(plain.pid))
    assert gone.returncode == 1
    assert f"no process with pid {plain.pid}" in one_error_line(gone)

    nobody = cli("status", "http://127.0.0.1:9")
    assert nobody.returncode == 1
    assert "connection refused" in one_error_line(nobody)


def test_token_is_sent_when_configured_and_401_explains_how(cli, spawn, home):
    locked = spawn(
        APP, env={"DETRIX_TOKEN": "s3cret", "DETRIX_REQUIRE_TOKEN": "1"}, name="locked.py"
    )
    refused = cli("status", "locked")
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert "refused the request" in line and "DETRIX_TOKEN" in line
    assert "s3cret" not in refused.stderr

    wrong = cli("status", "locked", env={"DETRIX_TOKEN": "wrong"})
    assert wrong.returncode == 1
    assert "was refused" in one_error_line(wrong)

    ok = cli("status", "locked", "--json", env={"DETRIX_TOKEN": "s3cret"})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["pid"] == locked.pid

    # the token file works too, when it is private
    token_file = home / "mcp-token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o600)
    assert cli("status", "locked").returncode == 0
    os.unlink(token_file)

    # a configured token that this (token-less) process does not know: still served,
    # because a same-user local caller needs none
    open_app = spawn(APP, name="open.py")
    result = cli("status", "open", "--json", env={"DETRIX_TOKEN": "s3cret"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == open_app.pid
