#!/usr/bin/env python3
"""Wake, sleep and wake again, in fresh processes, many times: does the second wake report?

    python bench/rewake_stress.py                  # 100 fresh processes, a plain app
    python bench/rewake_stress.py --runs 300 --gevent
    python bench/rewake_stress.py --hogs 2         # beside two CPU-bound processes
    python bench/rewake_stress.py --runs 400 --gevent --hogs 2 --parallel 4

Each run starts an app with ``DETRIX_ENABLE=1`` (a loop that calls a function,
or a gevent app spawning greenlets), puts a logpoint in it on the embedded
daemon, then: wake, two values, sleep, wake, and expects new values within
20 s. ``--parallel`` runs that many at once (each its own app and logpoint).
A run that fails prints what status said and every thread's stack (the apps
run with faulthandler on, and are sent SIGABRT), then goes on. The last line
counts the failures, and at which step.

Why it exists: on 3.10/3.11 a wake right after a sleep held the app's main
thread in about 1 fresh process in 100-150 on a loaded machine (CPython 3.11
spins in a traced pending call when a second one is queued), and a gevent app
failed 6 runs in 40. Later, on 3.11, a gevent app's first wake never reported
in 6 of 384 runs with 4 at once beside 2 hogs (a thread that used greenlet
ending while our call ran in the main thread: the same spin). Rare failures
need many fresh processes, and load: run it with ``--hogs 2 --parallel 4`` on a
2-core machine. Needs detrix-auto (and gevent, for ``--gevent``) installed in
this interpreter.
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
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
            env_extra={"PYTHONFAULTHANDLER": "1"},
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
                return f"{step}: {exc!r}\n{_diagnose(url, proc)}"
        finally:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=10)
            except ValueError:  # read already by _diagnose
                pass


def _diagnose(url: str, proc: subprocess.Popen[str]) -> str:
    """What status says, then every thread's stack (faulthandler, on SIGABRT)."""
    lines = []
    try:
        lines.append(f"status: {ask(url, 'GET', '/detrix/status', timeout=5)}")
    except Exception as exc:
        lines.append(f"status: unanswered ({exc!r})")
    proc.send_signal(signal.SIGABRT)
    try:
        _, err = proc.communicate(timeout=10)
        lines.append(err[-6000:])
    except subprocess.TimeoutExpired:
        lines.append("(no stacks within 10 s)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--gevent", action="store_true", help="a gevent app (patch_all)")
    parser.add_argument("--hogs", type=int, default=0, help="CPU-bound processes beside it")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    args = parser.parse_args()
    from detrix_auto.devdaemon import DevDaemon

    source = GEVENT if args.gevent else PLAIN
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    steps: collections.Counter[str] = collections.Counter()
    indices = iter(range(args.runs))
    lock = threading.Lock()

    def runner(daemon: Any) -> None:
        while True:
            with lock:
                index = next(indices, None)
            if index is None:
                return
            problem = one_run(daemon, source, index)
            if problem is not None:
                with lock:
                    steps[problem.split(":", 1)[0]] += 1
                    print(f"run {index}: FAILED at {problem}", flush=True)

    try:
        with DevDaemon() as daemon:
            count = max(1, args.parallel)
            runners = [threading.Thread(target=runner, args=(daemon,)) for _ in range(count)]
            for thread in runners:
                thread.start()
            for thread in runners:
                thread.join()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    kind = "gevent" if args.gevent else "plain"
    failures = sum(steps.values())
    where = ", ".join(f"{count} at {step}" for step, count in sorted(steps.items()))
    print(
        f"python {sys.version.split()[0]}, {kind} app, {args.hogs} hogs, "
        f"{args.parallel} at once: {failures} of {args.runs} fresh processes failed"
        + (f" ({where})" if where else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
