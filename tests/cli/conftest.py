"""Fixtures of the CLI tests: every command runs as a real ``python -m detrix_auto``.

Each test gets a unique marker in its environment; every process a test
starts (the CLI, the apps it observes, the demo's sample app) inherits it.
After the test, any process still carrying the marker is a leak: it is
killed and the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import MARKER, clean_env, processes_with, run_cli, wait_until


@pytest.fixture(autouse=True)
def no_process_left_behind(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)
    yield marker
    try:
        wait_until(lambda: not processes_with(marker), timeout=5)
    except AssertionError:
        leftovers = processes_with(marker)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        pytest.fail(f"processes left behind by the test: {leftovers}")


@pytest.fixture
def cli(home: Path) -> Any:
    """``cli("ps", "--json")`` runs the command with DETRIX_HOME=home."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(home, *args, env=env, timeout=timeout, cwd=cwd)

    return run


@pytest.fixture
def procs(home: Path) -> Iterator[Any]:
    """Start any command (test env, DETRIX_HOME=home); killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(
        argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[str]:
        full = clean_env(home)
        full.update(env or {})
        proc = subprocess.Popen(
            argv,
            env=full,
            cwd=str(cwd) if cwd else None,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter without detrix-auto, debugpy or urllib3 (a venv without pip)."""
    where = tmp_path_factory.mktemp("bare-venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60
    )
    python = str(where / "bin" / "python")
    probe = subprocess.run(
        [python, "-c", "import detrix_auto"],
        capture_output=True,
        cwd="/",
        check=False,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert probe.returncode != 0, "the bare venv can import detrix_auto"
    return python
