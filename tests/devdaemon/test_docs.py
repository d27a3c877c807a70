"""docs/metrics-api.md's walkthrough, run exactly as written.

Every ```bash block of the page, in order, becomes one script run by bash in an
empty directory, with this interpreter's environment first on PATH (the page
says to activate it) and curl. The test only reads what the commands printed:
the metric creation's answer and the events, whose values must be the
program's real ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

PAGE = ROOT / "docs" / "metrics-api.md"
MARKER = "DOCS_TEST_MARKER"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def _marked(value: str) -> list[int]:
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _json_documents(output: str) -> list[Any]:
    return [json.loads(line) for line in output.splitlines() if line.startswith(("{", "["))]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough uses curl")
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the test finds leftovers in /proc"
)
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = bash_blocks(PAGE.read_text())
    assert len(blocks) >= 5, "the page lost its walkthrough"
    script = "\n".join(blocks)
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        DETRIX_HOME=str(home),
        PYTHONUNBUFFERED="1",
        **{MARKER: marker},
    )
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        # The last block kills both; give them the moment they need to exit.
        deadline = time.monotonic() + 10
        while (leftovers := _marked(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    assert re.search(r"is awake: debug port \d+, connection [0-9a-f]{32}", done.stdout)
    created, events = _json_documents(done.stdout)
    assert created["status"] == "created" and created["name"] == "running_total"
    assert (created["dapConfirmed"], created["actualLine"]) == (True, 7)
    assert created["metric"]["location"] == {"file": str(work / "shop.py"), "line": 7}
    assert len(events) == 3
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    for event in events:
        n, total, price = event["values"]
        count = int(n["valueJson"])
        assert int(total["valueJson"]) == count * (count + 1) // 2  # the program's real values
        assert price["typedValue"] == {"stringValue": f"{count * 1.5:.2f} EUR"}
    assert "unauthenticated" not in done.stderr  # it was started with a token
    assert leftovers == [], "the walkthrough left processes running"
