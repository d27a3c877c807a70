"""Our calls into the main thread (``_mainthread.call_soon_in_main``) never hold it.

CPython 3.11 spins forever when a pending call runs in a traced thread and,
while it runs, another pending call is queued: the next Python function call
in it re-checks the eval breaker, which the nested queue keeps set, without
moving on. A sleep's call running in the main thread while a wake queued
the next one did that to real apps (100% CPU in the main thread, the app
stopped, found under load). Our calls now go through one pending call at a
time; these tests make a real subprocess do what the sleep and the wake do.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: The main thread runs traced Python code; another thread asks for ``first``,
#: then, while ``first`` runs (it waits in C), for ``second``; ``first`` then
#: calls a Python function. Prints what ran, in order.
APP = textwrap.dedent(
    """\
    import sys, threading, time
    from detrix_auto._mainthread import call_soon_in_main

    ran = []
    first_started = threading.Event()

    def tracer(frame, event, arg):
        return tracer

    def first():
        first_started.set()
        time.sleep(0.5)  # in C: the other thread asks for `second` meanwhile
        def inner():
            return 1
        inner()  # 3.11 spun here when another pending call was queued
        ran.append("first")

    def second():
        ran.append("second")

    def asker():
        call_soon_in_main(first)
        first_started.wait(10)
        call_soon_in_main(second)
        call_soon_in_main(first)  # again, while it runs: a later call, not lost

    threading.Thread(target=asker).start()
    sys.settrace(tracer)

    def spin():
        end = time.time() + 20
        while time.time() < end and len(ran) < 3:
            pass

    spin()
    sys.settrace(None)
    print(" ".join(ran), flush=True)
    """
)


def test_a_call_asked_for_while_ours_runs_in_a_traced_main_thread_does_not_hold_it(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(APP)
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(tmp_path),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the main thread was held: {exc.stdout!r} {exc.stderr!r}") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["first", "second", "first"], (done.stdout, done.stderr)
