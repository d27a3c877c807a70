"""The README, followed from the top as a newcomer would, its commands taken from the file.

One bash script is made of the README's own text: the first command of its
first block (make ``.venv``, install this checkout, run the demo), the one
stated step (``source .venv/bin/activate``), then every ``bash`` block of
"Observe a running process". It runs in a fresh copy of the checkout, with
the user's own PATH (only HOME is a fresh directory, so that no ``~/detrix``
of the user's is read). The only addition is a wait for the background
program's discovery record after the line that starts it: a person typing
the commands never outruns it. The README's walkthrough section must hold
exactly the blocks of docs/cli.md's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Observe a running process"
ACTIVATE = "source .venv/bin/activate"
#: Never copied into the fresh checkout: what a clone does not have either.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git",
    ".tox",
    ".venv*",
    "venv",
    ".ci-results",
    "__pycache__",
    ".venvs",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "dist",
    "*.egg-info",
)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def section_blocks(path: Path) -> list[str] | None:
    """The ``bash`` code blocks of the walkthrough section, or None without the section."""
    text = path.read_text(encoding="utf-8")
    start = text.find(SECTION + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(SECTION))
    return bash_blocks(text[start : end if end >= 0 else len(text)])


def readme_script(readme: Path) -> str:
    """The README's first command, its activation step and its walkthrough, as one script."""
    blocks = bash_blocks(readme.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "the README lost its first two bash blocks"
    first = blocks[0].splitlines()[0].split("  #")[0].strip()
    assert first.startswith("python3 -m venv .venv && "), first
    assert blocks[1].strip() == ACTIVATE, (
        f"the README's second bash block must be the one stated step, {ACTIVATE!r}"
    )
    walkthrough = section_blocks(readme)
    assert walkthrough, f"the README lost its {SECTION!r} section"
    return script_for([first, ACTIVATE, *walkthrough])


def script_for(blocks: list[str]) -> str:
    lines = [
        "set -euo pipefail",
        "__app=",
        'trap \'[ -n "$__app" ] && kill "$__app" 2>/dev/null || true\' EXIT',
        '__wait() { for _ in $(seq 1200); do [ -e "${DETRIX_HOME:-$HOME/detrix}/clients/$1.json" ]'
        ' && return 0; sleep 0.05; done; echo "no discovery record for $1" >&2; return 1; }',
    ]
    for block in blocks:
        for line in block.splitlines():
            lines.append(line)
            if line.rstrip().endswith(" &"):
                lines.append('__app=$!; __wait "$__app"')
    return "\n".join(lines) + "\n"


def test_the_readme_shows_the_tested_commands():
    reference = section_blocks(ROOT / "docs" / "cli.md")
    assert reference, "docs/cli.md lost its walkthrough section"
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("no README.md (an sdist without it?)")
    found = section_blocks(readme)
    assert found == reference, (
        f"the README's {SECTION!r} section must hold the same commands as docs/cli.md's "
        "(the walkthrough this test runs)"
    )


@pytest.mark.slow
def test_the_readme_from_the_top_runs_as_written(tmp_path):
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("no README.md (an sdist without it?)")
    script = readme_script(readme)
    work = tmp_path / "detrix-auto"
    shutil.copytree(ROOT, work, ignore=NOT_IN_A_CLONE)
    home = tmp_path / "home"
    home.mkdir()
    # The user's environment, PATH untouched; a fresh HOME; nothing of ours leaking in.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DETRIX_", "PYTEST_")) and k not in ("PYTHONPATH", "HOME")
    }
    env["HOME"] = str(home)
    if "PIP_CACHE_DIR" not in env and os.path.isdir(os.path.expanduser("~/.cache/pip")):
        env["PIP_CACHE_DIR"] = os.path.expanduser("~/.cache/pip")  # a cache, not a setting
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a package index can be slow; nothing here waits on a clock
        check=False,
    )
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, out + err
    assert "Traceback" not in err, err

    # the demo: live values, then nothing left behind
    assert "detrix-auto demo: watch a value change" in out, out
    assert re.search(r"^Saw \d+ value\(s\)", out, re.M), out
    assert "nothing is left running" in out
    # its hints start with the step the README states, as the shell is not activated yet
    assert "  source .venv/bin/activate " in out, out
    # ps: the table, with the program asleep
    table = re.search(r"^PID +NAME +STATE +CONTROL +DEBUG +UPTIME +COMMAND$", out, re.M)
    assert table, out
    row = re.search(r"^(\d+) +app-\1 +sleeping +http://127\.0\.0\.1:\d+ +- ", out, re.M)
    assert row, out
    pid = row.group(1)
    # observe: three hits with the real values (a logpoint runs before line 6)
    hits = re.findall(r"^\d\d:\d\d:\d\d\.\d{3}  \[MainThread\]  n=(\d+)  total=(\d+)$", out, re.M)
    assert len(hits) == 3, out
    for n, total in hits:
        assert int(total) == int(n) * (int(n) + 1) // 2
    assert f"at {work}/app.py:6: n, total (until 3 hit(s))" in err
    assert "asleep again" in err
    # status, then doctor about that pid
    assert f"app-{pid} (pid {pid})" in out and "state          sleeping" in out
    assert f"pid {pid} is instrumented" in out
    assert "0 error(s)" in out
