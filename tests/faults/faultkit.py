"""Machinery of the fault-injection suite: instrumented apps, misbehaving daemons, counters.

Every fault test runs the client in its own subprocess started with
``DETRIX_ENABLE=1`` (the shipped start-up hook), with every ``DETRIX_*_TIMEOUT``
set to 1 s (register: 2 s, it includes the DAP attach) so that "just under" and
"just over" a timeout cost little. After each fault the same four things are
checked: the host still runs (its main loop touches a heartbeat file), status
tells the truth, the next wake succeeds once the fault is gone, and nothing
leaked: the app's threads and file descriptors (``/proc/<pid>/task`` and
``/proc/<pid>/fd``) are back to their baseline, and the daemon holds no
attached connection nobody asked for.

Kept apart from ``tests/conftest.py`` on purpose: a second ``conftest`` module
elsewhere in the tree can shadow that one for ``from support import``, so this
module imports nothing from it and defines what it needs itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import App, clean_env, wait_for_record, wait_until, write_script

#: Seconds: every daemon timeout of the app under test, except register. Short, so
#: a module of faults runs in a minute; not shorter, so that an "under" answer
#: keeps more than a second of margin for a process stalled by a busy machine
#: (four suites at a time on two cores).
TIMEOUT = 2.0
#: Seconds: the register timeout (it covers the daemon's whole DAP attach).
REGISTER_TIMEOUT = 3.0
#: How far under / over a timeout the slow answers are.
UNDER = 0.4
OVER = 1.5
#: The liveness interval and backoff cap of the app under test.
LIVENESS = 0.3
RETRY_MAX = 1.0

FAST_ENV = {
    "DETRIX_HEALTH_CHECK_TIMEOUT": str(TIMEOUT),
    "DETRIX_REGISTER_TIMEOUT": str(REGISTER_TIMEOUT),
    "DETRIX_UNREGISTER_TIMEOUT": str(TIMEOUT),
    "DETRIX_LIVENESS_INTERVAL": str(LIVENESS),
    "DETRIX_WAKE_RETRY_MAX": str(RETRY_MAX),
}

#: The host: an untouched loop that proves it runs by touching a heartbeat file.
APP = textwrap.dedent(
    """\
    import os, sys, time
    beat = sys.argv[1]
    deadline = time.time() + float(sys.argv[2])
    counter = 0
    last = 0.0
    while time.time() < deadline:
        counter += 1
        value = counter * 10
        now = time.time()
        if now - last >= 0.1:
            os.utime(beat)
            last = now
        time.sleep(0.02)
    print("app finished", counter, flush=True)
    """
)

LIVE_STATUSES = (2, 3)  # connecting, connected


def live_rows(daemon: Any) -> list[str]:
    """Connections the daemon holds attached (or attaching)."""
    return [cid for cid, row in daemon.connections.items() if row.status in LIVE_STATUSES]


# -- counting what a process holds -----------------------------------------------------


def _tcp_table(pid: int) -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for the process's namespace."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as handle:
                next(handle)
                for line in handle:
                    parts = line.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                    table[inode] = (
                        int(local.rsplit(":", 1)[1], 16),
                        int(remote.rsplit(":", 1)[1], 16),
                        state,
                    )
        except OSError:
            pass
    return table


def counts(pid: int, daemon_ports: tuple[int, ...] = ()) -> dict[str, int]:
    """Threads and descriptors of ``pid``.

    ``pooled`` counts the sockets connected to one of ``daemon_ports``: the
    daemon client keeps up to 4 idle keep-alive connections per daemon URL,
    by design, so those are bounded separately; ``fds`` is everything else.
    """
    threads = len(os.listdir(f"/proc/{pid}/task"))
    table = _tcp_table(pid)
    fds = pooled = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            entry = table.get(target[8:-1])
            if entry is not None and entry[1] in daemon_ports:
                pooled += 1
                continue
        fds += 1
    return {"threads": threads, "fds": fds, "pooled": pooled}


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                data = handle.read()
            ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


# -- the app under test ----------------------------------------------------------------


class FaultApp(App):
    """An app of :data:`APP` (its main loop touches ``beat``): also how to inspect it."""

    def __init__(
        self,
        proc: subprocess.Popen[str],
        home: Path,
        beat: Path,
        script: Path,
        record: dict[str, Any],
    ) -> None:
        super().__init__(proc, home, script, record)
        self.beat = beat

    def counts(self, daemon_ports: tuple[int, ...] = ()) -> dict[str, int]:
        return counts(self.pid, daemon_ports)

    def running(self) -> bool:
        """The process lives and its main loop ran within the last second."""
        if self.proc.poll() is not None:
            return False
        try:
            return time.time() - self.beat.stat().st_mtime < 1.0
        except OSError:
            return False

    def assert_running(self) -> None:
        assert self.proc.poll() is None, f"app exited with {self.proc.returncode}"
        wait_until(self.running, timeout=3, what="the app's main loop ticking")
        assert self.request("GET", "/detrix/health")[0] == 200

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


def start_app(
    directory: Path,
    home: Path,
    *,
    env: dict[str, str] | None = None,
    source: str = APP,
    seconds: float = 120.0,
    wait: bool = True,
    name: str = "app.py",
) -> FaultApp:
    """Start ``source`` with the hook on; returns once its discovery record exists."""
    directory.mkdir(parents=True, exist_ok=True)
    script = write_script(directory / name, source)
    beat = directory / f"{name}.beat"
    beat.touch()
    full_env = clean_env(home, DETRIX_ENABLE="1", **FAST_ENV)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, str(script), str(beat), str(seconds)],
        env=full_env,
        cwd=str(directory),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    app = FaultApp(proc, home, beat, script, {})
    if wait:
        app.record = wait_for_record(home, proc.pid, proc)
    return app


@pytest.fixture
def fault_app(tmp_path: Path) -> Iterator[Callable[..., FaultApp]]:
    """Start apps for one test; every one is killed at the end, whatever happened."""
    apps: list[FaultApp] = []
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)

    def start(**kwargs: Any) -> FaultApp:
        kwargs.setdefault("home", home)
        app = start_app(tmp_path / f"app{len(apps)}", **kwargs)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.kill()


def warm_up(app: FaultApp, daemon_url: str, cycles: int = 2) -> None:
    """Bring the app to its steady state: listener open, every worker thread started.

    Four concurrent wakes start the control plane's four workers (they collapse
    into one registration); the cycles let debugpy create what it creates once.
    """
    results: list[tuple[int, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(app.wake(daemon_url))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [code for code, _ in results] == [200] * 4, results
    assert app.sleep()[0] == 200
    for _ in range(cycles - 1):
        assert app.wake(daemon_url)[0] == 200
        assert app.sleep()[0] == 200


def settle(
    app: FaultApp,
    baseline: dict[str, int],
    daemon_ports: tuple[int, ...] = (),
    timeout: float = 5.0,
) -> dict[str, int]:
    """Wait until threads and descriptors are back to ``baseline``; return the last counts.

    Threads end and sockets close asynchronously (a keeper loop, the DAP
    session's reader), so this polls; a leak never comes back down.
    """
    last: dict[str, int] = {}

    def ok() -> bool:
        nonlocal last
        last = app.counts(daemon_ports)
        return (
            last["threads"] <= baseline["threads"]
            and last["fds"] <= baseline["fds"]
            and last["pooled"] <= 4 * max(1, len(daemon_ports))
        )

    try:
        wait_until(ok, timeout=timeout, interval=0.1, what="threads and fds back to baseline")
    except AssertionError:
        raise AssertionError(f"leak: baseline {baseline}, now {last}") from None
    return last


# -- misbehaving servers ---------------------------------------------------------------


class RawServer:
    """A loopback TCP server run by a function per accepted connection, with cleanup."""

    def __init__(self, handler: Callable[[socket.socket], None], accept: bool = True) -> None:
        self._handler = handler
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True) if accept else None

    def __enter__(self) -> RawServer:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._handler(conn)
        except OSError:
            pass

    @property
    def stopping(self) -> threading.Event:
        return self._stop


def blackhole() -> RawServer:
    """Accepts TCP connections and never reads from them nor answers."""
    server: RawServer

    def hold(conn: socket.socket) -> None:
        server.stopping.wait(60)

    server = RawServer(hold)
    return server


def trickle(interval: float = 0.3) -> RawServer:
    """Answers a healthy daemon's health check, one byte every ``interval`` seconds."""
    server: RawServer
    body = json.dumps({"status": "ok", "service": "detrix", "uptimeSeconds": 1}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )

    def drip(conn: socket.socket) -> None:
        conn.recv(65536)
        for byte in head + body:
            if server.stopping.wait(interval):
                return
            conn.sendall(bytes([byte]))

    server = RawServer(drip)
    return server
