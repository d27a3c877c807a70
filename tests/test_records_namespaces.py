"""Discovery records across PID namespaces, and a home that does not exist (issue 13).

* A process that is PID 1 in its own namespace writes ``1.json``; a reader on
  the host sees its own pid 1 (init), with another start time, and used to
  delete the record. Records now carry the writer's PID namespace; a reader
  deletes only what it can prove stale, and finds the writer under the pid it
  has in the reader's namespace. Run with a real namespace
  (``unshare --pid --fork``), which needs root.
* With ``HOME=/nonexistent`` (root, so nothing stops it) the writer created
  ``/nonexistent/detrix/clients``. It never creates a home now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import SAMPLE_APP, clean_env, http_json, wait_until

from detrix_auto.discovery import iter_records, pid_namespace, process_start_ticks

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="PID namespaces and /proc are Linux only")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(home)
    env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "detrix_auto", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )


def _child_of(pid: int) -> int:
    def child() -> int | None:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(text[0]) if text else None

    return int(wait_until(child, timeout=10))


@pytest.fixture
def unshare() -> str:
    path = shutil.which("unshare")
    if path is None:
        pytest.skip("needs unshare (util-linux) for a real PID namespace")
    if os.geteuid() != 0:
        pytest.skip("a PID namespace of its own needs root here")
    probe = subprocess.run([path, "--pid", "--fork", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace: {probe.stderr.decode().strip()}")
    return path


@pytest.mark.parametrize("own_proc", [True, False], ids=["mount-proc", "host-proc"])
def test_pid_1_of_another_namespace_is_found_not_deleted(tmp_path, home, unshare, own_proc):
    script = tmp_path / "app.py"
    script.write_text(SAMPLE_APP)
    argv = [unshare, "--pid", "--fork", *(["--mount-proc"] if own_proc else [])]
    if own_proc:  # a chroot may allow a PID namespace but not mounting a /proc for it
        probe = subprocess.run([*argv, "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot mount a /proc of its own here: {probe.stderr.decode().strip()}")
    env = clean_env(home, DETRIX_ENABLE="1")
    wrapper = subprocess.Popen(
        [*argv, sys.executable, str(script), "60"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    host_pid = 0
    try:
        host_pid = _child_of(wrapper.pid)
        path = home / "clients" / "1.json"
        wait_until(path.exists, timeout=20)
        written = json.loads(path.read_text())
        assert written["pid"] == 1
        assert written["pid_ns"] == pid_namespace(host_pid) != pid_namespace()
        assert written["host_pid"] == (None if own_proc else host_pid)

        # Read from the host: pid 1 here is init, started long before.
        assert process_start_ticks(1) != written["proc_start"]
        ps = _cli(home, "ps", "--json")
        assert ps.returncode == 0, ps.stderr
        rows = json.loads(ps.stdout)
        assert [row["pid"] for row in rows] == [host_pid], ps.stderr
        assert rows[0]["state"] == "sleeping"
        assert path.exists(), "the host-side reader deleted a live record"

        status = _cli(home, "status", str(host_pid), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == host_pid

        found = [r for r in iter_records(str(home)) if r.get("ns_pid") == 1]
        assert [r["pid"] for r in found] == [host_pid]
    finally:
        if host_pid:
            os.kill(host_pid, 9)  # the namespace's init: everything in it ends
        wrapper.kill()
        wrapper.communicate(timeout=10)


def _fake_record(home: Path, pid: int, **fields: object) -> Path:
    clients = home / "clients"
    clients.mkdir(mode=0o700, exist_ok=True)
    record = {"pid": pid, "name": f"x-{pid}", "control_url": "http://127.0.0.1:9", **fields}
    path = clients / f"{pid}.json"
    path.write_text(json.dumps(record))
    path.chmod(0o600)
    return path


def test_a_record_of_another_namespace_is_never_taken_for_a_local_pid(home):
    """pid 1 here is alive with another start time: once, that meant "stale", and deleted."""
    path = _fake_record(home, 1, pid_ns=4026539999, proc_start=123, host_pid=None)
    ps = _cli(home, "ps", "--json")
    assert json.loads(ps.stdout) == []
    assert path.exists(), "a record that is not provably stale was deleted"
    assert (
        f"{path} belongs to pid 1 of another PID namespace (pid:[4026539999]) that this shell "
        "cannot see; left alone"
    ) in ps.stderr
    status = _cli(home, "status", "1")
    assert status.returncode != 0 and "another PID namespace" in status.stderr
    assert path.exists()


def test_a_wrong_host_pid_hint_is_not_believed(home):
    """``host_pid`` is checked (namespace and start time) before it is used."""
    me = os.getpid()
    path = _fake_record(home, 7, pid_ns=4026539999, proc_start=123, host_pid=me)
    assert [r for r in iter_records(str(home)) if r.get("ns_pid") == 7] == []
    assert path.exists()


def test_a_stale_record_of_our_own_namespace_is_still_pruned(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = _fake_record(home, dead.pid, pid_ns=pid_namespace(), proc_start=1)
    reused = _fake_record(home, 1, pid_ns=pid_namespace(), proc_start=1)  # init started later
    assert list(iter_records(str(home))) == []
    assert not gone.exists() and not reused.exists()


# -- nothing creates a home ---------------------------------------------------------------


def _start(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    script = tmp_path / "app.py"
    script.write_text(SAMPLE_APP)
    return subprocess.Popen(
        [sys.executable, str(script), "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_missing_home_is_never_created(tmp_path):
    missing = tmp_path / "nonexistent"
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir(mode=0o700)
    env = clean_env(tmp_path, DETRIX_ENABLE="1", HOME=str(missing), TMPDIR=str(private_tmp))
    env.pop("DETRIX_HOME")
    env.pop("XDG_RUNTIME_DIR", None)
    proc = _start(tmp_path, env)
    try:
        record = private_tmp / f"detrix-auto-{os.getuid()}" / "clients" / f"{proc.pid}.json"
        wait_until(record.exists, timeout=20)
        url = json.loads(record.read_text())["control_url"]
        assert http_json(url, "GET", "/detrix/health")[0] == 200
        assert not missing.exists(), "the writer created the user's home"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err == "", "a fallback that worked must not print anything"


def test_detrix_home_itself_is_made_below_an_existing_parent_only(tmp_path):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir(mode=0o700)
    for home, made in ((tmp_path / "fresh", True), (tmp_path / "no" / "such" / "home", False)):
        env = clean_env(home, DETRIX_ENABLE="1", TMPDIR=str(private_tmp))
        env.pop("XDG_RUNTIME_DIR", None)
        proc = _start(tmp_path, env)
        try:
            at_home = home / "clients" / f"{proc.pid}.json"
            fallback = private_tmp / f"detrix-auto-{os.getuid()}" / "clients" / f"{proc.pid}.json"
            wait_until(lambda: at_home.exists() or fallback.exists(), timeout=20)
            assert at_home.exists() is made
            assert (home.stat().st_mode & 0o777 == 0o700) if made else not home.parent.exists()
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
