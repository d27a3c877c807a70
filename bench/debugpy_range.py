#!/usr/bin/env python3
"""Which debugpy releases detrix-auto works with, per Python: measured, not assumed.

For every Python and every debugpy release asked for, installs that debugpy into
one virtual environment per Python (``bench/.venvs/range-<python>``, with
detrix-auto installed from this checkout) and runs the end-to-end tests that
exercise debugpy's private parts (``-m debugpy_contract``: wake, logpoint values,
sleep with tracing removed, re-wake, the gated listener, each capability's
fallback). Prints one table, and with ``--write`` rewrites the generated part of
``docs/compatibility.md``.

    python bench/debugpy_range.py          # 3.10-3.13 from pyenv, every 1.8.x
    python bench/debugpy_range.py --pythons 3.12 --debugpy 1.8.0,1.8.22
    python bench/debugpy_range.py --python /path/to/python3.14 ...  # any interpreter

Only public tooling: venv, pip and pytest in subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / "bench" / ".venvs"
DOC = ROOT / "docs" / "compatibility.md"
BEGIN, END = "<!-- bench:debugpy-range begin -->", "<!-- bench:debugpy-range end -->"


def pyenv_python(version: str) -> str | None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    matches = sorted(root.glob(f"{version}.*"), key=lambda p: [int(x) for x in p.name.split(".")])
    for match in reversed(matches):
        candidate = match / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return shutil.which(f"python{version}")


def released_debugpy(prefix: str = "1.8.") -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "debugpy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("Available versions:"))
    versions = [v.strip() for v in line.split(":", 1)[1].split(",")]
    chosen = [v for v in versions if v.startswith(prefix) and v.replace(".", "").isdigit()]
    return sorted(chosen, key=lambda v: [int(x) for x in v.split(".")])


def ensure_venv(python: str) -> Path:
    tag = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = VENVS / f"range-{tag}"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"],
            check=True,
        )
    return venv


def try_version(venv: Path, version: str, timeout: float) -> tuple[str, str]:
    py = str(venv / "bin" / "python")
    install = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", f"debugpy=={version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        last = (install.stderr.strip().splitlines() or ["pip failed"])[-1]
        return "no wheel", last[:120]
    env = dict(os.environ, DETRIX_TEST_RACE_RUNS="2")
    started = time.monotonic()
    try:
        run = subprocess.run(
            [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "debugpy_contract"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout:.0f} s"
    took = time.monotonic() - started
    summary = (run.stdout.strip().splitlines() or ["?"])[-1]
    if run.returncode == 0:
        return "works", f"{summary} ({took:.0f} s)"
    failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "fails", (failed[0] if failed else summary)[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", default="3.10,3.11,3.12,3.13")
    parser.add_argument("--python", action="append", default=[], help="an interpreter path")
    parser.add_argument("--debugpy", default="", help="comma-separated; default every 1.8.x")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--write", action="store_true", help="update docs/compatibility.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    pythons = [p for p in (pyenv_python(v) for v in args.pythons.split(",") if v) if p]
    pythons += args.python
    versions = [v for v in args.debugpy.split(",") if v] or released_debugpy()
    results: dict[str, dict[str, tuple[str, str]]] = {}
    for python in pythons:
        venv = ensure_venv(python)
        tag = venv.name.removeprefix("range-")
        results[tag] = {}
        for version in versions:
            outcome = try_version(venv, version, args.timeout)
            results[tag][version] = outcome
            print(f"{tag} debugpy {version}: {outcome[0]}  {outcome[1]}", flush=True)
    table = render(results, versions)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write:
        text = DOC.read_text() if DOC.exists() else f"{BEGIN}\n{END}\n"
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    return 0


def render(results: dict[str, dict[str, tuple[str, str]]], versions: list[str]) -> str:
    pythons = list(results)
    lines = ["| debugpy | " + " | ".join(pythons) + " |", "|---|" + "---|" * len(pythons)]
    for version in versions:
        cells = [results[p].get(version, ("-", ""))[0] for p in pythons]
        lines.append(f"| {version} | " + " | ".join(cells) + " |")
    notes = [
        f"- {p} / {v}: {r[1]}"
        for p in pythons
        for v, r in results[p].items()
        if r[0] not in ("works",)
    ]
    return "\n".join(lines + (["", *notes] if notes else []))


if __name__ == "__main__":
    sys.exit(main())
