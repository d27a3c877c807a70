"""Fixtures for the embedded daemon's own tests: real debugpy debuggees, real sockets.

Every debuggee is a separate ``sys.executable`` subprocess running a script
written to ``tmp_path``: debugpy can listen only once per process, and the
daemon must be tested against the real thing. Each debuggee exits by itself if
the test process dies (it polls its parent), and its finalizer kills it and the
debugpy adapter child it may have spawned, by pid.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from detrix_auto.devdaemon import DevDaemon

#: The debuggee. ``# @name`` comments mark lines the tests put logpoints on.
DEBUGGEE = textwrap.dedent(
    """\
    import os, sys, time
    import debugpy

    PARENT = int(sys.argv[2])
    kw = {"in_process_debug_adapter": True} if sys.argv[1] == "inproc" else {}
    host, port = debugpy.listen(("127.0.0.1", 0), **kw)
    print(port, flush=True)
    counter = 0
    label = "tick"
    while os.getppid() == PARENT:
        counter += 1
        doubled = counter * 2  # @loop
        # a comment line  # @comment
        time.sleep(0.02)
        # Redirected output, to check it never becomes a hit (a few bytes every
        # 0.2 s: the undrained stdout pipe would take minutes to fill).
        if counter % 10 == 0:
            print("app says", counter, end="")
            print(flush=True)
            sys.stderr.write(f"app warns {counter}\\n")
    """
)


@dataclass
class Debuggee:
    """A running debuggee subprocess and where its logpoint lines are."""

    proc: subprocess.Popen[str]
    port: int
    script: Path
    lines: dict[str, int]
    mode: str
    adapter_pid: int | None = None

    def line(self, marker: str) -> int:
        return self.lines[marker]


def _children(pid: int) -> list[int]:
    """Child pids from /proc (Linux), so finalizers kill exactly what we started."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(x) for x in fh.read().split())
    except OSError:
        pass
    return found


def _listener_pid(port: int) -> int | None:
    """Pid of the process listening on 127.0.0.1:``port``, read from /proc (Linux).

    debugpy's default adapter double-forks away from the debuggee, so it is not a
    child; it owns the debug port, which is how we find it to kill it by pid.
    """
    wanted = f"0100007F:{port:04X}"
    inode = None
    try:
        with open("/proc/net/tcp") as fh:
            for row in fh.read().splitlines()[1:]:
                cols = row.split()
                if cols[1] == wanted and cols[3] == "0A":  # 0A = LISTEN
                    inode = cols[9]
                    break
    except OSError:
        return None
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    return int(entry)
        except OSError:
            continue
    return None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silences the frozen-modules warning
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def debuggee_factory(tmp_path: Path) -> Iterator[Callable[..., Debuggee]]:
    """Start debuggees: ``factory(mode="inproc"|"adapter")``; all are killed at teardown."""
    started: list[Debuggee] = []
    script = tmp_path / "debuggee.py"
    script.write_text(DEBUGGEE)
    lines = {
        line.rsplit("# @", 1)[1].strip(): number
        for number, line in enumerate(DEBUGGEE.splitlines(), start=1)
        if "# @" in line
    }

    def start(mode: str = "inproc") -> Debuggee:
        proc = subprocess.Popen(
            [sys.executable, str(script), mode, str(os.getpid())],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
            cwd=str(tmp_path),
        )
        debuggee = Debuggee(proc, 0, script, lines, mode)
        started.append(debuggee)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "debuggee did not print its debug port within 20 s"
        text = proc.stdout.readline().strip()
        assert text.isdigit(), f"debuggee printed {text!r} instead of a port"
        debuggee.port = int(text)
        if mode == "adapter":
            pid = _listener_pid(debuggee.port)
            if pid is not None and pid != proc.pid:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"debugpy" in fh.read():
                        debuggee.adapter_pid = pid
        return debuggee

    yield start
    for debuggee in started:
        victims = [debuggee.proc.pid, *_children(debuggee.proc.pid)]
        if debuggee.adapter_pid is not None:
            victims.append(debuggee.adapter_pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # wait(), not communicate(): a surviving adapter would hold the stdout pipe.
        try:
            debuggee.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if debuggee.proc.stdout is not None:
            debuggee.proc.stdout.close()


@pytest.fixture
def debuggee(debuggee_factory: Callable[..., Debuggee]) -> Debuggee:
    """One in-process-adapter debuggee (the faster mode)."""
    return debuggee_factory("inproc")


@pytest.fixture
def dd() -> Iterator[DevDaemon]:
    """A started DevDaemon with short timeouts, stopped at teardown."""
    daemon = DevDaemon(attach_timeout=8.0, request_timeout=1.0).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 15.0,
) -> Reply:
    """One HTTP request with urllib; error statuses are returned, not raised."""
    data = raw
    all_headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(base + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, dict(exc.headers), exc.read())


def registration(debuggee: Debuggee | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid register body for ``debuggee`` (overrides replace or add fields)."""
    body: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": debuggee.port if debuggee is not None else 5678,
        "language": "python",
        "name": "devdaemon-test",
        "workspaceRoot": "/srv/app",
        "hostname": "test-host",
        "pid": debuggee.proc.pid if debuggee is not None else 1234,
    }
    body.update(overrides)
    return body


# Helpers reach the tests as fixtures: importing ``conftest`` by name is ambiguous
# when the parent folder has its own conftest.py.


@pytest.fixture
def http() -> Callable[..., Reply]:
    """``http(base, method, path, body=None, headers=..., raw=...) -> Reply``."""
    return call


@pytest.fixture
def api(dd: DevDaemon) -> Callable[..., Reply]:
    """``api(method, path, body=None, ...)`` against the ``dd`` daemon."""

    def bound(method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return call(dd.url, method, path, body, **kwargs)

    return bound


@pytest.fixture
def reg_body() -> Callable[..., dict[str, Any]]:
    """``reg_body(debuggee=None, **overrides)``: a valid register body."""
    return registration


@pytest.fixture
def until() -> Callable[..., None]:
    """``until(predicate, timeout=5.0)``: poll until true or fail."""
    return wait_until
