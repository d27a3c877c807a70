"""``observe``: live values from an untouched process, and every error a user will meet."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_support import (
    APP,
    BLANK_LINE,
    COMMENT_LINE,
    OBSERVE_LINE,
    clean_env,
    cli_argv,
    json_lines,
    one_error_line,
)

SECURITY = Path(__file__).resolve().parent.parent / "security"
if str(SECURITY) not in sys.path:
    sys.path.insert(0, str(SECURITY))

from sechelpers import as_other_user  # noqa: E402

HIT = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  \[MainThread\]  value=(\d+)  counter=(\d+)$")


def at(app, line=OBSERVE_LINE):
    return f"{app.script}:{line}"


@pytest.mark.e2e
def test_observe_prints_the_real_values_then_puts_the_target_back_to_sleep(cli, spawn):
    app = spawn(APP)
    result = cli(
        "observe", "app", "--at", at(app), "--expr", "value", "--expr", "counter", "--count", "3"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        match = HIT.match(line)
        assert match, line
        assert int(match.group(1)) == int(match.group(2)) * 10  # values at that line, live
    assert f"observing app-{app.pid} (pid {app.pid}) at {app.script}:{OBSERVE_LINE}" in (
        result.stderr
    )
    assert "stopped after 3 hit(s)" in result.stderr and "asleep again" in result.stderr
    status = app.status()
    assert status["state"] == "sleeping" and status["connection_id"] is None


def test_json_lines_and_for_seconds(cli, spawn, tmp_path):
    app = spawn(APP)
    started = time.monotonic()
    # a relative FILE is found in the target's working directory too
    result = cli(
        "observe",
        str(app.pid),
        "--at",
        f"app.py:{OBSERVE_LINE}",
        "--expr",
        "value",
        "--for",
        "1",
        "--json",
        cwd=tmp_path.parent,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    hits = json_lines(result.stdout)
    assert len(hits) >= 5  # about 20 a second
    assert took < 10
    for hit in hits:
        assert set(hit) == {
            "type",
            "time",
            "timestamp",
            "pid",
            "name",
            "location",
            "thread",
            "values",
        }
        assert hit["type"] == "hit" and hit["pid"] == app.pid
        assert hit["name"] == f"app-{app.pid}"
        assert hit["location"] == f"{app.script}:{OBSERVE_LINE}"
        assert hit["thread"] == "MainThread"
        assert set(hit["values"]) == {"value"} and hit["values"]["value"].isdigit()
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", hit["time"])
    stamps = [hit["timestamp"] for hit in hits]
    assert stamps == sorted(stamps)
    values = [int(hit["values"]["value"]) for hit in hits]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_mistakes_are_refused_before_the_target_is_touched(cli, spawn, tmp_path):
    app = spawn(APP)
    cases = [
        (
            ["--at", at(app, BLANK_LINE), "--expr", "value"],
            1,
            f"line {BLANK_LINE} of {app.script} holds no code (a blank line)",
        ),
        (["--at", at(app, COMMENT_LINE), "--expr", "value"], 1, "holds no code (`# the logpoint"),
        (["--at", at(app, 99), "--expr", "value"], 1, "has only 9 line(s)"),
        (["--at", f"{tmp_path}/missing.py:3", "--expr", "value"], 1, "missing.py does not exist"),
        (["--at", str(app.script), "--expr", "value"], 2, "is not FILE:LINE"),
        (["--at", at(app), "--expr", "value +"], 2, "is not a Python expression"),
        (
            ["--at", at(app), "--expr", "valu"],
            1,
            f"name 'valu' is not defined at app.py:{OBSERVE_LINE}",
        ),
        (["--at", at(app), "--expr", "'{' + str(value)"], 2, "has unbalanced braces"),
        (["--at", at(app), "--expr", "value", "--name", "a=b"], 2, "hold only letters, digits"),
        (["--at", at(app), "--expr", "value", "--name", "all"], 2, "is reserved"),
    ]
    for args, code, message in cases:
        result = cli("observe", "app", *args)
        assert result.returncode == code, (args, result.stderr)
        assert message in one_error_line(result), (args, result.stderr)
    status = app.status()
    assert status["state"] == "sleeping"
    assert status["debug_port"] == 0  # never woken: debugpy was not even started


def test_an_expression_that_fails_in_the_target_is_reported_once(cli, spawn):
    app = spawn(APP)
    result = cli(
        "observe", "app", "--at", at(app), "--expr", "value // (counter % 2)", "--count", "4"
    )
    assert result.returncode == 0, result.stderr  # odd counters give values
    # The target's own ZeroDivisionError text, reported once (3.14 reworded it).
    assert result.stderr.count(_zero_division_text("10 // 0")) == 1
    assert len(result.stdout.splitlines()) == 4

    always = cli("observe", "app", "--at", at(app), "--expr", "value / 0", "--for", "1", "--json")
    assert always.returncode == 1
    true_division = _zero_division_text("10 / 0")
    assert always.stderr.count(f"the target reported {true_division!r}") == 1
    assert "no values were captured" in always.stderr
    errors = json_lines(always.stdout)
    assert [e["type"] for e in errors] == ["error"]
    assert errors[0]["message"] == true_division
    assert app.status()["state"] == "sleeping"


def _zero_division_text(expression: str) -> str:
    """What this interpreter (the targets' own) says when ``expression`` divides by zero."""
    try:
        eval(expression)
    except ZeroDivisionError as exc:
        return str(exc)
    raise AssertionError(f"{expression} did not divide by zero")


def test_a_target_that_exits_while_observed(cli, spawn):
    app = spawn(APP, "4")  # the app ends by itself after 4 s
    result = cli("observe", "app", "--at", at(app), "--expr", "value")
    assert result.returncode == 1
    assert f"app-{app.pid} (pid {app.pid}) exited while observed" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip()  # it did see values before


def test_unknown_not_instrumented_and_awake_targets(cli, spawn, daemon, procs, tmp_path):
    plain = procs([sys.executable, "-c", "import time; time.sleep(30)"])
    result = cli("observe", str(plain.pid), "--at", f"{tmp_path}/app.py:1", "--expr", "x")
    assert result.returncode == 1
    assert "is not instrumented" in one_error_line(result)

    app = spawn(APP)
    assert cli("wake", "app", "--daemon-url", daemon.url).returncode == 0
    busy = cli("observe", "app", "--at", at(app), "--expr", "value", "--count", "1")
    assert busy.returncode == 1
    line = one_error_line(busy)
    assert "is already awake" in line and f"detrix-auto sleep {app.pid}" in line
    assert app.status()["state"] == "awake"  # left as it was
    assert cli("sleep", "app").returncode == 0


def test_a_target_that_requires_a_token(cli, spawn):
    app = spawn(APP, env={"DETRIX_TOKEN": "t0ken", "DETRIX_REQUIRE_TOKEN": "1"})
    refused = cli("observe", "app", "--at", at(app), "--expr", "value", "--count", "1")
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert "refused the request" in line and "DETRIX_TOKEN" in line

    ok = cli(
        "observe",
        "app",
        "--at",
        at(app),
        "--expr",
        "value",
        "--count",
        "2",
        env={"DETRIX_TOKEN": "t0ken"},
    )
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_observing_and_the_target_sleeps_again(spawn, home, signum):
    app = spawn(APP)
    proc = subprocess.Popen(
        cli_argv("observe", "app", "--at", at(app), "--expr", "value"),
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(home.parent),
    )
    try:
        first = proc.stdout.readline()
        assert "value=" in first, proc.stderr.read() if not first else first
        assert app.status()["state"] == "awake"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "asleep again" in err and "Traceback" not in err
    assert app.status()["state"] == "sleeping"


#: A loop whose line 8 never runs (the branch is never taken).
NEVER = """\
import time

counter = 0
while True:
    counter += 1
    time.sleep(0.05)
    if counter < 0:
        print("never")
"""


def test_a_line_that_never_runs_exits_1_and_says_so(cli, spawn):
    app = spawn(NEVER)
    result = cli("observe", "app", "--at", f"{app.script}:8", "--expr", "counter", "--for", "1")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert f"nothing was observed: line 8 of {app.script} did not run" in result.stderr
    assert "stopped after 0 hit(s)" in result.stderr and "asleep again" in result.stderr
    assert "Traceback" not in result.stderr
    assert app.status()["state"] == "sleeping"


def _observe_in_background(app, home):
    proc = subprocess.Popen(
        cli_argv("observe", "app", "--at", at(app), "--expr", "value"),
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(home.parent),
    )
    first = proc.stdout.readline()
    assert "value=" in first, proc.stderr.read() if not first else first
    return proc


def _connected_to(port):
    """Whether some socket of this machine holds an open connection to 127.0.0.1:port."""
    wanted = f":{port:04X}"
    with open("/proc/net/tcp") as handle:
        rows = handle.read().splitlines()[1:]
    return any(r.split()[2].endswith(wanted) and r.split()[3] == "01" for r in rows)


#: Waits in observe's streaming pause for 3 s, each pause restarted, while the test
#: sends it SIGTERM every millisecond (the handler once took the lock the interrupted
#: wait held, in the same thread: observe then never ended; here it died within
#: 300 signals).
PELTED = textwrap.dedent(
    """\
    import signal, time
    from detrix_auto.cli._observe import SignalGuard

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what the guard restores at its end
    with SignalGuard() as guard:
        guard.abort_calls = False
        print("ready", flush=True)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            guard.stopped = False
            guard.pause(0.0002)
    print(guard.count, flush=True)
    """
)


def test_a_signal_during_the_streaming_pause_is_handled_and_never_hangs(tmp_path):
    script = tmp_path / "pelted.py"
    script.write_text(PELTED)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        sent = 0
        while proc.poll() is None and sent < 20000:
            proc.send_signal(signal.SIGTERM)
            sent += 1
            time.sleep(0.001)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (proc.returncode, sent, err[-2000:])
    assert 0 < int(out) <= sent  # signals that come together are handled as one


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_clean_up_is_bounded_when_the_target_does_not_answer(spawn, home):
    """A target that stops answering (SIGSTOP) cannot hold observe for the 15 s a
    sleep may take elsewhere: the clean-up has 5 s in all (CLEANUP_BOUND)."""
    from detrix_auto.cli._observe import CLEANUP_BOUND

    app = spawn(APP)
    proc = _observe_in_background(app, home)
    try:
        app.proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        app.proc.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    match = re.search(r"could not put .* back to sleep: .* did not answer within ([\d.]+)s", err)
    assert match, err
    assert float(match.group(1)) <= CLEANUP_BOUND
    assert "not put back to sleep" in err and "Traceback" not in err
    assert proc.returncode == 0  # values were observed; the summary says the rest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_a_second_signal_abandons_the_clean_up_and_says_how_to_finish(cli, spawn, home):
    app = spawn(APP)
    proc = _observe_in_background(app, home)
    port = int(app.record["control_port"])
    try:
        app.proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        # Wait until observe's sleep request is waiting on the stopped target ...
        deadline = time.monotonic() + 20
        while not _connected_to(port):
            assert time.monotonic() < deadline, "observe never asked the target to sleep"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)  # ... and insist.
        _out, err = proc.communicate(timeout=30)
    finally:
        app.proc.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"interrupted while putting app-{app.pid} (pid {app.pid}) back to sleep" in err, err
    assert f"run `detrix-auto sleep {app.pid}`" in err
    assert "Traceback" not in err
    # The advice works: the target is still awake, and that command puts it to sleep.
    assert app.status()["state"] == "awake"
    assert cli("sleep", str(app.pid)).returncode == 0
    assert app.status()["state"] == "sleeping"


