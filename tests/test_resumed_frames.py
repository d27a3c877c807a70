"""Logpoints in coroutines and generators that were already suspended at the wake.

On 3.12+ pydevd traces with ``sys.monitoring``: when breakpoints arrive it turns
on line events for the code of the frames on every thread's stack, and for code
that starts later (``PY_START``). A coroutine awaiting or a generator paused at
the wake is on no stack and never starts again: it only resumes, and pydevd
has no ``PY_RESUME`` callback, so its lines were never traced (issue #12,
item 5). The long ``while True: ... await ...`` loop of an asyncio service is
exactly that. ``_pydevd``'s ``resume`` capability fixes it; these tests run real
apps (``DETRIX_ENABLE=1``, real debugpy) against the embedded daemon, on every
Python (3.10/3.11 trace by ``sys.settrace``, which sees resumed frames itself).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import TRACING_PROBE, App, wait_until

from detrix_auto.devdaemon import MetricSpec

pytestmark = [pytest.mark.debugpy_contract, pytest.mark.e2e]

#: An asyncio service: its loop starts long before any wake and only ever resumes.
ASYNC_APP = (
    "import asyncio, json, os, sys\n"
    + TRACING_PROBE
    + textwrap.dedent(
        """\
        async def ticker():
            n = 0
            while True:
                n += 1
                value = n * 10
                await asyncio.sleep(0.05)  # @line

        async def prober(stop):
            while not os.path.exists(stop):
                if os.path.exists(stop + ".probe"):
                    os.unlink(stop + ".probe")
                    print(json.dumps({"probe": probe()}), flush=True)
                if os.path.exists(stop + ".again"):  # the same function, called anew
                    os.unlink(stop + ".again")
                    asyncio.create_task(ticker())
                await asyncio.sleep(0.05)  # @other

        async def main(stop):
            task = asyncio.create_task(ticker())
            await prober(stop)
            task.cancel()

        print("started", flush=True)
        asyncio.run(main(sys.argv[1]))
        print("bye", flush=True)
        """
    )
)

#: A generator paused at its ``yield`` before the wake, resumed ten times a second.
GENERATOR_APP = (
    "import json, os, sys, time\n"
    + TRACING_PROBE
    + textwrap.dedent(
        """\
        def counter():
            n = 0
            while True:
                n += 1
                value = n * 10
                yield value  # @line

        gen = counter()
        next(gen)
        stop = sys.argv[1]
        print("started", flush=True)
        while not os.path.exists(stop):
            next(gen)
            if os.path.exists(stop + ".probe"):
                os.unlink(stop + ".probe")
                print(json.dumps({"probe": probe()}), flush=True)
            time.sleep(0.05)
        print("bye", flush=True)
        """
    )
)

APPS = {"asyncio": ASYNC_APP, "generator": GENERATOR_APP}


def _line(source: str, marker: str = "line") -> int:
    return next(i for i, text in enumerate(source.splitlines(), 1) if f"# @{marker}" in text)


def _start(spawn, tmp_path: Path, kind: str, prefix: str = "") -> tuple[App, Path]:
    stop = tmp_path / "stop"
    app = spawn(prefix + APPS[kind], str(stop), name=f"{kind}_app.py")
    # Let the loop run (and the frame get suspended) well before the wake.
    wait_until(lambda: app.proc.stdout is not None and "started" in app.proc.stdout.readline())
    time.sleep(0.3)
    return app, stop


def _wake(app: App, daemon) -> None:
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body


def _values(daemon) -> list[int]:
    return [int(hit.values[0]) for hit in daemon.hits("value")]


def _check_values(values: list[int]) -> None:
    assert all(v % 10 == 0 and v > 0 for v in values), values
    assert values == sorted(values), values


@pytest.mark.parametrize("kind", sorted(APPS))
def test_a_frame_suspended_before_the_wake_reports_its_logpoint(spawn, daemon, tmp_path, kind):
    app, stop = _start(spawn, tmp_path, kind)
    daemon.add_metric(
        MetricSpec(
            name="value", path=str(app.script), line=_line(APPS[kind]), expressions=("value",)
        )
    )
    _wake(app, daemon)
    daemon.wait_for_hits("value", count=5, timeout=20)
    _check_values(_values(daemon))
    stop.touch()
    out, err = app.stop()
    assert "Traceback" not in err, err


@pytest.mark.parametrize("kind", sorted(APPS))
def test_after_sleep_a_second_wake_still_reports_and_sleep_leaves_no_events(
    spawn, daemon, tmp_path, kind
):
    app, stop = _start(spawn, tmp_path, kind)
    daemon.add_metric(
        MetricSpec(
            name="value", path=str(app.script), line=_line(APPS[kind]), expressions=("value",)
        )
    )
    for _ in range(2):
        _wake(app, daemon)
        seen = len(daemon.hits("value"))
        daemon.wait_for_hits("value", count=seen + 3, timeout=20)
        assert app.request("POST", "/detrix/sleep") == (200, {"status": "sleeping"})
        state = _probe(app, stop)
        assert state.get("events", {}) == {}, state
        assert state.get("local", []) == [], state
        assert state["gettrace"] == "None", state
        # Nothing more arrives while asleep (the frame keeps resuming).
        time.sleep(0.3)
        settled = len(daemon.hits("value"))
        time.sleep(0.5)
        assert len(daemon.hits("value")) == settled
    _check_values(_values(daemon))
    stop.touch()
    out, err = app.stop()
    assert "Traceback" not in err, err


def _probe(app: App, stop: Path) -> dict:
    Path(str(stop) + ".probe").touch()
    assert app.proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = app.proc.stdout.readline()
        if line.startswith('{"probe"'):
            return dict(json.loads(line)["probe"])
        if not line and app.proc.poll() is not None:
            break
    raise AssertionError(f"no probe answer from the app (exit {app.proc.poll()})")


def test_a_logpoint_added_while_awake_reaches_a_frame_already_passed_over(spawn, daemon, tmp_path):
    """The first breakpoints are elsewhere in the file: the suspended coroutine has
    resumed (and been judged to have none) many times before its own logpoint comes."""
    app, stop = _start(spawn, tmp_path, "asyncio")
    path = str(app.script)
    other = _line(ASYNC_APP, "other")
    daemon.add_metric(MetricSpec(name="other", path=path, line=other, expressions=("stop",)))
    _wake(app, daemon)
    daemon.wait_for_hits("other", count=5, timeout=20)
    daemon.add_metric(
        MetricSpec(name="value", path=path, line=_line(ASYNC_APP), expressions=("value",))
    )
    daemon.wait_for_hits("value", count=3, timeout=20)
    _check_values(_values(daemon))
    assert app.request("POST", "/detrix/sleep")[0] == 200
    stop.touch()
    out, err = app.stop()
    assert "Traceback" not in err, err


@functools.cache
def _tracing() -> str:
    """How this debugpy traces here (``_pydevd``'s probe, in a fresh interpreter)."""
    code = "import detrix_auto._pydevd as p; p.import_debugpy(); print(p.capabilities().tracing)"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return run.stdout.strip().splitlines()[-1]


def test_without_the_capability_the_wake_works_and_a_new_call_is_observed(spawn, daemon, tmp_path):
    """The fallback ``doctor`` states: a debugpy without what ``resume`` needs still
    wakes; the suspended coroutine reports nothing until its function is called anew."""
    if _tracing() != "sys.monitoring":
        pytest.skip("pydevd traces by sys.settrace here, which sees resumed frames itself")
    from test_pydevd_capabilities import WITHOUT

    prefix = WITHOUT.replace("sys.argv[2]", '"resume"')
    app, stop = _start(spawn, tmp_path, "asyncio", prefix)
    line = _line(prefix + ASYNC_APP)
    daemon.add_metric(
        MetricSpec(name="value", path=str(app.script), line=line, expressions=("value",))
    )
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body
    cid = body["connection_id"]
    wait_until(
        lambda: any(item.get("verified") for item in daemon.breakpoint_results(cid)),
        timeout=20,
        what="the logpoint verified",
    )
    time.sleep(1.0)
    assert daemon.hits("value") == []
    Path(str(stop) + ".again").touch()
    daemon.wait_for_hits("value", count=3, timeout=20)
    assert app.request("POST", "/detrix/sleep")[0] == 200
    stop.touch()
    out, err = app.stop()
    assert "Traceback" not in err, err
