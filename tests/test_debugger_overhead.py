"""Runtime overhead after sleep: debugpy's tracer must not outlive the daemon's attach.

Each test runs a real app (``DETRIX_ENABLE=1``, real debugpy) whose main
thread times a CPU-bound pure-Python block over and over and prints each
timing. The test wakes and sleeps it over HTTP while it runs, so the tracer is
installed and removed under a busy main thread, as in production. Timings are
compared inside the same process (never woken vs after sleep), using the
fastest blocks of each phase, which is what survives a noisy shared machine.

Measured on the development machine (docs/performance.md): awake 2.3-2.5x on
3.10/3.11 and ~1.0x on 3.12/3.13; after sleep 0.97-1.08x everywhere. The
exact assertion is the probe's (no tracer in the main thread, no global
``sys.monitoring`` event left on 3.12+); the timing is only a sanity bound
(< 3x), as timings swing with the load of a shared machine.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import TRACING_PROBE, App, debugpy_traces_by_settrace

from detrix_auto.devdaemon import MetricSpec

pytestmark = pytest.mark.debugpy_contract

#: The app: blocks of work in the main thread, a cold function called once a
#: block (the logpoint's line), a short-lived thread now and then, and a stop
#: file so that it ends by itself (a hang at exit is a failure).
OVERHEAD_APP = (
    textwrap.dedent(
        """\
    import faulthandler, json, os, signal, sys, threading, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def who_is_waited_for(*_):  # SIGUSR2: what threading._shutdown() waits for
        locks = list(getattr(threading, "_shutdown_locks", ()))
        info = {"main": repr(threading._main_thread), "me": threading.get_ident(),
                "threads": [(t.name, t.ident, t.daemon, t.is_alive(),
                             getattr(t, "_tstate_lock", None) in locks)
                            for t in threading.enumerate()],
                "shutdown_locks": [repr(lock) for lock in locks]}
        sys.stderr.write("WAITED-FOR " + json.dumps(info) + "\\n")
        sys.stderr.flush()
    signal.signal(signal.SIGUSR2, who_is_waited_for)

    def work(n):
        total = 0
        for i in range(n):
            total += leaf(i)
        return total

    def leaf(i):
        return (i * i) % 7

    def cold(block):
        seen = block + 1  # COLD_LINE
        return seen

    def side():
        return sum(range(100))

    """
    )
    + TRACING_PROBE
    + textwrap.dedent(
        """\
    stop = sys.argv[1]
    n = int(sys.argv[2])
    block = 0
    while not os.path.exists(stop):
        t0 = time.perf_counter()
        work(n)
        elapsed = time.perf_counter() - t0
        cold(block)
        if block % 10 == 0:
            t = threading.Thread(target=side)
            t.start()
            t.join()
        print(json.dumps({"block": block, "t": elapsed}), flush=True)
        if os.path.exists(stop + ".probe"):
            os.unlink(stop + ".probe")
            print(json.dumps({"probe": probe()}), flush=True)
        block += 1
    print("bye", flush=True)
    """
    )
)
COLD_LINE = next(i for i, line in enumerate(OVERHEAD_APP.splitlines(), 1) if "COLD_LINE" in line)
BLOCK_N = 60_000
PHASE_BLOCKS = 15


_TIMINGS: dict[int, Timings] = {}


def app_lines(app: App) -> queue.Queue[str]:
    return _TIMINGS[app.pid].lines


class Timings:
    """Reads the app's block timings on a thread; phases take the blocks after a mark."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        _TIMINGS[app.pid] = self

    def _read(self) -> None:
        assert self.app.proc.stdout is not None
        for line in self.app.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def drain(self) -> None:
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def phase(self, count: int = PHASE_BLOCKS, timeout: float = 60.0) -> float:
        """The fastest of ``count`` blocks that start after now (one block skipped)."""
        self.drain()
        self._next(timeout)  # may have straddled the transition
        times = []
        for _ in range(count):
            times.append(self._next(timeout)["t"])
        return min(times)

    def _next(self, timeout: float) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        if not line:
            raise AssertionError(f"app ended early: {self.app.stop()}")
        if line == "bye":
            raise AssertionError("app stopped before the phase ended")
        return dict(json.loads(line))


