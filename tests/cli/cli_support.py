"""Helpers shared by the CLI tests (a module of its own: ``conftest`` names clash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from support import clean_env, wait_for_record, wait_until  # noqa: F401 - shared, re-exported

#: The checkout these tests belong to.
ROOT_DIR = Path(__file__).resolve().parents[2]

#: An untouched application: ``value`` changes every 50 ms. A logpoint runs
#: before its line, so at OBSERVE_LINE ``value == counter * 10`` always holds.
APP = textwrap.dedent(
    """\
    import sys, time

    deadline = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
    counter = 0
    while time.time() < deadline:
        counter += 1
        value = counter * 10
        # the logpoint goes on the next line
        time.sleep(0.05)
    """
)
OBSERVE_LINE = 9
BLANK_LINE = 2
COMMENT_LINE = 8

#: The environment variable every process started by a test inherits, so the
#: test can find any process it left behind, however deeply nested.
MARKER = "CLI_TEST_MARKER"


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "detrix_auto", *args]


def run_cli(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; from outside the source tree, so the installed package is tested."""
    full = clean_env(home)
    full.update(env or {})
    return subprocess.run(
        cli_argv(*args),
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd or home.parent),
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def processes_with(marker_value: str) -> list[int]:
    """Pids (other than ours) whose environment carries this test's marker."""
    needle = f"{MARKER}={marker_value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: exactly one line, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]
