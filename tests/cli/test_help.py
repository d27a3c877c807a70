"""Every command explains itself with an example; usage errors are short and exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from cli_support import cli_argv, one_error_line

from detrix_auto import __version__

COMMANDS = ["ps", "status", "wake", "sleep", "doctor", "run", "observe", "demo"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=30, check=False)


def test_top_level_help_lists_every_command_and_first_steps():
    result = _run("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"    {command} " in result.stdout
    assert "detrix-auto demo" in result.stdout
    assert "python -m detrix_auto" in result.stdout  # prog name when run with -m


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_says_what_it_does_with_an_example(command):
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "example" in text.lower()
    assert f"detrix-auto {command}" in text  # the example uses the command itself
    if command in ("ps", "status", "wake", "sleep", "doctor", "observe"):
        assert "--json" in text


def test_no_command_prints_the_help_and_exits_0_as_pip_does():
    result = _run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == _run("--help").stdout  # the same help, on stdout
    assert result.stderr == ""


def test_run_help_shows_how_run_is_typed():
    result = _run("run", "--help")
    assert result.returncode == 0
    first = result.stdout.splitlines()[0]
    assert first.endswith("run [-h] [--] CMD [ARGS...]"), first
    assert "..." not in first.replace("[ARGS...]", "")  # not argparse's bare "..."


def test_the_help_of_ps_and_wake_names_their_new_options():
    assert "--all" in _run("ps", "--help").stdout
    wake = _run("wake", "--help").stdout
    assert "--force" in wake and "pre-fork master" in wake


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["observe", "app"], "required"),
        (["observe", "app", "--at", "a.py:1", "--expr", "x", "--count", "0"], "--count"),
        (["observe", "app", "--at", "a.py:1", "--expr", "x", "--for", "-1"], "--for"),
        (["doctor", "abc"], "not a process id"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(args, fragment):
    result = _run(*args)
    assert result.returncode == 2
    assert fragment in one_error_line(result)
    assert "--help" in result.stderr


def test_version():
    result = _run("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_console_script_is_installed_next_to_the_interpreter():
    script = shutil.which("detrix-auto", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("detrix-auto is not installed as a console script in this environment")
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: detrix-auto ")