def _start(spawn: Any, tmp_path: Path) -> tuple[App, Timings, Path]:
    stop = tmp_path / "stop"
    app = spawn(OVERHEAD_APP, str(stop), str(BLOCK_N), name="overhead_app.py")
    return app, Timings(app), stop


def _metric(app: App) -> MetricSpec:
    return MetricSpec(name="cold", path=str(app.script), line=COLD_LINE, expressions=("block",))


def _wait_hits(app: App, daemon: Any, at_least: int, what: str, timeout: float = 20) -> None:
    """Wait for logpoint hits; on failure say what the daemon and the app saw."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(daemon.hits("cold")) >= at_least:
            return
        time.sleep(0.05)
    status = app.status()
    probe = _probe(app, line_timeout=5)
    dump = ""
    if not probe:  # the app stopped printing: show where its threads are
        app.proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        app.proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        dump = (
            f"test reader alive: {_TIMINGS[app.pid].reader.is_alive()}, "
            f"queued lines: {app_lines(app).qsize()}\n"
        )
        app.proc.kill()
        assert app.proc.stderr is not None
        full = app.proc.stderr.read()
        if os.environ.get("OVERHEAD_TEST_DUMP"):
            Path(os.environ["OVERHEAD_TEST_DUMP"]).write_text(full)
        dump += full[-12000:]
    conns = {
        cid: (rec.status, rec.last_error, daemon.diagnostics(cid), daemon.breakpoint_results(cid))
        for cid, rec in daemon.connections.items()
    }
    raise AssertionError(
        f"{what}: {len(daemon.hits('cold'))} hit(s), wanted {at_least}; "
        f"app status {status}; app's tracer {probe}; daemon connections {conns}\n{dump}"
    )


def _probe(app: App, line_timeout: float) -> dict[str, Any]:
    """Ask the app for its probe (see ``probe()`` in the app); {} if it does not answer."""
    (app.script.parent / "stop.probe").write_text("")
    for _ in range(100_000):
        try:
            line = app_lines(app).get(timeout=line_timeout)
        except queue.Empty:
            break
        if line.startswith('{"probe"'):
            return dict(json.loads(line)["probe"])
    return {}


def _still_traced(app: App) -> str:
    """What tracing the app still has, as its probe reports it: '' when none.

    Exact, unlike a timing: the main thread's ``sys.gettrace()``, the trace
    function threads started later would get, a trace function on any frame of
    any thread, and on 3.12+ the ``sys.monitoring`` events of every tool, global
    and local to any code object the app has.
    """
    probe = _probe(app, line_timeout=20)
    if not probe:
        return "no probe"
    left = [] if probe["gettrace"] == "None" else [f"tracer {probe['gettrace']}"]
    if probe.get("settrace", "sys") != "sys":
        left.append(f"sys.settrace replaced by {probe['settrace']}")
    if probe["threading"] != "None":
        left.append(f"threading tracer {probe['threading']}")
    if probe["frames"]:
        left.append(f"frame tracers {probe['frames']}")
    if probe.get("events"):
        left.append(f"sys.monitoring events {probe['events']}")
    if probe.get("local"):
        left.append(f"sys.monitoring local events {probe['local']}")
    return ", ".join(left)


def _wake(app: App, daemon: Any) -> None:
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body
    assert body["status"] == "awake", body


def _sleep(app: App) -> None:
    code, body = app.request("POST", "/detrix/sleep")
    assert (code, body) == (200, {"status": "sleeping"})


def _finish(app: App, timings: Timings, stop: Path) -> tuple[str, str]:
    """Stop the app through its stop file; it must exit by itself, cleanly."""
    stop.write_text("")
    try:
        app.proc.wait(timeout=20)
    except Exception:
        # Where every thread is (faulthandler on SIGUSR1 in the app), for the message.
        app.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.5)
        app.proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        app.proc.kill()
        assert app.proc.stderr is not None
        stacks = app.proc.stderr.read()[-8000:]
        raise AssertionError(f"the app did not exit after wake/sleep:\n{stacks}") from None
    timings.reader.join(5)
    out = []
    while not timings.lines.empty():
        out.append(timings.lines.get_nowait())
    assert app.proc.stderr is not None
    err = app.proc.stderr.read()
    assert app.proc.returncode == 0, err
    assert "bye" in out
    return "\n".join(out), err


def test_after_sleep_runs_as_fast_as_never_woken(spawn, daemon, tmp_path):
    app, timings, stop = _start(spawn, tmp_path)
    daemon.add_metric(_metric(app))

    never = timings.phase()
    _wake(app, daemon)
    _wait_hits(app, daemon, 1, "first wake")
    awake = timings.phase()
    assert _still_traced(app) != "", "the probe must see tracing while awake"
    _sleep(app)
    after = timings.phase()

    # The timings only inform the messages: every check here is exact (a timed
    # "awake is slower" check failed on a loaded CI while the probe saw the tracer).
    ratios = f"awake {awake / never:.2f}x, after sleep {after / never:.2f}x of never woken"
    # No tracer left in the main thread: exact. How fast it then runs is the bench's
    # to say (bench/performance.py, with a control for the machine's noise): a timed
    # bound here failed at 3.4x on a loaded CI with no tracer left.
    assert _still_traced(app) == "", ratios

    # And again: a second wake re-arms, a second sleep disarms.
    hits = len(daemon.hits("cold"))
    time.sleep(0.3)
    _wake(app, daemon)
    _wait_hits(app, daemon, hits + 1, "second wake")
    # Exact, as after the sleeps: a timed ratio here read 1.18x once on a loaded CI
    # (3.10) after a wake whose logpoint had just reported.
    assert _still_traced(app) != "", "tracing was not re-armed by the second wake"
    _sleep(app)
    again = timings.phase()
    assert _still_traced(app) == "", f"after the second sleep: {again / never:.2f}x"

    _, err = _finish(app, timings, stop)
    assert "detrix-auto" not in err and "pydev" not in err.lower(), err


def test_logpoints_work_after_wake_sleep_wake(spawn, daemon, tmp_path):
    app, timings, stop = _start(spawn, tmp_path)
    daemon.add_metric(_metric(app))
    for cycle in range(3):
        before = len(daemon.hits("cold"))
        _wake(app, daemon)
        _wait_hits(app, daemon, before + 2, f"wake {cycle + 1}")
        values = [int(h.values[0]) for h in daemon.hits("cold")[before:]]
        assert values == sorted(values), values  # live values from the running loop
        _sleep(app)
        time.sleep(0.3)
        settled = len(daemon.hits("cold"))
        time.sleep(0.5)
        assert len(daemon.hits("cold")) <= settled + 1, f"cycle {cycle}: hits after sleep"
    out, err = _finish(app, timings, stop)
    assert "DETRICS" not in out
    assert "detrix-auto" not in err and "pydev" not in err.lower(), err


def test_exit_is_not_blocked_after_sleep(spawn, daemon, tmp_path):
    """pydevd's CheckAliveThread waits for its writer to drain; a daemon that closed
    the socket left a writer that never would. Threads started after the sleep
    (each queues a thread event) made exit hang forever before disarm()."""
    app, timings, stop = _start(spawn, tmp_path)
    daemon.add_metric(_metric(app))
    _wake(app, daemon)
    daemon.wait_for_hits("cold", 1, timeout=20)
    _sleep(app)
    timings.phase(11)  # spans a block that starts a thread
    started = time.monotonic()
    _finish(app, timings, stop)
    assert time.monotonic() - started < 10


def test_disarm_and_rearm_are_safe_in_any_order() -> None:
    """Never listened: both are no-ops; they never raise and print nothing."""
    from detrix_auto.debugger import Debugger

    debugger = Debugger()
    for _ in range(2):
        debugger.disarm()
        debugger.rearm()
        debugger.rearm()
        debugger.disarm()
    assert not debugger.listening and not debugger.armed


def _send(trigger: Path, text: str) -> None:
    """Hand a polling app a command file whole: a ``write_text()`` it catches between
    creating the file and writing it reads as "" (CI, once: KeyError 'plant')."""
    staged = trigger.with_name(trigger.name + ".new")
    staged.write_text(text)
    os.replace(staged, trigger)


#: A host that, on request, puts a trace function on every frame of detrix-auto's
#: debug gate (in pydevd's listener thread, blocked in accept()) and reports it, or
#: reports its probe. One CI run found such frames still traced after a sleep.
PLANTING_APP = (
    textwrap.dedent(
        """\
    import json, os, sys, time
    trigger = sys.argv[1]

    def planted(frame, event, arg):
        return planted

    def plant():
        count = 0
        for top in sys._current_frames().values():
            frame = top
            while frame is not None:
                if frame.f_code.co_filename.endswith("_debug_gate.py"):
                    frame.f_trace = planted
                    count += 1
                frame = frame.f_back
        return count

    """
    )
    + TRACING_PROBE
    + textwrap.dedent(
        """\
    while not os.path.exists(trigger + ".stop"):
        if os.path.exists(trigger):
            with open(trigger) as f:
                command = f.read()
            os.unlink(trigger)
            answer = plant() if command == "plant" else probe()
            print(json.dumps({command: answer}), flush=True)
        time.sleep(0.02)
    """
    )
)


@pytest.mark.skipif(
    not debugpy_traces_by_settrace(),
    reason="pydevd traces by sys.monitoring here: it puts no trace function on any frame",
)
def test_a_tracer_on_pydevds_listener_thread_goes_with_the_sleep(spawn, daemon, tmp_path):
    """pydevd never traces its own threads, so a trace function on the frames of its
    listener thread (blocked in our gate's accept() until the next wake) has no
    tracer of the thread's behind it to take out: it goes at once, not at the
    thread's next event, which for a thread blocked in accept() may never come."""
    trigger = tmp_path / "trigger"
    app = spawn(PLANTING_APP, str(trigger))

    def ask(command: str) -> Any:
        _send(trigger, command)
        assert app.proc.stdout is not None
        answer = json.loads(app.proc.stdout.readline())
        return answer[command]

    _wake(app, daemon)
    deadline = time.monotonic() + 20
    while ask("plant") == 0:  # back in accept() once the daemon's connection is in
        assert time.monotonic() < deadline, "pydevd's listener thread never waited in the gate"
        time.sleep(0.05)
    _sleep(app)
    assert ask("probe")["frames"] == []
    (tmp_path / "trigger.stop").write_text("")
    assert app.proc.wait(timeout=20) == 0


#: A host that traces a function of its own on request (as coverage or a profiler
#: would), reporting the events it saw; stderr shows anything printed about it.
SELF_TRACING_APP = textwrap.dedent(
    """\
    import json, os, sys, time
    trigger = sys.argv[1]

    def mine():
        return sum(range(3))

    while not os.path.exists(trigger + ".stop"):
        if os.path.exists(trigger):
            os.unlink(trigger)
            seen = []
            def tracer(frame, event, arg):
                if frame.f_code is mine.__code__:
                    seen.append(event)
                return tracer
            sys.settrace(tracer)
            mine()
            sys.settrace(None)
            print(json.dumps({"seen": seen,
                              "settrace": getattr(sys.settrace, "__module__", None)}),
                  flush=True)
        time.sleep(0.02)
    """
)


def test_a_host_that_traces_after_sleep_hears_nothing_from_the_debugger(spawn, daemon, tmp_path):
    """pydevd's sys.settrace wrapper (3.10/3.11; debugpy < 1.8.6 on 3.12+) prints a
    "PYDEV DEBUGGER WARNING" on the host's stderr when the host calls sys.settrace.
    Asleep, nothing is attached: sys.settrace is the interpreter's own again, the
    host's tracer works, and nothing is printed; the next wake takes it back."""
    trigger = tmp_path / "trigger"
    app = spawn(SELF_TRACING_APP, str(trigger))
    for _ in range(2):  # also after a re-wake and a second sleep
        _wake(app, daemon)
        time.sleep(0.3)
        _sleep(app)
        trigger.write_text("")
        assert app.proc.stdout is not None
        report = json.loads(app.proc.stdout.readline())
        assert "call" in report["seen"] and "return" in report["seen"], report
        assert report["settrace"] in (None, "sys"), report
    (tmp_path / "trigger.stop").write_text("")
    app.proc.wait(timeout=20)
    assert app.proc.stderr is not None
    err = app.proc.stderr.read()
    assert "PYDEV DEBUGGER WARNING" not in err and "detrix-auto" not in err, err


#: A host that idles in its main thread; on request it counts how often each of its
#: other threads woke up over a while (context switches from /proc), names them as
#: ``threading`` and pydevd know them, and prints the counts. Told to stop, it may
#: leave a non-daemon thread of its own running for a second after its main ends.
POLLERS_APP = textwrap.dedent(
    """\
    import json, os, sys, threading, time
    trigger = sys.argv[1]

    def cold(n):
        return n + 1  # COLD_LINE

    def switches():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/status") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            out[tid] = sum(int(line.split()[1]) for line in lines
                           if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        return out

    def woke(seconds):
        names = {}
        threads = list(threading.enumerate())
        constants = sys.modules.get("_pydevd_bundle.pydevd_constants")
        py_db = constants.get_global_debugger() if constants else None
        threads += list(getattr(py_db, "created_pydb_daemon_threads", None) or ())
        for t in threads:
            if getattr(t, "native_id", None):
                names[str(t.native_id)] = t.name
        before = switches()
        time.sleep(seconds)
        after = switches()
        me = str(threading.get_native_id())
        return {names.get(t, "tid " + t): after[t] - before[t]
                for t in after if t in before and t != me}

    n = 0
    while True:
        n = cold(n)
        if os.path.exists(trigger):
            seconds = float(open(trigger).read())
            os.unlink(trigger)
            print(json.dumps(woke(seconds)), flush=True)
        if os.path.exists(trigger + ".stop"):
            straggler = threading.Thread(target=time.sleep, args=(1.0,))
            straggler.start()  # non-daemon: the interpreter waits for it after main
            print("bye", flush=True)
            break
        time.sleep(0.05)
    """
)
POLLERS_COLD_LINE = next(
    i for i, line in enumerate(POLLERS_APP.splitlines(), 1) if "COLD_LINE" in line
)
PYDEVD_POLLERS = ("pydevd.CommandThread", "pydevd.CheckAliveThread")


def _woke(app: App, trigger: Path, seconds: float) -> dict[str, int]:
    _send(trigger, str(seconds))
    assert app.proc.stdout is not None
    return dict(json.loads(app.proc.stdout.readline()))


def test_asleep_debugpys_polling_threads_stay_still(spawn, daemon, tmp_path):
    """pydevd's command and alive-check threads look every 0.2-0.3 s for as long as
    the process lives, once woken: ten wake-ups a second, each taking the GIL from a
    host that computes. Asleep they look every PARKED_POLL s; a wake makes them look
    as often as before at once, and a host whose main thread ends while a thread of
    its own still runs exits as soon as that thread does (the alive-check's look is
    what lets it: made at exit, not PARKED_POLL s later)."""
    from detrix_auto import _pydevd

    trigger = tmp_path / "trigger"
    app = spawn(POLLERS_APP, str(trigger))
    daemon.add_metric(
        MetricSpec(name="cold", path=str(app.script), line=POLLERS_COLD_LINE, expressions=("n",))
    )
    for cycle in range(2):
        hits = len(daemon.hits("cold"))
        _wake(app, daemon)
        daemon.wait_for_hits("cold", hits + 1, timeout=20)
        awake = _woke(app, trigger, 1.0)
        for name in PYDEVD_POLLERS:  # the test sees them: else the next part proves nothing
            assert awake.get(name, 0) >= 2, f"awake, cycle {cycle}: {awake}"
        _sleep(app)
        time.sleep(0.7)  # the waits begun before the sleep end
        asleep = _woke(app, trigger, 2.0)
        woken = {name: asleep.get(name) for name in PYDEVD_POLLERS}
        assert woken == dict.fromkeys(PYDEVD_POLLERS, 0), f"asleep, cycle {cycle}: {asleep}"
    assert _pydevd.PARKED_POLL >= 10
    (tmp_path / "trigger.stop").write_text("")
    started = time.monotonic()
    assert app.proc.stdout is not None
    assert app.proc.stdout.readline().strip() == "bye"
    app.proc.wait(timeout=_pydevd.PARKED_POLL + 20)
    exited = time.monotonic() - started
    assert app.proc.stderr is not None
    err = app.proc.stderr.read()
    assert app.proc.returncode == 0, err
    assert "detrix-auto" not in err and "pydev" not in err.lower(), err
    # the straggler sleeps 1 s; the alive-check looks 0.2-0.3 s after it ends
    assert exited < 5, f"exit took {exited:.1f} s after the host's last thread"
