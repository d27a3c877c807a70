"""What the bench scripts ask of a process's control plane (run as ``python bench/x.py``,
which puts this directory first on ``sys.path``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

#: The CPU-bound block the overhead measurements run (``bench/performance.py`` times
#: it, ``bench/instructions.py`` counts its instructions): a loop of arithmetic,
#: and a loop of calls to a tiny function.
WORK = """\
def loop_work(n):
    total = 0
    i = 0
    while i < n:
        total += i * i % 7
        i += 1
    return total

def leaf(x):
    return x & 3

def calls_work(n):
    total = 0
    for i in range(n):
        total += leaf(i)
    return total
"""


def ask(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60
) -> dict[str, Any]:
    """One JSON request to the control plane at ``url``; its JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return dict(json.loads(response.read()))


def record(home: Path, pid: int, timeout: float = 20.0) -> dict[str, Any]:
    """The discovery record of ``pid`` under ``home``, once it is written."""
    path = home / "clients" / f"{pid}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.02)
    raise SystemExit(f"no discovery record from pid {pid}")


def enabled_app(
    work: Path, source: str, env_extra: dict[str, str] | None = None, **popen: Any
) -> tuple[subprocess.Popen[Any], Path, Path]:
    """``source`` written to ``work/app.py`` and started with ``DETRIX_ENABLE=1`` and a
    private ``DETRIX_HOME`` (``work/home``), plus ``env_extra``; returns the process,
    the home, the script."""
    home = work / "home"
    home.mkdir(mode=0o700)
    script = work / "app.py"
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env.update(DETRIX_ENABLE="1", DETRIX_HOME=str(home), **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, **popen)
    return proc, home, script
