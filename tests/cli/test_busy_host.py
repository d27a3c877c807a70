"""A host whose main thread never pauses: what it does to the control plane, and the way out.

CPython hands the GIL to a waiting thread only after a whole switch interval
without a hand-off; a main thread that computes in slices shorter than that,
with a system call between them, restarts that wait at every call, and the
control plane's thread may never run (``_handoff``'s docstring). These tests
run that host for real: a subprocess started with ``DETRIX_ENABLE=1``, the
CLI in another process, nothing mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from cli_support import clean_env, run_cli

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the main thread's CPU time from /proc"
)

#: Computes in slices of well under a millisecond with a system call between
#: them: the pattern that starves every other thread of the process.
STARVING_APP = """\
import os, sys, time
deadline = time.time() + 120
while time.time() < deadline:
    t = 0
    for i in range(3000):
        t += i * i % 7
    os.stat("/")
"""

INTERVAL_PROBE = """\
import sys
print(repr(sys.getswitchinterval()))
if len(sys.argv) > 1:
    import detrix_auto
    detrix_auto.shutdown()
    print(repr(sys.getswitchinterval()))
"""


def _interval(home, *args, **env):
    result = subprocess.run(
        [sys.executable, "-c", INTERVAL_PROBE, *args],
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [float(line) for line in result.stdout.split()], result.stderr


def test_the_host_interval_is_left_alone_unless_the_operator_asks(home):
    default = sys.getswitchinterval()
    assert _interval(home, DETRIX_ENABLE="1")[0] == [default]
    # Not enabled: the setting is not even read.
    assert _interval(home, DETRIX_SWITCH_INTERVAL="0.0005")[0] == [default]


def test_the_asked_interval_holds_from_start_up_and_shutdown_gives_the_old_one_back(home):
    values, stderr = _interval(home, "shutdown", DETRIX_ENABLE="1", DETRIX_SWITCH_INTERVAL="0.0005")
    assert values == [pytest.approx(0.0005), pytest.approx(sys.getswitchinterval())]
    assert stderr == ""


@pytest.mark.parametrize("value", ["0", "0.00005", "0.5", "nan", "inf", "-1", "5ms", "true"])
def test_an_unusable_interval_is_one_clear_line_and_the_host_runs_untouched(home, value):
    values, stderr = _interval(home, DETRIX_ENABLE="1", DETRIX_SWITCH_INTERVAL=value)
    assert values == [sys.getswitchinterval()]
    (line,) = stderr.splitlines()
    assert line.startswith("detrix-auto: Invalid DETRIX_SWITCH_INTERVAL=")
    assert "from 0.0001 to 0.005" in line
    assert line.endswith("the application runs without detrix-auto")


def test_a_starving_host_answers_with_a_short_interval(spawn):
    app = spawn(STARVING_APP, env={"DETRIX_SWITCH_INTERVAL": "0.0001"})
    time.sleep(0.3)  # computing by now
    result = run_cli(app.home, "status", str(app.pid), "--json")
    assert result.returncode == 0, result.stderr
    assert '"state": "sleeping"' in result.stdout or '"state":"sleeping"' in result.stdout


@pytest.mark.parametrize(
    ("env", "way_out"),
    [
        ({}, "restart it with DETRIX_SWITCH_INTERVAL=0.0005"),
        ({"DETRIX_SWITCH_INTERVAL": "0.005"}, "restart it with a shorter DETRIX_SWITCH_INTERVAL"),
    ],
)
def test_a_status_that_gets_no_answer_from_a_starving_host_says_why(spawn, env, way_out):
    """Without a short enough interval the control plane may or may not win the GIL
    within the CLI's 2 s: when it does not, the error names the busy main thread and
    the way out, which takes the interval the process already runs with into account."""
    app = spawn(STARVING_APP, env=env)
    time.sleep(0.3)
    result = run_cli(app.home, "status", str(app.pid))
    if result.returncode == 0:
        return  # it got its turn this time: nothing to explain
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "did not answer within 2s" in line
    assert "its main thread was computing for" in line
    assert way_out in line


def test_the_clock_tells_a_computing_main_thread_from_a_waiting_one(tmp_path):
    from detrix_auto.cli._common import MainThreadClock

    spinning = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        clocks = MainThreadClock(spinning.pid), MainThreadClock(waiting.pid)
        time.sleep(1.0)
        busy, idle = (clock.busy_share() for clock in clocks)
        # A loaded CI machine gave the spinning one 0.30 of a CPU (4 suites on 2 cores):
        # the claim is the difference, not a share.
        assert busy is not None and busy > 0.1
        assert idle is not None and idle < 0.1
        assert clocks[1].starving_why() == ""
    finally:
        for proc in (spinning, waiting):
            proc.kill()
            proc.wait()
    gone = MainThreadClock(spinning.pid)
    assert gone.cpu is None and gone.starving_why() == ""


def test_doctor_on_a_starving_host_points_at_the_interval_not_at_a_restart(spawn):
    app = spawn(STARVING_APP)
    time.sleep(0.3)
    result = run_cli(app.home, "doctor", str(app.pid), "--json")
    report = json.loads(result.stdout)
    (control,) = [f for f in report["findings"] if f["check"] == "process-control"]
    if control["level"] == "ok":
        return  # it got its turn this time
    assert control["level"] == "error"
    if "its main thread was computing for" in control["text"]:
        assert "shorter switch interval" in control["fix"]
    else:  # computed less than the threshold (a loaded machine): the general advice
        assert "restart it" in control["fix"]


@pytest.mark.parametrize(
    ("asked", "advice"),
    [
        (None, "restart it with DETRIX_SWITCH_INTERVAL=0.0005"),
        ("0.0005", "restart it with a shorter DETRIX_SWITCH_INTERVAL"),
        ("0.0001", "0.0001 is the shortest detrix-auto sets: make its main thread pause"),
    ],
)
def test_the_advice_follows_the_interval_the_process_was_started_with(home, asked, advice):
    from detrix_auto.cli._common import BUSY_SHARE, MainThreadClock

    env = clean_env(home)
    if asked is not None:
        env["DETRIX_SWITCH_INTERVAL"] = asked  # read from /proc/PID/environ, nothing else
    spinning = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
    try:
        clock = MainThreadClock(spinning.pid)
        time.sleep(1.0)
        share = clock.busy_share()
        why = clock.starving_why()
    finally:
        spinning.kill()
        spinning.wait()
    assert share is not None
    if share < BUSY_SHARE:
        assert why == ""  # a machine this loaded gave it less: no claim is made
        return
    assert why.startswith("; its main thread was computing for ")
    assert advice in why


def test_the_interval_read_from_the_process_is_shown_escaped_and_short(home):
    """A process's environment is its own text: it never reaches the terminal raw."""
    from detrix_auto.cli._common import MainThreadClock

    env = clean_env(home, DETRIX_SWITCH_INTERVAL="0.0005\x1b[2J\x1b]0;owned\x07\n" + "9" * 500)
    spinning = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
    try:
        clock = MainThreadClock(spinning.pid)
        time.sleep(1.0)
        why = clock.starving_why()
    finally:
        spinning.kill()
        spinning.wait()
    if not why:
        return  # a loaded machine gave it too little CPU for any claim
    assert "\x1b" not in why and "\n" not in why and "\x07" not in why
    assert "9" * 50 not in why
    assert "restart it with a shorter DETRIX_SWITCH_INTERVAL" in why
