"""Pre-fork servers: a real gunicorn master and its workers, as ``ps`` and ``wake`` see them.

debugpy listens once per process image: a worker forked after its master's
debugger listened can never be woken. Issue 13: ``ps`` still called such
workers ``sleeping``, and nothing stopped an operator from waking the master.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from cli_support import one_error_line, wait_until

WSGI = textwrap.dedent(
    """\
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\\n"]
    """
)


def _gunicorn() -> str:
    found = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("gunicorn is not installed in this environment (the `test` extra has it)")
    return found


def _children(pid: int) -> dict[int, str]:
    """The live children of ``pid`` and their state letter, read from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found[int(entry)] = fields[0]
    return found


def _ps(cli):
    result = cli("ps", "--json")
    assert result.returncode == 0, result.stderr
    return {row["pid"]: row for row in json.loads(result.stdout)}


def test_a_woken_master_marks_its_later_workers_and_wake_says_why(cli, procs, daemon, tmp_path):
    (tmp_path / "wsgi.py").write_text(WSGI)
    master = procs(
        [_gunicorn(), "-w", "1", "-b", "127.0.0.1:0", "wsgi:app"],
        # gunicorn writes a control socket under HOME
        env={"DETRIX_ENABLE": "1", "HOME": str(tmp_path)},
        cwd=tmp_path,
    )

    def worker_of(rows):
        workers = [row for row in rows.values() if row["forked_from"] == master.pid]
        return workers[0] if len(workers) == 1 else None

    try:
        rows = wait_until(lambda: (r := _ps(cli)) and master.pid in r and worker_of(r) and r, 30)
    except AssertionError:
        seen = _ps(cli)
        children = _children(master.pid)
        for pid in [master.pid, *children]:
            try:
                os.kill(pid, signal.SIGKILL)  # the workers too: they hold gunicorn's stderr
            except OSError:
                pass
        try:
            _, err = master.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = "(stderr still held open)"
        raise AssertionError(
            f"no master with one worker; ps: {seen}; children: {children}; gunicorn: {err[-3000:]}"
        ) from None
    first = worker_of(rows)
    assert rows[master.pid]["workers"] == [first["pid"]]
    assert rows[master.pid]["forked_from"] is None
    assert first["wakeable"] is True and first["note"] is None
    assert "pre-fork master" in rows[master.pid]["note"]

    # the master is not woken without --force, and the message says why and what instead
    refused = cli("wake", str(master.pid), "--daemon-url", daemon.url)
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert "pre-fork master" in line and str(first["pid"]) in line
    assert f"detrix-auto wake {first['pid']}" in line and "--force" in line
    assert daemon.registrations == 0  # nothing was asked of the master

    # a worker forked before any wake of its master can be woken
    woke = cli("wake", str(first["pid"]), "--daemon-url", daemon.url)
    assert woke.returncode == 0, woke.stderr
    assert cli("sleep", str(first["pid"])).returncode == 0

    forced = cli("wake", str(master.pid), "--daemon-url", daemon.url, "--force")
    assert forced.returncode == 0, forced.stderr
    assert cli("sleep", str(master.pid)).returncode == 0
    # its debugger stays open: a second wake no longer needs --force
    assert cli("wake", str(master.pid), "--daemon-url", daemon.url).returncode == 0
    assert cli("sleep", str(master.pid)).returncode == 0

    # gunicorn replaces a worker that ended: the new one is forked after the listen
    os.kill(first["pid"], signal.SIGTERM)

    def replaced(rows):
        worker = worker_of(rows)
        return worker if worker and worker["pid"] != first["pid"] else None

    later = wait_until(lambda: replaced(_ps(cli)), 30)
    rows = _ps(cli)
    assert later["state"] == "sleeping" and later["wakeable"] is False
    assert f"forked from pid {master.pid}" in later["note"]
    assert "debugpy cannot listen again" in later["note"]
    assert "workers it forks from now on cannot be woken" in rows[master.pid]["note"]

    table = cli("ps").stdout.splitlines()
    by_pid = {line.split()[0]: line for line in table[1:] if line.split()}
    assert "sleeping (cannot wake)" in by_pid[str(later["pid"])]
    assert "(new workers cannot wake)" in by_pid[str(master.pid)]
    assert any(line.startswith(f"{later['pid']}: cannot be woken") for line in table)

    # waking it is refused with the reason, before the process is even asked
    refused = cli("wake", str(later["pid"]), "--daemon-url", daemon.url)
    assert refused.returncode == 1
    assert "debugpy cannot listen again" in one_error_line(refused)
    # with --force the process itself answers, and says the same
    forced = cli("wake", str(later["pid"]), "--daemon-url", daemon.url, "--force")
    assert forced.returncode == 1
    assert "forked after its parent opened the debugger" in one_error_line(forced)

    status = cli("status", str(later["pid"]))
    assert "note" in status.stdout and "cannot be woken" in status.stdout
