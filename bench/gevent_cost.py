#!/usr/bin/env python3
"""What detrix-auto costs a gevent application's greenlets: asleep, awake, after a sleep.

    python bench/gevent_cost.py                 # 8 interleaved rounds of 3 s each
    python bench/gevent_cost.py --rounds 12 --seconds 5

A small app calls ``gevent.monkey.patch_all()``, then spawns greenlets in a
loop for a fixed time (each does a little Python work and yields with
``gevent.sleep(0)``) and prints how many it finished. It runs as a fresh
subprocess, alternately:

* ``off``: ``DETRIX_ENABLE`` unset (detrix-auto installed, its ``.pth`` line
  evaluates one ``in os.environ`` and stops);
* ``sleeping``: ``DETRIX_ENABLE=1``: the control plane listens, its thread is
  blocked in ``accept()``; one status request is answered before the timed
  part starts (so the control plane's loop has been loaded and gone idle);
* ``awake``: ``DETRIX_ENABLE=1``, woken by the embedded daemon before the
  timed part and awake through it (debugpy's own cost: tracing every greenlet);
* ``after-sleep``: woken, then put back to sleep, before the timed part: what
  a process pays for having been looked at once.

The rounds are interleaved (off, sleeping, awake, after-sleep, off, ...) so
that drift in the machine's speed hits all alike. Reported: the median
greenlets per second of each mode and its ratio to ``off`` (1.00 = no cost),
with each round's numbers. Needs gevent and detrix-auto installed in this
interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _control import ask, record

APP = textwrap.dedent(
    """\
    import sys, time
    from gevent import monkey
    monkey.patch_all()
    import gevent

    def work(n):
        total = 0
        for i in range(50):
            total += i * n
        gevent.sleep(0)
        return total

    print("ready", flush=True)
    sys.stdin.readline()  # the harness asked the control plane (or not) meanwhile
    seconds = float(sys.argv[1])
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        batch = [gevent.spawn(work, i) for i in range(100)]
        gevent.joinall(batch)
        done += len(batch)
    print(done / seconds, flush=True)
    """
)


def one_round(script: Path, home: Path, mode: str, seconds: float, daemon_url: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env["DETRIX_HOME"] = str(home)
    if mode != "off":
        env["DETRIX_ENABLE"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(seconds)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    if mode != "off":
        url = str(record(home, proc.pid)["control_url"])
        assert ask(url, "GET", "/detrix/status")["state"] == "sleeping"
        if mode in ("awake", "after-sleep"):
            ask(url, "POST", "/detrix/wake", {"daemon_url": daemon_url})
            time.sleep(0.5)  # the daemon's attach done, the tracer on every thread
        if mode == "after-sleep":
            ask(url, "POST", "/detrix/sleep")
        time.sleep(0.2)  # the control plane's loop ends once no connection is left
    proc.stdin.write("go\n")
    proc.stdin.flush()
    rate = float(proc.stdout.readline())
    proc.wait(timeout=30)
    return rate


MODES = ("off", "sleeping", "awake", "after-sleep")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    try:
        import gevent
    except ImportError:
        print("gevent is not installed for this Python", file=sys.stderr)
        return 2
    from detrix_auto.devdaemon import DevDaemon

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, DevDaemon() as daemon:
        script = Path(tmp) / "gevent_app.py"
        script.write_text(APP)
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        for _ in range(args.rounds):
            for mode in MODES:
                rates[mode].append(one_round(script, home, mode, args.seconds, daemon.url))
    off = statistics.median(rates["off"])
    print(
        f"python {sys.version.split()[0]}, gevent {gevent.__version__}, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s"
    )
    for mode, values in rates.items():
        shown = " ".join(f"{v:,.0f}" for v in values)
        median = statistics.median(values)
        print(
            f"  {mode:11} median {median:>10,.0f} greenlets/s  {median / off:5.2f}x of off"
            f"   [{shown}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
