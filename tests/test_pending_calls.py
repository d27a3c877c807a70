"""Our calls into the main thread (``_mainthread.call_soon_in_main``) never hold it.

CPython 3.11 spins forever when a pending call runs in a traced thread and,
while it runs, another pending call is queued: the next Python function call
in it re-checks the eval breaker, which the nested queue keeps set, without
moving on. A sleep's call running in the main thread while a wake queued
the next one did that to real apps (100% CPU in the main thread, the app
stopped, found under load). Our calls now go through one pending call at a
time; these tests make a real subprocess do what the sleep and the wake do.

Others queue pending calls too: greenlet, whenever a thread that used it dies
(under gevent every thread that imports uses it). A gevent app's first wake
hung that way in 2% of wakes under load, its wake's own threads ending while
the wake's call ran. On 3.11 our call now runs with the thread's tracing paused,
and is not queued while one of our OS threads is still ending.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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


#: gevent-patched; the main thread traced (as after a wake). A thread that used
#: greenlet asks for a call that runs for 0.5 s, and ends 50 ms into it: ``ours``
#: started as our threads are, ``foreign`` with the bare ``start_new_thread``.
#: Another thread asks for the GIL often (what makes the main thread see the
#: queued call). ``sys.argv[2]`` names guards to take away.
ENDING_THREAD_APP = textwrap.dedent(
    """\
    import sys
    from gevent import monkey; monkey.patch_all()
    import greenlet, time
    from detrix_auto import _mainthread, _native

    who, without = sys.argv[1], sys.argv[2]
    if "pause" in without:
        _mainthread._PENDING_CALL_SPIN = False
    if "ending" in without:
        _native.track_ending_threads[0] = False
    ran = []

    def helper():
        return 1

    def call():
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            helper()  # Python calls: where 3.11 spins
        ran.append(True)

    def body():
        greenlet.getcurrent()  # this thread now has a greenlet state
        _mainthread.call_soon_in_main(call)
        _native.sleep(0.05)  # and ends while the call runs

    if who == "ours":
        _native.Thread(body, "ending").start()
    else:
        _native.start_new_thread(body)

    def asks_for_the_gil():
        for _ in range(3000):
            _native.sleep(0.0005)

    _native.Thread(asks_for_the_gil, "asker").start()
    sys.settrace(lambda frame, event, arg: None)
    deadline = time.monotonic() + 5
    while not ran and time.monotonic() < deadline:
        sum(range(100))
    sys.settrace(None)
    print("ran" if ran else "not ran", flush=True)
    """
)


def _run_ending_thread_app(tmp_path, who: str, without: str, timeout: float) -> str | None:
    """What the app printed, or None when its main thread was held past ``timeout``."""
    script = tmp_path / "ending.py"
    script.write_text(ENDING_THREAD_APP)
    try:
        done = subprocess.run(
            [sys.executable, str(script), who, without],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(tmp_path),
        )
    except subprocess.TimeoutExpired:
        return None
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("who", ["ours", "foreign"])
def test_a_thread_that_used_greenlet_ending_while_our_call_runs_does_not_hold_the_main_thread(
    tmp_path, who
):
    pytest.importorskip("gevent", reason="gevent is not installed for this Python")
    printed = _run_ending_thread_app(tmp_path, who, "-", timeout=60)
    assert printed == "ran", f"the main thread was held ({printed!r})"


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="only CPython 3.11 spins")
@pytest.mark.parametrize("who", ["ours", "foreign"])
def test_without_the_pause_the_same_app_is_held_on_3_11(tmp_path, who):
    """The app above does reach the spin: take the pause away and it hangs.

    Should a 3.11 release stop spinning, this fails, and the guards may go."""
    pytest.importorskip("gevent", reason="gevent is not installed for this Python")
    assert _run_ending_thread_app(tmp_path, who, "pause", timeout=8) is None


def test_the_wait_for_our_ending_threads_is_bounded_when_one_never_leaves(monkeypatch):
    """A thread that stays in /proc (stuck in its end, or an id the kernel reused) costs
    one bounded wait, and is not waited for again; one that is gone costs nothing."""
    import time

    from detrix_auto import _native

    monkeypatch.setattr(_native, "_ending", {_native.original("_thread", "get_native_id")()})
    started = time.monotonic()
    _native.wait_for_ended_threads(bound=0.2)
    assert 0.2 <= time.monotonic() - started < 2.0
    assert not _native._ending  # given up on, not waited for at the next call
    monkeypatch.setattr(_native, "_ending", {2**22 + 12345})  # above any pid_max: no such task
    started = time.monotonic()
    _native.wait_for_ended_threads(bound=5.0)
    assert time.monotonic() - started < 0.5
    assert not _native._ending
