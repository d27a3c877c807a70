#!/usr/bin/env python3
"""Wake, sleep and wake again, in fresh processes, many times: does the second wake report?

    python bench/rewake_stress.py                  # 100 fresh processes, a plain app
    python bench/rewake_stress.py --runs 300 --gevent
    python bench/rewake_stress.py --hogs 2         # beside two CPU-bound processes

Each run starts an app with ``DETRIX_ENABLE=1`` (a loop that calls a function,
or a gevent app spawning greenlets), puts a logpoint in it on the embedded
daemon, then: wake, two values, sleep, wake, and expects new values within
20 s. A run that fails prints what status said and, when ``py-spy`` is on
PATH, every thread's stack, then goes on. The last line counts the failures.

Why it exists: on 3.10/3.11 a wake right after a sleep held the app's main
thread in about 1 fresh process in 100-150 on a loaded machine (CPython 3.11
spins in a traced pending call when a second one is queued), and a gevent app
failed 6 runs in 40. Rare failures need many fresh processes, and load: run
it with ``--hogs 2`` on a 2-core machine. Needs detrix-auto (and gevent, for
``--gevent``) installed in this interpreter.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from _control import ask, enabled_app, record

PLAIN = textwrap.dedent(
    """\
    import time

    def work(n):
        value = n * 10  # @set
        return value

    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        work(n)
        time.sleep(0.01)
    """
)

GEVENT = textwrap.dedent(
    """\
    from gevent import monkey
    monkey.patch_all()
    import gevent

    print("ready", flush=True)  # a wake during patch_all() is refused by design

    def work(n):
        value = n * 10  # @set
        gevent.sleep(0.01)
        return value

    n = 0
    while True:
        n += 1
        gevent.joinall([gevent.spawn(work, n), gevent.spawn(gevent.sleep, 0.01)])
    """
)


def _line(source: str) -> int:
    return next(i for i, text in enumerate(source.splitlines(), 1) if "# @set" in text) + 1


def one_run(daemon: Any, source: str, index: int) -> str | None:
    """None when the second wake reported; otherwise what was seen."""
    from detrix_auto.devdaemon import MetricSpec

    with tempfile.TemporaryDirectory() as tmp:
        proc, home, script = enabled_app(
            Path(tmp),
            source,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            url = str(record(home, proc.pid)["control_url"])
            name = f"value{index}"
            spec = MetricSpec(
                name=name, path=str(script), line=_line(source), expressions=("value",)
            )
            daemon.add_metric(spec)
            step = "first wake"
            try:
                ask(url, "POST", "/detrix/wake", {"daemon_url": daemon.url})
                daemon.wait_for_hits(name, count=2, timeout=20)
                step = "sleep"
                ask(url, "POST", "/detrix/sleep")
                step = "second wake"
                ask(url, "POST", "/detrix/wake", {"daemon_url": daemon.url})
                seen = len(daemon.hits(name))
                step = "values after the second wake"
                daemon.wait_for_hits(name, count=seen + 2, timeout=20)
                return None
            except Exception as exc:  # reported, and the next run goes on
                return f"{step}: {exc!r}\n{_diagnose(url, proc.pid)}"
        finally:
            proc.kill()
            proc.communicate(timeout=10)


def _diagnose(url: str, pid: int) -> str:
    lines = []
    try:
        lines.append(f"status: {ask(url, 'GET', '/detrix/status')}")
    except Exception as exc:
        lines.append(f"status: unanswered ({exc!r})")
    spy = shutil.which("py-spy")
    if spy:
        dump = subprocess.run(
            [spy, "dump", "--pid", str(pid)], check=False, capture_output=True, text=True
        )
        lines.append(dump.stdout[-4000:])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--gevent", action="store_true", help="a gevent app (patch_all)")
    parser.add_argument("--hogs", type=int, default=0, help="CPU-bound processes beside it")
    args = parser.parse_args()
    from detrix_auto.devdaemon import DevDaemon

    source = GEVENT if args.gevent else PLAIN
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    failures = 0
    try:
        with DevDaemon() as daemon:
            for index in range(args.runs):
                problem = one_run(daemon, source, index)
                if problem is not None:
                    failures += 1
                    print(f"run {index}: FAILED at {problem}", flush=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    kind = "gevent" if args.gevent else "plain"
    print(
        f"python {sys.version.split()[0]}, {kind} app, {args.hogs} hogs: "
        f"{failures} of {args.runs} fresh processes failed"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