def test_the_embedded_daemon_of_observe_refuses_another_user(spawn, home, other_user):
    sys.path.insert(
        0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "security")
    )

    app = spawn(APP)
    proc = _observe_in_background(app, home)
    try:
        daemon_url = app.status()["daemon_url"]
        port = int(daemon_url.rsplit(":", 1)[1])
        code = """
results = []
for method, path in job["requests"]:
    request = f"{method} {path} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n"
    raw = exchange(job["address"], request.encode())
    results.append(int(raw.split(b" ", 2)[1]))
print(json.dumps(results))
"""
        requests = [
            ["GET", "/api/v1/connections"],
            ["GET", "/api/v1/metrics"],
            ["GET", "/api/v1/events"],
            ["GET", "/health"],
        ]
        results = as_other_user(other_user, code, address=["127.0.0.1", port], requests=requests)
        assert results == [401, 401, 401, 200]
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "asleep again" in err


def test_the_suspended_frame_hook(monkeypatch):
    """Where another decision will put its message: generators and coroutines on 3.12+."""
    from detrix_auto.cli import _observe
    from detrix_auto.cli._source import Location

    def generator():
        yield 1

    async def coroutine():
        return 1

    def plain():
        return 1

    def where(function):
        return Location("x.py", 1, code=function.__code__)

    assert _observe.suspended_frame_note(where(generator), "3.12.1") is None  # no text yet
    monkeypatch.setattr(_observe, "SUSPENDED_FRAME_NOTE", "a frame started before the wake")
    assert _observe.suspended_frame_note(where(generator), "3.12.1") == (
        "a frame started before the wake"
    )
    assert _observe.suspended_frame_note(where(coroutine), "3.13.0") is not None
    assert _observe.suspended_frame_note(where(generator), "3.11.7") is None
    assert _observe.suspended_frame_note(where(plain), "3.12.1") is None
    assert _observe.suspended_frame_note(Location("x.py", 1), "3.12.1") is None
    assert _observe.suspended_frame_note(where(generator), None) is None
