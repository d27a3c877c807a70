"""Shared test helpers: instrumented apps as real subprocesses, HTTP, waiting.

Import these from ``support`` (not from ``conftest``: several test folders have
a conftest of their own, and ``from conftest import`` then finds the wrong one).

Every test that wakes a client runs that client in its own subprocess started
with ``DETRIX_ENABLE=1`` (debugpy listens once per process, and the hook is
what we ship). The daemon is :class:`detrix_auto.devdaemon.DevDaemon`, which
speaks the daemon's HTTP API and runs the DAP sequence of CONTRACT.md section 3
against the app's real debugpy.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: The share of their examples the property-based tests and schemathesis draw
#: (``DETRIX_TEST_EXAMPLES``, default 1: all). ``.ci/run`` draws them all on one
#: Python and a quarter on the others: the parsers and rules they feed are the same
#: code on every Python, and they are a quarter of the suite's CPU time.
EXAMPLES_SHARE = float(os.environ.get("DETRIX_TEST_EXAMPLES") or "1")


def debugpy_traces_by_settrace() -> bool:
    """pydevd traces by ``sys.settrace`` before 3.12, and with a debugpy older than 1.8.6
    (after that, by ``sys.monitoring``)."""
    from importlib.metadata import version

    installed = tuple(int(part) for part in version("debugpy").split(".")[:3])
    return sys.version_info < (3, 12) or installed < (1, 8, 6)


def examples(count: int) -> int:
    """``count`` examples, times :data:`EXAMPLES_SHARE`; never fewer than 10."""
    return max(10, round(count * EXAMPLES_SHARE))


def schemathesis_depth(count: int) -> list[str]:
    """schemathesis's options for :func:`examples`: with a share below 1, also without
    its coverage phase (hundreds of boundary cases, whatever ``--max-examples`` says)."""
    depth = ["--max-examples", str(examples(count))]
    if EXAMPLES_SHARE < 1:
        depth += ["--phases", "examples,fuzzing,stateful"]
    return depth


#: A small untouched application: a loop whose line 7 changes ``value``.
#: A logpoint runs before its line, so line 8 sees ``value == counter * 10``.
SAMPLE_APP = textwrap.dedent(
    """\
    import sys, time
    print("app started", flush=True)
    deadline = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
    counter = 0
    while time.time() < deadline:
        counter += 1
        value = counter * 10
        time.sleep(0.02)
    print("app finished", counter > 0, flush=True)
    """
)
SAMPLE_LINE = 8  # `time.sleep(0.02)`, just after `value = counter * 10`

#: Source of ``probe()`` for a test app (module level, after ``import sys``): every
#: way tracing could be left behind after sleep, for an exact assertion. The tracer
#: of this thread and of threads started later, a trace function on any frame of any
#: thread, and on 3.12+ the global events of every ``sys.monitoring`` tool and the
#: local events on every code object (functions, running and suspended frames of
#: generators and coroutines, nested code).
TRACING_PROBE = textwrap.dedent(
    """\
    def probe():
        import gc, threading, types

        def stack(frame):
            while frame is not None:
                yield frame
                frame = frame.f_back

        state = {"gettrace": repr(sys.gettrace())}
        # pydevd's warning wrapper, or the interpreter's own sys.settrace
        state["settrace"] = getattr(sys.settrace, "__module__", None) or "sys"
        gettrace = getattr(threading, "gettrace", None)
        state["threading"] = repr(gettrace()) if gettrace else "None"
        state["frames"] = sorted({
            f"{frame.f_code.co_name}:{type(frame.f_trace).__name__}"
            for top in sys._current_frames().values()
            for frame in stack(top)
            if frame.f_trace is not None
        })
        mon = getattr(sys, "monitoring", None)
        if mon is None:
            return state
        tools = [t for t in range(6) if mon.get_tool(t) is not None]
        state["events"] = {t: mon.get_events(t) for t in tools if mon.get_events(t)}
        codes = set()
        for obj in gc.get_objects():
            code = (getattr(obj, "__code__", None) or getattr(obj, "gi_code", None)
                    or getattr(obj, "cr_code", None))
            if isinstance(code, types.CodeType):
                codes.add(code)
        for top in sys._current_frames().values():
            codes.update(frame.f_code for frame in stack(top))
        pending = list(codes)
        while pending:
            for const in pending.pop().co_consts:
                if isinstance(const, types.CodeType) and const not in codes:
                    codes.add(const)
                    pending.append(const)
        state["local"] = sorted(
            f"{code.co_name}@{t}={mon.get_local_events(t, code)}"
            for code in codes for t in tools if mon.get_local_events(t, code)
        )
        return state
    """
)

#: A small trading loop, watched by the tests of the daemon's metrics API as the
#: original project's agent simulation watches its trade bot. Every value is a
#: function of ``iteration``, so a test can tell a captured value is the one the
#: app had at that line. ``# @name`` marks the lines metrics go on.
TRADE_BOT = textwrap.dedent(
    """\
    import time

    SYMBOLS = ["BTCUSD", "ETHUSD", "SOLUSD"]
    iteration = 0
    while True:
        iteration += 1
        symbol = SYMBOLS[iteration % 3]
        quantity = iteration % 5 + 1
        price = quantity * 12.5
        entry = {"symbol": symbol, "n": iteration}  # @order
        pnl = (iteration % 7) - 3.0
        flag = iteration % 2 == 0  # @pnl
        time.sleep(0.03)  # @sleep
    """
)
TRADE_BOT_LINES = {
    marker: number
    for number, text in enumerate(TRADE_BOT.splitlines(), start=1)
    for marker in re.findall(r"# @(\w+)", text)
}
TRADE_BOT_SYMBOLS = ["BTCUSD", "ETHUSD", "SOLUSD"]


def metric_body(
    cid: str, name: str, marker: str, *expressions: str, **extra: Any
) -> dict[str, Any]:
    """A ``POST /api/v1/metrics`` body for a line of :data:`TRADE_BOT` (run as app.py)."""
    return {
        "name": name,
        "connectionId": cid,
        "location": {"file": "app.py", "line": TRADE_BOT_LINES[marker]},  # in the app's cwd
        "expressions": list(expressions),
        "language": "python",
        "enabled": True,
        **extra,
    }


def write_script(path: Path, source: str) -> Path:
    """Put ``source`` at ``path`` whole, never rewritten in place.

    An app started earlier from the same path may be reading it right now (its
    record is written by the hook before its script is read), and a script caught
    truncated is an app that exits at once with nothing to say.
    """
    staged = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    staged.write_text(source)
    os.replace(staged, path)
    return path


def private_tmp(home: Path) -> str:
    """The TMPDIR of the test that owns ``home``: beside it, private to this user."""
    path = Path(home).parent / ".tmpdir"
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test process's environment without any DETRIX_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env.pop("PYTHONPATH", None)
    # TMPDIR comes from the test's own environment: a private one per test (conftest),
    # since the records' last fallback lives there and /tmp is shared with every other
    # test run (tox runs two Pythons at once).
    env.pop("XDG_RUNTIME_DIR", None)
    env["DETRIX_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass(eq=False)  # a handle: equal only to itself
class App:
    """A running instrumented subprocess and how to reach its control plane.

    The one app handle of the suite: the fault tests (``faultkit.FaultApp``) and the
    attacker's tests (``sechelpers.RunningApp``) extend it with what they inspect.
    """

    proc: subprocess.Popen[str]
    home: Path
    script: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return str(self.record["control_url"])

    @property
    def port(self) -> int:
        return int(self.record["control_port"])

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        return http_json(self.url, method, path, body, headers=headers, timeout=timeout)

    def status(self) -> dict[str, Any]:
        code, body = self.request("GET", "/detrix/status")
        assert code == 200, body
        return dict(body)

    def wake(self, daemon_url: str | None = None, timeout: float = 30.0) -> tuple[int, Any]:
        body = {"daemon_url": daemon_url} if daemon_url is not None else None
        return self.request("POST", "/detrix/wake", body, timeout=timeout)

    def sleep(self, timeout: float = 30.0) -> tuple[int, Any]:
        return self.request("POST", "/detrix/sleep", timeout=timeout)

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return out, err

    def stacks(self, limit: int = 12000) -> str:
        """Every thread's stack, if the app still runs (it must have faulthandler on,
        as ``spawn``'s apps do): SIGABRT, which faulthandler answers with them before
        the process ends. Returns the end of its stderr; "" if it had ended."""
        if self.proc.poll() is not None:
            return ""
        self.proc.send_signal(signal.SIGABRT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            return ""
        return (err or "")[-limit:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def http_json(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One request with the stdlib client; returns (status, parsed JSON or raw text)."""
    host_port = base.split("://", 1)[1].rstrip("/")
    conn = http.client.HTTPConnection(host_port, timeout=timeout)
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode("utf-8", "replace")


def wait_for_record(
    home: Path,
    pid: int,
    proc: subprocess.Popen[str] | None = None,
    timeout: float = 20.0,
    *,
    directory: Path | None = None,
    why: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Poll for the discovery record the hook writes once the control plane listens
    (under ``home/clients``, or ``directory`` where a fallback puts it); ``why()``, if
    given, is added to the failure (the app's stderr, say)."""
    path = (directory or home / "clients") / f"{pid}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return dict(json.loads(path.read_text()))
            except ValueError:
                pass  # being renamed into place
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"app exited {proc.returncode} before listening: {out}\n{err}")
        time.sleep(0.02)
    more = f"\n{why()}" if why is not None else ""
    raise AssertionError(f"no discovery record for pid {pid} at {path}{more}")


def wait_until(
    predicate: Any, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; fail after
    ``timeout`` seconds, saying what was awaited and the last value seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s (last: {value!r})")


def free_port() -> int:
    """A loopback port that was free a moment ago (for settings that need a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_port() -> int:
    """A free loopback port below the ephemeral range, which neither ``bind(0)`` nor
    ``connect()`` ever hands out: nobody else takes it between our choice and its use,
    so a test that tells a program to listen on it knows who listens there."""
    import random

    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no quiet port found")
