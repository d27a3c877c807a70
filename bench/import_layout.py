#!/usr/bin/env python3
"""What an import alone does to a host's timed block, beside what a wake and a sleep do.

    python bench/import_layout.py                   # this interpreter, 3 runs
    python bench/import_layout.py --python /path/to/venv/bin/python --runs 5
    python bench/import_layout.py --system-malloc   # every process with PYTHONMALLOC=malloc

Processes pinned to one CPU compute the timed block of ``bench/performance.py``
(``bench/_control.py``) in turn, best of 5 runs a block, best of 12 blocks a
phase; between the two phases each does one thing:

* ``nothing``: the control (how far the machine moves a process between phases);
* ``alloc``: builds and keeps 200,000 small dicts (a bigger heap, no import);
* ``stdlib``: imports ten standard-library packages (asyncio, email, http.server...);
* ``debugpy``: imports debugpy and its server part, as a wake does (no detrix-auto);
* ``wake``: detrix-auto, woken by the daemon double, a logpoint set on a cold line
  and reporting, then put to sleep.

Each figure is a process's (after / bare) ÷ (before / bare), the bare interpreter
being a fifth process in turn with them, median of the runs. The instructions
these blocks run do not change with any of the five (``bench/instructions.py``
counts them); what an import changes is where CPython's small-object allocator
puts the loop's short-lived ints, and a tight loop's speed depends on those
addresses. With ``--system-malloc`` that layout effect is gone, and what
remains is what each action really leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _control import WORK, ask, record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

APP = (
    WORK
    + """
import json, sys, time

def cold(block):
    seen = block + 1  # COLD_LINE
    return seen

print(json.dumps({"ready": True}), flush=True)
block = 0
for line in sys.stdin:
    command = line.strip()
    if command == "debugpy":
        import debugpy, debugpy.server.api
    elif command == "stdlib":
        import asyncio, email.parser, http.server, xml.dom.minidom, unittest, decimal
        import logging.handlers, argparse, inspect, pydoc
    elif command == "alloc":
        kept = [dict(a=i) for i in range(200000)]
    if command != "block":
        print("{}", flush=True)
        continue
    best = {"loop": 1e9, "calls": 1e9}
    for _ in range(5):
        t0 = time.perf_counter()
        loop_work(200000)
        t1 = time.perf_counter()
        calls_work(200000)
        t2 = time.perf_counter()
        best = {"loop": min(best["loop"], t1 - t0), "calls": min(best["calls"], t2 - t1)}
    cold(block)
    block += 1
    print(json.dumps(best), flush=True)
"""
)
COLD_LINE = next(i for i, text in enumerate(APP.splitlines(), 1) if "COLD_LINE" in text)
KINDS = ("nothing", "alloc", "stdlib", "debugpy", "wake")
BLOCKS = 12


class Proc:
    def __init__(self, python: str, script: Path, env: dict[str, str], cpu: str) -> None:
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpu, python, str(script)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.send(None)

    def send(self, command: str | None) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        if command is not None:
            self.popen.stdin.write(command + "\n")
            self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise SystemExit(f"a process ended early (exit {self.popen.wait()})")
        return dict(json.loads(line))

    def stop(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.popen.wait(timeout=30)


def one_run(
    python: str, work: Path, daemon: Any, extra: dict[str, str], n: int
) -> dict[str, dict[str, float]]:
    from detrix_auto.devdaemon import MetricSpec

    base = {k: v for k, v in os.environ.items() if not k.startswith(("DETRIX_", "PYTHONMALLOC"))}
    base.update(PYDEVD_DISABLE_FILE_VALIDATION="1", **extra)
    cpu = str(max(os.sched_getaffinity(0)))
    procs: dict[str, Proc] = {}
    homes: dict[str, Path] = {}
    for kind in ("bare", *KINDS):
        env = dict(base)
        if kind == "wake":
            homes[kind] = work / f"home-{n}"
            homes[kind].mkdir(mode=0o700)
            env.update(
                DETRIX_ENABLE="1", DETRIX_HOME=str(homes[kind]), DETRIX_DAEMON_URL=daemon.url
            )
        procs[kind] = Proc(python, work / "app.py", env, cpu)

    def phase() -> dict[str, dict[str, float]]:
        best = {kind: {"loop": 1e9, "calls": 1e9} for kind in procs}
        for _ in range(BLOCKS):
            for kind, proc in procs.items():
                block = proc.send("block")
                for w in best[kind]:
                    best[kind][w] = min(best[kind][w], block[w])
        return best

    try:
        before = phase()
        for kind in ("alloc", "stdlib", "debugpy"):
            procs[kind].send(kind)
        url = str(record(homes["wake"], procs["wake"].popen.pid)["control_url"])
        ask(url, "POST", "/detrix/wake")
        name = f"cold{n}"
        daemon.clear_hits()
        daemon.add_metric(MetricSpec(name, str(work / "app.py"), COLD_LINE, ("block",)))
        for _ in range(100):
            procs["wake"].send("block")
            if daemon.hits(name):
                break
        else:
            raise SystemExit("the logpoint never reported")
        ask(url, "POST", "/detrix/sleep")
        daemon.remove_metric(name)
        time.sleep(0.3)
        after = phase()
    finally:
        for proc in procs.values():
            proc.stop()
    return {
        kind: {
            w: (after[kind][w] / after["bare"][w]) / (before[kind][w] / before["bare"][w])
            for w in ("loop", "calls")
        }
        for kind in KINDS
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python", default=sys.executable, help="an interpreter with detrix-auto and debugpy"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs, each with fresh processes (3)")
    parser.add_argument(
        "--system-malloc", action="store_true", help="every process with PYTHONMALLOC=malloc"
    )
    args = parser.parse_args()
    from detrix_auto.devdaemon import DevDaemon

    extra = {"PYTHONMALLOC": "malloc"} if args.system_malloc else {}
    runs = []
    with DevDaemon(attach_timeout=60) as daemon, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "app.py").write_text(APP)
        for n in range(args.runs):
            runs.append(one_run(args.python, work, daemon, extra, n))
            cells = [f"{k} {r['loop']:.2f}/{r['calls']:.2f}" for k, r in runs[-1].items()]
            print(f"run {n + 1}: " + "  ".join(cells), flush=True)
    label = " with PYTHONMALLOC=malloc" if extra else ""
    print(f"median of {len(runs)} runs{label}, after ÷ before (loop / calls):")
    for kind in KINDS:
        loop = statistics.median(r[kind]["loop"] for r in runs)
        calls = statistics.median(r[kind]["calls"] for r in runs)
        print(f"  {kind:8} {loop:.2f}x / {calls:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
