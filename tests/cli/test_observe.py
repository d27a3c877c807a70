"""``observe``: live values from an untouched process, and every error a user will meet."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from cli_support import (
    APP,
    BLANK_LINE,
    COMMENT_LINE,
    OBSERVE_LINE,
    base_env,
    cli_argv,
    json_lines,
    one_error_line,
)

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
        (["--at", at(app), "--expr", "{value}"], 2, "must not contain braces"),
        (["--at", at(app), "--expr", "value", "--name", "a=b"], 2, "must not contain '='"),
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
        env=base_env(home),
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
