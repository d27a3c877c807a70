#!/usr/bin/env python3
"""What a wake and a sleep leave behind, counted in instructions instead of seconds.

    python bench/instructions.py                        # this interpreter
    python bench/instructions.py --python /path/to/venv/bin/python --python ...
    python bench/instructions.py --json                 # one JSON line per interpreter

Timing cannot tell whether a process that was woken and put back to sleep runs
its host's code as fast as before: on a shared machine the same process, doing
the same work, moves by 10-30% between two phases a minute apart. Valgrind's
callgrind counts the instructions the CPU executes instead, which do not depend
on the machine's load: the same code on the same interpreter counts the same.

A small app (started with ``DETRIX_ENABLE=1``, so the real ``.pth`` hook runs)
computes a CPU-bound block (``loop_work`` and ``calls_work``, the same block as
``bench/performance.py``) five times per phase, each call inside
``functools.reduce`` so that only the block is counted
(``--toggle-collect=functools_reduce``), and ends each phase with
``iter(int, 0)``, which makes callgrind write that phase's counts to a file of
its own (``--dump-before=calliter_iternext``). The main thread's counts only.
Phases: one to warm up (not reported: a fresh heap), ``never woken``, then
``awake`` (after a wake by the daemon double, no logpoint), ``awake, logpoint``
(a logpoint on the block's own line, set through the daemon double and
reporting five times a phase) and ``after sleep`` (the sleep removes it).
Two more processes run the same phases: one never woken (what the phases alone
do) and one that imports debugpy where the other is woken, and never listens
(what a loaded debugpy alone does to the host's blocks).

Each phase is reported as a ratio to ``never woken`` of the same process, twice:
all instructions, and those outside the memory allocator (CPython's
``Objects/obmalloc.c``). The second is the interpreter's own work: a trace
function, a ``sys.monitoring`` event or a profiler left behind would show there.
The allocator's share depends on where earlier allocations left free memory
(debugpy's modules stay loaded after a sleep), and moves by a few per cent
from one process to the next, in either direction.

Needs valgrind (``callgrind_annotate`` included) and an interpreter whose shared
library or binary keeps its static symbols (pyenv's builds do; Debian's
stripped ``python3.x`` does not: reported as such). Each interpreter needs
detrix-auto and debugpy installed; a run takes about 15 s per interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from _control import WORK, ask, record

APP = textwrap.dedent(
    """\
    import functools, json, os, sys

    # WORK: the CPU-bound block (bench/_control.py)

    def block(total, item):
        loop_work(20000)
        calls_work(20000)
        total += item  # LOGPOINT_LINE
        return total

    ready = {"ready": True}
    if os.environ.get("BENCH_ORIGINAL"):  # detrix-py: init() in code, its only way
        import detrix
        detrix.init(name="bench-instructions", daemon_url=os.environ["DETRIX_DAEMON_URL"])
        ready["control_port"] = detrix.status()["control_port"]
    for _ in range(10):  # 3.11's specializing interpreter settles only after a while
        block(0, 0)
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.startswith("load"):  # what a wake imports, without listening nor tracing
            import debugpy, debugpy.server.api
        if line.startswith("monitor"):  # a sys.monitoring tool with a global event, briefly
            M = sys.monitoring
            M.use_tool_id(4, "bench")
            M.register_callback(4, M.events.PY_START, lambda code, offset: None)
            M.set_events(4, M.events.PY_START)
            block(0, 0)
            M.set_events(4, 0)
            M.register_callback(4, M.events.PY_START, None)
            M.free_tool_id(4)
        if line.startswith("once"):  # one uncounted block (outside reduce), no dump
            block(0, 0)
            print(json.dumps({"done": "once"}), flush=True)
            continue
        for _ in range(5):
            functools.reduce(block, [0], 0)  # counted: --toggle-collect=functools_reduce
        list(iter(int, 0))  # this phase's counts to a file: --dump-before=calliter_iternext
        print(json.dumps({"done": line.strip()}), flush=True)
    """
).replace("# WORK: the CPU-bound block (bench/_control.py)\n", WORK)

LOGPOINT_LINE = next(i for i, text in enumerate(APP.splitlines(), 1) if "LOGPOINT_LINE" in text)

#: The phases, in order; the first is a warm-up and is not reported. In the
#: woken processes a logpoint is set on the block's own code (it reports five
#: times a phase) before "awake, logpoint", and removed by the sleep.
PHASES = ("warm-up", "never woken", "awake", "awake, logpoint", "after sleep")
REFERENCE = "never woken"
ALLOCATOR = "Objects/obmalloc.c"


class Unmeasurable(Exception):
    """This interpreter cannot be measured here (the message says why)."""


def counts_of(path: Path) -> tuple[int, int]:
    """(all instructions, those in the allocator) of one callgrind output file."""
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=no", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = allocator = 0
    for line in out.splitlines():
        match = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S+)", line)
        if match is None:
            continue
        count = int(match.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = count
        elif match.group(2).split(":", 1)[0].endswith(ALLOCATOR):
            allocator += count
    return total, allocator


#: The processes measured: what happens between ``never woken`` and ``awake``.
KINDS = {
    "control": "nothing (never woken)",
    "debugpy loaded": "debugpy imported, never listening: what a wake leaves in memory",
    "detrix-auto": "woken by the daemon double, then put to sleep before the last phase",
    "detrix-py": "the original client (--original), woken and put to sleep the same way",
    "monitored once": "3.12+: a sys.monitoring tool's global PY_START event on while one "
    "block runs, then off: what CPython itself keeps of instrumentation",
}


def measure(python: str, work: Path, daemon: Any, kind: str) -> dict[str, Any]:
    """One process under callgrind through the phases; counts per phase."""
    wake = kind in ("detrix-auto", "detrix-py")
    out_dir = work / kind.replace(" ", "-")
    out_dir.mkdir()
    home = out_dir / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(DETRIX_ENABLE="1", DETRIX_HOME=str(home), DETRIX_DAEMON_URL=daemon.url)
    if kind == "detrix-py":
        env["BENCH_ORIGINAL"] = "1"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        "--dump-before=calliter_iternext",
        "--separate-threads=yes",
        "--compress-strings=no",
        "--compress-pos=no",
        f"--callgrind-out-file={out_dir / 'cg.out'}",
        python,
        str(work / "app.py"),
    ]
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise Unmeasurable(f"the app did not start under valgrind: {_tail(proc)}")
        port = json.loads(line).get("control_port")
        if port:
            url = f"http://127.0.0.1:{port}"
        else:
            url = str(record(home, proc.pid, timeout=120)["control_url"])

        def phase(name: str) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(name.encode() + b"\n")
            proc.stdin.flush()
            proc.stdout.readline()

        phase("warm-up")
        phase("never woken")
        if wake:
            state = ask(url, "POST", "/detrix/wake", timeout=300)["status"]
            if state != "awake":
                raise Unmeasurable(f"the wake answered {state!r}")
        phase(
            {"debugpy loaded": "load awake", "monitored once": "monitor awake"}.get(kind, "awake")
        )
        logpoint = None
        if wake:
            logpoint = set_logpoint(daemon, work / "app.py", kind, lambda: phase("once"))
        phase("awake, logpoint")
        if wake:
            ask(url, "POST", "/detrix/sleep", timeout=300)
        if logpoint is not None:
            daemon.remove_metric(logpoint)  # it applies to every connection, later ones too
        phase("after sleep")
        proc.stdin.close()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def part(path: Path) -> int:
        found = re.search(r"\.(\d+)-01$", path.name)
        return int(found.group(1)) if found else 1 << 30  # the last: written at exit

    # Only the main thread's files (-01), in the order they were written. Another
    # thread entering iter(callable, sentinel) writes a dump too: those hold
    # nothing of the block and are skipped by their empty counts.
    counts = []
    for path in sorted(out_dir.glob("cg.out*-01"), key=part):
        total, allocator = counts_of(path)
        if total:
            counts.append((total, allocator))
    if len(counts) != len(PHASES):
        raise Unmeasurable(
            f"{len(counts)} phases counted, not {len(PHASES)}: does {python} keep the "
            "symbols functools_reduce and calliter_iternext? (a stripped build does not)"
        )
    return {name: {"all": t, "allocator": a} for name, (t, a) in zip(PHASES, counts, strict=True)}


def set_logpoint(daemon: Any, script: Path, kind: str, one_block: Any) -> str:
    """A logpoint on the block's own line, through the daemon double, once it reports;
    returns its name."""
    from detrix_auto.devdaemon import MetricSpec

    name = "block_" + kind.replace("-", "_")
    daemon.clear_hits()
    # Evaluated before its line runs: an argument, defined by then.
    daemon.add_metric(MetricSpec(name, str(script), LOGPOINT_LINE, ("item",)))
    for _ in range(200):  # ~20 s of blocks under valgrind at the most
        one_block()
        if daemon.hits(name):
            break
    else:
        raise Unmeasurable(f"{kind}: the logpoint on the block never reported")
    return name


def _tail(proc: subprocess.Popen[bytes]) -> str:
    proc.kill()
    _, err = proc.communicate()
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def ratios(phases: dict[str, Any]) -> dict[str, dict[str, float]]:
    ref = phases[REFERENCE]
    ref_own = ref["all"] - ref["allocator"]
    return {
        name: {
            "all": c["all"] / ref["all"],
            "interpreter": (c["all"] - c["allocator"]) / ref_own,
            "allocator_share": c["allocator"] / c["all"],
        }
        for name, c in phases.items()
        if name != "warm-up"
    }


def versions(python: str) -> tuple[str, str]:
    """(Python's version, debugpy's) of an interpreter."""
    out = subprocess.run(
        [
            python,
            "-c",
            "import platform, debugpy; print(platform.python_version(), debugpy.__version__)",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], out[1]


def run(
    python: str,
    daemon: Any,
    kinds: list[str],
    original: str | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    version, debugpy = versions(python)
    result: dict[str, Any] = {"python": python, "version": version, "debugpy": debugpy}
    with tempfile.TemporaryDirectory(prefix="detrix-instr-") as tmp:
        work = Path(tmp)
        if keep is not None:  # callgrind's files stay there, to read with callgrind_annotate
            work = keep / version
            work.mkdir(parents=True)
        (work / "app.py").write_text(APP)
        for kind in kinds:
            interpreter = python
            if kind == "detrix-py":
                if original is None:
                    continue
                interpreter = original
            if kind == "monitored once" and tuple(map(int, version.split(".")[:2])) < (3, 12):
                continue  # no sys.monitoring
            phases = measure(interpreter, work, daemon, kind)
            result[kind] = {"counts": phases, "ratios": ratios(phases)}
    return result


def show(result: dict[str, Any]) -> str:
    lines = [
        f"Python {result['version']}, debugpy {result['debugpy']}: each phase / never woken, "
        "same process (all instructions; outside the allocator)"
    ]
    for key in (k for k in KINDS if k in result):
        cells = []
        for name, r in result[key]["ratios"].items():
            if name == REFERENCE:
                continue
            cells.append(f"{name} {r['all']:.4f}x; {r['interpreter']:.5f}x")
        lines.append(f"  {key:14} " + " | ".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="an interpreter with detrix-auto and debugpy installed (repeatable; "
        "default: this one)",
    )
    parser.add_argument(
        "--original",
        action="append",
        default=[],
        help="an interpreter with detrix-py installed, measured beside the --python "
        "of the same version (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per interpreter")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep callgrind's files under this new directory (one per Python and "
        "process: callgrind_annotate --inclusive=no DIR/3.12.1/detrix-auto/cg.out.2-01)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated processes to measure (default: all of {', '.join(KINDS)})",
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or "control" not in kinds:
        parser.error(f"--kinds takes control (always) and any of {', '.join(KINDS)}")
    missing = [tool for tool in ("valgrind", "callgrind_annotate") if shutil.which(tool) is None]
    if missing:
        print(
            f"instructions: {' and '.join(missing)} not found (Debian: apt install valgrind)",
            file=sys.stderr,
        )
        return 2
    from detrix_auto.devdaemon import DevDaemon

    status = 0
    # The daemon double waits for a wake's attach as long as valgrind needs.
    originals = {".".join(versions(py)[0].split(".")[:2]): py for py in args.original}
    with DevDaemon(attach_timeout=300) as daemon:
        for python in args.python or [sys.executable]:
            minor = ".".join(versions(python)[0].split(".")[:2])
            try:
                result = run(python, daemon, kinds, originals.get(minor), args.keep)
            except Unmeasurable as exc:
                print(f"instructions: {python}: {exc}", file=sys.stderr)
                status = 1
                continue
            print(json.dumps(result) if args.json else show(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
