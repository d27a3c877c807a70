"""The "Observe a running process" walkthrough, run as written.

The ``bash`` blocks of that section in ``docs/cli.md`` are run as one bash
script with the installed ``python`` and ``detrix-auto`` first on PATH, and the
README's section of the same title must hold exactly the same blocks. The only
addition is a wait for the background program's discovery record after the
line that starts it: a person typing the commands never outruns it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import clean_env

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Observe a running process"


def section_blocks(path: Path) -> list[str] | None:
    """The ``bash`` code blocks of the walkthrough section, or None without the section."""
    text = path.read_text(encoding="utf-8")
    start = text.find(SECTION + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end >= 0 else len(text)]
    return re.findall(r"^```bash\n(.*?)^```$", body, flags=re.S | re.M)


def script_for(blocks: list[str]) -> str:
    lines = [
        "set -euo pipefail",
        "__app=",
        'trap \'[ -n "$__app" ] && kill "$__app" 2>/dev/null || true\' EXIT',
        '__wait() { for _ in $(seq 400); do [ -e "$DETRIX_HOME/clients/$1.json" ] && return 0;'
        ' sleep 0.05; done; echo "no discovery record for $1" >&2; return 1; }',
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


def test_the_walkthrough_runs_as_written(home, tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    if shutil.which("detrix-auto", path=bin_dir) is None:
        pytest.skip("the detrix-auto console script is not installed next to this interpreter")
    blocks = section_blocks(ROOT / "docs" / "cli.md")
    assert blocks
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(home, HOME=str(tmp_path))  # no daemon.pid, no token file of the user's
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    if not os.path.exists(os.path.join(bin_dir, "python")):
        pytest.skip("no `python` next to this interpreter")
    result = subprocess.run(
        ["bash", "-c", script_for(blocks)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, out + err
    assert "Traceback" not in err

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
