"""Faults on the host's side: a taken control port, an unwritable discovery directory,
the host killed in the middle of a wake, and a fork in the middle of a wake.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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

import faultkit
import pytest
from doubles import Fault, FaultDaemon
from faultkit import (
    APP,
    FaultApp,
    children_of,
    counts,
    live_rows,
    pid_running,
    settle,
    warm_up,
)
from support import free_port, http_json, wait_for_record, wait_until

from detrix_auto.devdaemon import DevDaemon
from detrix_auto.discovery import iter_records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

fault_app = faultkit.fault_app


@pytest.fixture
def daemon() -> Iterator[DevDaemon]:
    d = DevDaemon().start()
    try:
        yield d
    finally:
        d.stop()


# -- the control port is already taken -------------------------------------------------

INIT_APP = textwrap.dedent(
    """\
    import os, sys, time
    import detrix_auto
    beat, seconds = sys.argv[1], float(sys.argv[2])
    port = int(os.environ["TEST_PORT"])
    trigger, report = os.environ["TEST_TRIGGER"], os.environ["TEST_REPORT"]
    try:
        detrix_auto.init(control_port=port)
        outcome = "bound"
    except detrix_auto.ControlPlaneError as exc:
        outcome = "refused: " + str(exc)
    with open(report, "w") as f:
        f.write(outcome + "\\n")
    deadline = time.time() + seconds
    retried = False
    while time.time() < deadline:
        os.utime(beat)
        if not retried and os.path.exists(trigger):
            detrix_auto.init(control_port=port)  # the port is free now
            with open(report, "a") as f:
                f.write("bound\\n")
            retried = True
        time.sleep(0.05)
    """
)


def test_control_port_taken_by_another_process(
    fault_app: Callable[..., FaultApp],
    daemon: DevDaemon,
    tmp_path: Path,
) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        # Through the hook: one clear line on stderr, and the host runs untouched.
        app = fault_app(env={"DETRIX_CONTROL_PORT": str(port)}, wait=False)
        wait_until(app.running, timeout=10, what="the host running")
        time.sleep(0.5)
        assert app.running()
        assert not (app.home / "clients" / f"{app.pid}.json").exists()
        assert counts(app.pid)["threads"] == 1  # nothing of ours left running
        # The holder still owns its port: a client reaches it, not us.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            conn, _ = holder.accept()
            conn.close()
        app.terminate()
        _, err = app.proc.communicate(timeout=10)
        lines = [line for line in err.splitlines() if line.startswith("detrix-auto:")]
        assert len(lines) == 1, err
        assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
        assert "another process holds that port" in lines[0]
        assert "Traceback" not in err

        # Through the API: a clear error, and init() works once the port is free.
        trigger, report = tmp_path / "trigger", tmp_path / "report"
        api = fault_app(
            source=INIT_APP,
            wait=False,
            name="init_app.py",
            env={
                "DETRIX_ENABLE": "0",
                "TEST_PORT": str(port),
                "TEST_TRIGGER": str(trigger),
                "TEST_REPORT": str(report),
            },
        )
        wait_until(lambda: report.exists() and report.read_text(), timeout=10)
        assert report.read_text().startswith("refused: cannot listen on")
        assert api.running()
    finally:
        holder.close()
    trigger.touch()
    wait_until(lambda: report.read_text().endswith("bound\n"), timeout=10, what="bound later")
    url = f"http://127.0.0.1:{port}"
    code, body = http_json(url, "POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200 and body["status"] == "awake", body
    assert http_json(url, "POST", "/detrix/sleep")[0] == 200
    assert not live_rows(daemon)
    assert api.running()


# -- the discovery directory is read-only ----------------------------------------------


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` refuse new files, for root too (chattr +i), undone afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a directory read-only")
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("this file system does not support chattr +i")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o500)
        try:
            yield
        finally:
            path.chmod(0o700)


@pytest.mark.parametrize("fallback", [True, False], ids=["falls-back", "nowhere"])
def test_discovery_directory_read_only(
    fault_app: Callable[..., FaultApp],
    daemon: DevDaemon,
    tmp_path: Path,
    fallback: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "rohome"
    home.mkdir(mode=0o700)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    clients = home / "clients"
    fallback_dir = tmpdir / f"detrix-auto-{os.getuid()}" / "clients"
    port = free_port()
    env = {"TMPDIR": str(tmpdir), "XDG_RUNTIME_DIR": "", "DETRIX_CONTROL_PORT": str(port)}
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # so that iter_records here looks there too
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(read_only(clients))
        if not fallback:
            stack.enter_context(read_only(tmpdir))
        app = fault_app(home=home, env=env, wait=False)
        wait_until(app.running, timeout=10, what="the host running")
        record = fallback_dir / f"{app.pid}.json"
        if fallback:
            wait_until(record.exists, timeout=10, what="the record in the fallback directory")
            found = [r for r in iter_records(str(home), prune=False) if r["pid"] == app.pid]
            assert found and found[0]["control_port"] == port
        else:
            time.sleep(0.5)
            assert not record.exists()
        assert list(clients.iterdir()) == []
        url = f"http://127.0.0.1:{port}"
        app.record = {"control_url": url}
        code, body = app.wake(daemon.url)
        assert code == 200, body
        assert app.status()["state"] == "awake"
        assert app.sleep()[0] == 200
        assert not live_rows(daemon)
        app.assert_running()
        app.terminate()
        _, err = app.proc.communicate(timeout=10)
        assert "Traceback" not in err
        # SIGTERM (default action) skips atexit: the stale record is pruned by readers.
        assert not [r for r in iter_records(str(home)) if r["pid"] == app.pid]


# -- the host is killed while waking ---------------------------------------------------

HANDLED_TERM = APP.replace(
    "import os, sys, time\n",
    "import os, signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n",
)


@pytest.mark.parametrize("how", ["sigterm", "sigterm-handled", "sigkill"])
def test_host_killed_while_waking(
    fault_app: Callable[..., FaultApp],
    daemon: DevDaemon,
    how: str,
) -> None:
    handled = how == "sigterm-handled"
    # Handled: the registration is slow enough (3 s) that an exit waiting for it shows.
    app = fault_app(
        source=HANDLED_TERM if handled else APP,
        env={"DETRIX_REGISTER_TIMEOUT": "4"} if handled else None,
    )
    home = app.home
    with FaultDaemon(backend=daemon) as slow:
        # Registering: the debug listener is open and the daemon is about to attach.
        slow.faults["register"] = Fault(delay=3.0 if handled else 1.0)
        result: dict[str, Any] = {}

        def wake() -> None:
            try:
                result["r"] = app.wake(slow.url, timeout=10)
            except OSError as exc:  # the host dies under it: that is the point
                result["r"] = exc

        waker = threading.Thread(target=wake, daemon=True)
        waker.start()
        wait_until(lambda: slow.count("register") >= 1, timeout=10, what="registering")
        assert app.status()["state"] == "waking"
        started = time.monotonic()
        app.terminate(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        app.proc.wait(10)
        took = time.monotonic() - started
        waker.join(15)
        # The delayed registration reaches the daemon after the host is gone.
        wait_until(lambda: daemon.connections, timeout=8, what="the late registration")
    if handled:
        assert app.proc.returncode == 0, app.proc.communicate(timeout=5)[1][-3000:]
        assert took < 2.2  # exit waits 0.5 s for the wake's lock, not 3 s for the wake
        assert not (home / "clients" / f"{app.pid}.json").exists()  # atexit ran
    else:
        sig = signal.SIGKILL if how == "sigkill" else signal.SIGTERM
        assert app.proc.returncode == -sig
        assert took < 1.0
        assert not pid_running(app.pid)
    assert not children_of(app.pid)  # no adapter or helper outlives the host

    # The next host in the same home wakes as usual.
    nxt = fault_app()
    code, body = nxt.wake(daemon.url)
    assert code == 200, body
    assert nxt.sleep()[0] == 200
    # The dead host's late registration found its port closed: nothing stays attached.
    dead = [cid for cid, row in daemon.connections.items() if row.pid == app.pid]
    assert dead
    wait_until(lambda: not live_rows(daemon), timeout=8, what="no attachment to a dead port")
    assert daemon.connections[dead[0]].status == 4  # failed: connection refused


# -- a fork during a wake --------------------------------------------------------------

FORK_APP = textwrap.dedent(
    """\
    import os, sys, time
    beat, seconds = sys.argv[1], float(sys.argv[2])
    trigger, child_file = beat + ".fork", beat + ".child"
    deadline = time.time() + seconds
    forked = False
    while time.time() < deadline:
        os.utime(beat)
        if not forked and os.path.exists(trigger):
            forked = True
            pid = os.fork()
            if pid == 0:
                beat = beat + ".childbeat"
                open(beat, "w").close()
                with open(beat + ".interval", "w") as f:  # the parent's wake is not ours
                    f.write(repr(sys.getswitchinterval()))
                with open(child_file, "w") as f:
                    f.write(str(os.getpid()))
        time.sleep(0.05)
    """
)


@pytest.mark.parametrize("phase", ["health", "register"])
def test_fork_during_a_wake(
    fault_app: Callable[..., FaultApp],
    daemon: DevDaemon,
    phase: str,
) -> None:
    """The child starts afresh, asleep, with its own identity; the parent's wake completes.

    Forked while the parent registers (its debug listener already open), the
    child cannot open one of its own (debugpy listens once per process and a
    fork does not take the listener along): its wake fails with a clear 500.
    Forked before (during the health check), the child wakes on its own.
    """
    # never woken before; the delays below only hold the parent in its phase, so the
    # timeouts leave seconds of room (1 s against 0.8 s failed on a loaded machine)
    app = fault_app(
        source=FORK_APP,
        name="fork_app.py",
        env={"DETRIX_HEALTH_CHECK_TIMEOUT": "5", "DETRIX_REGISTER_TIMEOUT": "5"},
    )
    with FaultDaemon(backend=daemon) as slow:
        slow_port = int(slow.url.rsplit(":", 1)[1])
        slow.faults[phase] = Fault(delay=0.8 if phase == "health" else 1.2)  # < timeouts
        result: dict[str, Any] = {}
        waker = threading.Thread(target=lambda: result.update(r=app.wake(slow.url)))
        waker.start()
        wait_until(lambda: slow.count(phase) >= 1, timeout=10, what=f"the parent in {phase}")
        Path(str(app.beat) + ".fork").touch()
        child_file = Path(str(app.beat) + ".child")
        child_pid = int(
            wait_until(
                lambda: child_file.exists() and child_file.read_text(), timeout=10, what="the child"
            )
        )
        interval = Path(str(app.beat) + ".childbeat.interval")
        assert float(interval.read_text()) == 0.005, "the child kept the wake's switch interval"
        try:
            child = wait_for_record(app.home, child_pid, app.proc)
            child_url = child["control_url"]
            code, status = http_json(child_url, "GET", "/detrix/status")
            assert code == 200
            assert status["state"] == "sleeping" and status["connection_id"] is None
            assert status["name"] != app.status()["name"]
            assert status["control_port"] != app.status()["control_port"]
            # The child's sleep never touches the parent's registration.
            assert http_json(child_url, "POST", "/detrix/sleep") == (
                200,
                {"status": "already_sleeping"},
            )
            waker.join(20)
            code, woke = result["r"]
            assert code == 200 and woke["status"] == "awake", woke
            slow.faults.clear()
            code, body = http_json(child_url, "POST", "/detrix/wake", {"daemon_url": daemon.url})
            if phase == "register":
                assert code == 500 and "forked" in body["error"], body
                assert http_json(child_url, "GET", "/detrix/status")[1]["state"] == "sleeping"
            else:
                assert code == 200 and body["connection_id"] != woke["connection_id"], body
                assert http_json(child_url, "POST", "/detrix/sleep")[0] == 200
            assert app.status()["state"] == "awake"
            assert live_rows(daemon) == [woke["connection_id"]]
            unregistrations = daemon.unregistrations
            assert app.sleep()[0] == 200
            assert daemon.unregistrations == unregistrations + 1
            assert not live_rows(daemon)
            app.assert_running()
            assert time.time() - Path(str(app.beat) + ".childbeat").stat().st_mtime < 1.0
        finally:
            try:
                os.kill(child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The parent's next wakes work, and a wake/sleep cycle leaves nothing behind.
    ports = (daemon.port, slow_port)
    warm_up(app, daemon.url)  # every worker thread started, so the count is stable
    time.sleep(0.3)
    baseline = app.counts(ports)
    assert app.wake(daemon.url)[0] == 200
    assert app.sleep()[0] == 200
    settle(app, baseline, ports)
