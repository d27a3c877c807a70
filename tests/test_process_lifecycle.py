"""Process lifecycle as real subprocesses: fork, multiprocessing, gunicorn, exit, late daemon."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import clean_env, http_json, wait_until

from detrix_auto.discovery import iter_records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")


def _records(home: Path) -> list[dict]:
    return list(iter_records(str(home), prune=False))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_workers_are_each_wakeable(tmp_path, home, daemon, method):
    script = tmp_path / "mp.py"
    script.write_text(
        textwrap.dedent(f"""\
        import multiprocessing as mp, time
        def work(n):
            total = 0
            end = time.time() + 60
            while time.time() < end:
                total += n
                time.sleep(0.02)
        if __name__ == "__main__":
            ctx = mp.get_context({method!r})
            procs = [ctx.Process(target=work, args=(i,)) for i in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=clean_env(home, DETRIX_ENABLE="1"), cwd=str(tmp_path)
    )
    try:
        wait_until(lambda: len(_workers(home, proc.pid)) >= 2, timeout=60)
        records = _records(home)
        workers = _workers(home, proc.pid)
        assert len({r["control_port"] for r in records}) == len(records)
        assert len({r["name"] for r in records}) == len(records)
        ids = set()
        for record in workers[:2]:
            code, body = http_json(
                record["control_url"], "POST", "/detrix/wake", {"daemon_url": daemon.url}
            )
            assert code == 200, body
            ids.add(body["connection_id"])
        assert len(ids) == 2  # two separate daemon identities
        code, parent = http_json(
            f"http://127.0.0.1:{_record(home, proc.pid)['control_port']}", "GET", "/detrix/status"
        )
        assert parent["state"] == "sleeping"  # waking the workers left the parent alone
        for record in workers[:2]:
            assert http_json(record["control_url"], "POST", "/detrix/sleep")[0] == 200
        assert daemon.unregistrations == 2
    finally:
        for r in _records(home):
            try:
                os.kill(r["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()


#: multiprocessing's helper processes (instrumented too, as any Python started with the
#: hook on): the resource tracker (spawn, forkserver) and the fork server itself.
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _workers(home: Path, parent: int) -> list[dict]:
    """The records of ``parent``'s pool workers, not of itself or of its helpers (a
    worker forked by the fork server has the server's command line, and a parent)."""

    def helper(record: dict) -> bool:
        command = " ".join(record.get("argv", []))
        return record.get("forked_from") is None and any(h in command for h in _HELPERS)

    return [r for r in _records(home) if r["pid"] != parent and not helper(r)]


def _record(home: Path, pid: int) -> dict:
    return next(r for r in _records(home) if r["pid"] == pid)


def test_forked_child_never_touches_the_parents_registration(spawn, home, daemon, tmp_path):
    go = tmp_path / "fork-now"
    app = spawn(
        textwrap.dedent("""\
        import os, sys, time
        while not os.path.exists(sys.argv[1]):  # the parent is woken before the fork
            time.sleep(0.01)
        pid = os.fork()
        time.sleep(60)
    """),
        str(go),
    )
    code, woke = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, woke
    go.write_text("")  # told, not timed: a slow wake on a loaded machine is still woken first
    wait_until(lambda: len(_records(home)) == 2, timeout=30)
    child = next(r for r in _records(home) if r["pid"] != app.pid)
    code, status = http_json(child["control_url"], "GET", "/detrix/status")
    assert status["state"] == "sleeping" and status["connection_id"] is None
    assert status["name"] != app.status()["name"]
    # The child's sleep is a no-op: it never unregisters the parent's connection.
    assert http_json(child["control_url"], "POST", "/detrix/sleep")[1] == {
        "status": "already_sleeping"
    }
    # debugpy cannot listen again in a fork of a process that already listens.
    code, body = http_json(child["control_url"], "POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 500 and "forked" in body["error"]
    assert daemon.unregistrations == 0
    assert app.status()["state"] == "awake"
    os.kill(child["pid"], signal.SIGKILL)


@pytest.mark.skipif(
    shutil.which("gunicorn") is None and not Path(sys.executable).with_name("gunicorn").exists(),
    reason="gunicorn not installed",
)
def test_gunicorn_workers_are_each_wakeable(tmp_path, home, daemon):
    (tmp_path / "wsgiapp.py").write_text(
        textwrap.dedent("""\
        def application(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello"]
    """)
    )
    port = _free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    proc = subprocess.Popen(
        [gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "wsgiapp:application"],
        cwd=str(tmp_path),
        env=clean_env(home, DETRIX_ENABLE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(_records(home)) >= 3, timeout=60)
        workers = [r for r in _records(home) if r["pid"] != proc.pid]
        assert len(workers) == 2
        for worker in workers:
            code, body = http_json(
                worker["control_url"], "POST", "/detrix/wake", {"daemon_url": daemon.url}
            )
            assert code == 200, body
        assert daemon.registrations == 2
        assert len({c.pid for c in daemon.connections.values()}) == 2
        # The app still serves.
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.read() == b"hello"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_awake_start_state_waits_for_a_daemon_that_starts_later(spawn):
    from detrix_auto.devdaemon import DevDaemon

    port = _free_port()
    app = spawn(
        env={
            "DETRIX_START_STATE": "awake",
            "DETRIX_DAEMON_URL": f"http://127.0.0.1:{port}",
            "DETRIX_WAKE_RETRY_MAX": "1",
        }
    )
    started = time.monotonic()
    # The start-state wake begins on a worker once start-up is done: on a loaded
    # machine the first status can still (truthfully) say "sleeping".
    wait_until(lambda: app.status()["state"] == "waking", timeout=15, what="the start wake")
    time.sleep(2.0)
    assert app.status()["state"] == "waking"
    assert app.status()["last_error"]
    with DevDaemon(port=port) as late:
        wait_until(lambda: app.status()["state"] == "awake", timeout=30)
        assert late.registrations == 1
    assert time.monotonic() - started < 30
    assert app.proc.poll() is None


def test_normal_exit_unregisters(spawn, home, daemon, tmp_path):
    go = tmp_path / "exit-now"  # the app ends when told: a slow wake cannot outlive it
    app = spawn(
        textwrap.dedent("""\
        import os, sys, time
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.01)
        print("bye", flush=True)
    """),
        str(go),
    )
    code, _ = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200
    started = time.monotonic()
    go.write_text("")
    out, err = app.proc.communicate(timeout=30)
    assert out == "bye\n" and app.proc.returncode == 0, err
    assert daemon.unregistrations == 1
    assert time.monotonic() - started < 5.0  # never delayed beyond the timeout
    assert not (home / "clients" / f"{app.pid}.json").exists()


def test_exit_with_a_dead_daemon_is_not_delayed_past_the_timeout(spawn, daemon, tmp_path):
    # The app ends when told, not after a fixed time: a loaded machine can take
    # longer than any fixed time to wake it (it then exited mid-wake: 503).
    go = tmp_path / "exit-now"
    app = spawn(
        textwrap.dedent("""\
        import os, sys, time
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.01)
    """),
        str(go),
        env={"DETRIX_UNREGISTER_TIMEOUT": "1"},
    )
    from doubles import Fault, FaultDaemon

    with FaultDaemon(backend=daemon) as flaky:
        assert app.request("POST", "/detrix/wake", {"daemon_url": flaky.url})[0] == 200
        flaky.faults["unregister"] = Fault(hang=True)
        started = time.monotonic()
        go.write_text("")
        app.proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    assert app.proc.returncode == 0
    # the unregister hangs forever: exit waits for its 1 s timeout, not for it
    assert elapsed < 1.0 + 4.0


def test_sigterm_while_waking_leaves_no_stray_process(spawn, daemon):
    from doubles import Fault, FaultDaemon

    app = spawn()
    with FaultDaemon(backend=daemon) as slow:
        slow.faults["health"] = Fault(delay=2.0)
        import threading

        def wake() -> None:
            try:
                app.request("POST", "/detrix/wake", {"daemon_url": slow.url}, timeout=10)
            except OSError:
                pass  # the app dies under it: that is the point

        threading.Thread(target=wake, daemon=True).start()
        wait_until(lambda: app.status()["state"] == "waking", timeout=5, interval=0.01)
        app.proc.send_signal(signal.SIGTERM)
        app.proc.wait(10)
    assert app.proc.returncode == -signal.SIGTERM
    # No adapter or helper process outlives the app (the adapter runs in-process).
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    assert not [
        line for line in out.splitlines() if f" {app.pid} " in f" {line} " and "debugpy" in line
    ]


def test_record_for_child_is_written_before_the_app_runs(tmp_path, home):
    """A parent can wait for the record without racing the child's start-up."""
    script = tmp_path / "quick.py"
    script.write_text(
        "import os, sys\n"
        "record = os.path.join(os.environ['DETRIX_HOME'], 'clients', f'{os.getpid()}.json')\n"
        "sys.stdout.write(str(os.path.exists(record)))\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        env=clean_env(home, DETRIX_ENABLE="1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "True", out.stderr
