"""Connection names of child processes: the parent's name plus the child's role.

Issue 13: children started by *spawn* run ``python -c "..."`` and were all
called ``python-c-PID``, which says nothing in ``ps`` for uvicorn,
multiprocessing or pytest-xdist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from cli_support import clean_env, wait_for_record, wait_until

from detrix_auto.config import default_name_base

SHOP = textwrap.dedent(
    """\
    import multiprocessing, signal, subprocess, sys, time

    def idle(_):
        time.sleep(60)

    if __name__ == "__main__":
        pool = multiprocessing.get_context("spawn").Pool(1)
        pool.map_async(idle, [1])
        # what execnet (pytest-xdist) starts: a -c bootstrap reading its code from stdin
        gateway = subprocess.Popen(
            [sys.executable, "-c", "import sys;exec(eval(sys.stdin.readline()))"],
            stdin=subprocess.PIPE,
        )

        def stop(*_):
            pool.terminate()
            gateway.kill()
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        time.sleep(60)
    """
)


def _names(cli):
    result = cli("ps", "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"].rsplit("-", 1)[0]: row for row in json.loads(result.stdout)}


def test_spawned_children_are_named_after_their_parent_and_role(cli, spawn):
    shop = spawn(SHOP, name="shop.py")
    names = wait_until(
        lambda: (n := _names(cli)) and {"shop-worker", "shop-resource-tracker"} <= set(n) and n,
        timeout=30,
    )
    assert names["shop"]["pid"] == shop.pid
    assert "python-c" not in names
    rows = json.loads(cli("ps", "--json").stdout)
    workers = [row for row in rows if row["name"].startswith("shop-worker-")]
    assert len(workers) == 2, [row["name"] for row in rows]  # the pool's and execnet's
    assert {"multiprocessing.spawn" in row["command"] for row in workers} == {True, False}
    assert any("sys.stdin.readline" in row["command"] for row in workers)
    # spawned, not forked: their records say they are fresh interpreters
    assert all(row["forked_from"] is None and row["wakeable"] for row in workers)
    _, err = shop.stop()
    assert "Traceback" not in err


def test_a_c_program_started_from_a_shell_keeps_its_plain_name(home, procs):
    shell = procs(
        ["sh", "-c", '"$0" -c "import time; time.sleep(30)"; :', sys.executable],
        env={"DETRIX_ENABLE": "1"},
    )
    child = wait_until(lambda: _children(shell.pid), timeout=20)[0]
    record = wait_for_record(home, child)
    assert record["name"] == f"python-c-{child}"
    os.kill(child, signal.SIGTERM)


def test_an_explicit_name_wins_for_children_too(home, spawn):
    child = textwrap.dedent(
        """\
        import subprocess, sys
        subprocess.run([sys.executable, "-c", "import time; time.sleep(30)"])
        """
    )
    parent = spawn(child, env={"DETRIX_NAME": "billing"}, name="parent.py")
    child = wait_until(lambda: _children(parent.pid), timeout=20)[0]
    record = wait_for_record(home, child)
    assert record["name"] == f"billing-{child}"
    os.kill(child, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize(
    ("argv", "parent", "base"),
    [
        (
            ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"],
            ["python", "-m", "uvicorn", "app:api", "--workers", "2"],
            "uvicorn-worker",
        ),
        (
            ["python", "-I", "-c", "from multiprocessing.resource_tracker import main;main(5)"],
            ["/venv/bin/python", "/venv/bin/celery", "-A", "proj", "worker"],
            "celery-resource-tracker",
        ),
        (
            ["python", "-c", "from multiprocessing.forkserver import main; main(3, 4)"],
            ["python", "jobs.py"],
            "jobs-forkserver",
        ),
        (
            ["python", "-c", "import sys;exec(eval(sys.stdin.readline()))"],
            ["python", "-m", "pytest", "-n", "4"],
            "pytest-worker",
        ),
        (["python", "-c", "print(1)"], ["python", "app.py"], "app-child"),
        # a parent that says nothing better keeps the plain name
        (["python", "-c", "print(1)"], ["python", "-c", "pass"], "python-c"),
        (["python", "-c", "print(1)"], ["python"], "python-c"),
        # not a -c program: the parent does not matter
        (["python", "tool.py"], ["python", "app.py"], "tool"),
    ],
)
def test_default_name_of_a_child(argv, parent, base):
    assert default_name_base(argv, parent) == base


def test_no_parent_lookup_for_an_argv_passed_in(tmp_path):
    """``default_name_base(argv)`` describes that argv only, whoever runs the test."""
    code = "from detrix_auto.config import default_name_base as d; print(d(['python', '-c', 'x']))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.strip() == "python-c"  # its parent (this test) is Python: not consulted
