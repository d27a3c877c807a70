"""A gevent application, monkey-patched with ``patch_all()``: woken, watched, put to sleep.

Real gevent, a real subprocess started with ``DETRIX_ENABLE=1`` (or calling
``init()`` after it patched), the embedded daemon. The logpoints sit in a
greenlet's function; the app spawns a greenlet per iteration.
"""

from __future__ import annotations

import signal
import textwrap
import time

import pytest
from support import wait_until

from detrix_auto.devdaemon import MetricSpec

pytest.importorskip(
    "gevent",
    reason="gevent is not installed for this Python (no wheel for it: the gevent tests skip)",
)

pytestmark = pytest.mark.e2e

#: ``{before}`` runs before gevent patches (a pause at import, or nothing);
#: ``{after}`` right after ``patch_all()``. ``value`` is set at the line marked
#: ``# @set``; the logpoint goes on the line after it.
APP = textwrap.dedent(
    """\
    import faulthandler, os, signal, sys, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it hangs, if it does
    {before}
    from gevent import monkey
    monkey.patch_all()
    {after}
    import gevent
    print("patched", flush=True)

    def work(n):
        value = n * 10  # @set
        env = os.environ.get("GEVENT_SUPPORT", "unset")
        gevent.sleep(0.01)
        return value, env

    def report_tracing():  # what traces the main thread now: read by the tests
        import greenlet
        path = __file__ + ".tracing"
        while True:
            found = (sys.gettrace(), greenlet.gettrace())
            with open(path + ".tmp", "w") as out:
                out.write(" ".join(getattr(f, "__name__", type(f).__name__) for f in found))
            os.replace(path + ".tmp", path)
            gevent.sleep(0.05)

    gevent.spawn(report_tracing)
    n = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        n += 1
        gevent.joinall([gevent.spawn(work, n), gevent.spawn(gevent.sleep, 0.01)])
    """
)


def _app_source(before: str = "", after: str = "") -> str:
    return APP.format(before=before, after=after)


def _line(source: str, marker: str) -> int:
    for number, text in enumerate(source.splitlines(), start=1):
        if marker in text:
            return number
    raise AssertionError(marker)


def _watch(daemon, app, source: str) -> None:
    daemon.add_metric(
        MetricSpec(
            name="value",
            path=str(app.script),
            line=_line(source, "# @set") + 1,
            expressions=("value", "n"),
        )
    )
    daemon.add_metric(
        MetricSpec(
            name="env",
            path=str(app.script),
            line=_line(source, "# @set") + 2,
            expressions=("os.environ.get('GEVENT_SUPPORT', 'unset')",),
        )
    )


def _watched(spawn, daemon, source: str, **spawn_options):
    """The app started and patched, its two metrics stored on the daemon."""
    app = spawn(source, **spawn_options)
    _wait_patched(app)
    _watch(daemon, app, source)
    return app


def _wait_patched(app) -> None:
    line = app.proc.stdout.readline()
    assert line.strip() == "patched", line


def _wake(app, daemon) -> dict:
    started = time.monotonic()
    try:
        code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url}, timeout=30)
    except OSError as exc:
        try:
            status = app.status()
        except OSError as again:
            status = {"unreachable": repr(again)}
            # Every thread's stack on stderr (faulthandler, no GIL needed): where it hangs.
            app.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        _, err = app.stop()
        detail = f"wake unanswered ({exc!r}); status {status}; stderr:\n{err}"
        raise AssertionError(detail) from None
    assert code == 200, body
    assert time.monotonic() - started < 15
    return body


def _untraced(app) -> None:
    """Nothing traces the main thread, and no greenlet hook re-traces it at a switch.

    On 3.10/3.11 pydevd's gevent mode re-applies its tracer at every greenlet switch;
    left in place after a sleep it kept the app ~40x slower (bench/gevent_cost.py)."""
    path = app.script.with_name(app.script.name + ".tracing")

    def read() -> str:
        try:
            return path.read_text()
        except OSError:
            return ""

    wait_until(lambda: read() == "NoneType NoneType", timeout=10, what="main thread untraced")


def _values_are_real(hits) -> None:
    for hit in hits:
        value, n = (int(v) for v in hit.values)
        assert value == n * 10  # the greenlet's own values at that line


def _ends_cleanly(app) -> None:
    out, err = app.stop()
    assert "Traceback" not in err, err
    assert "greenlet.error" not in err, err


def test_a_logpoint_in_a_greenlet_reports_and_the_host_env_is_untouched(spawn, daemon):
    source = _app_source()
    app = _watched(spawn, daemon, source)
    body = _wake(app, daemon)
    hits = daemon.wait_for_hits("value", count=5, timeout=30)
    _values_are_real(hits)
    assert hits[-1].connection_id == body["connection_id"]
    # pydevd's gevent mode was set for debugpy's import only: the host never sees it.
    env = daemon.wait_for_hits("env", count=2, timeout=30)
    assert {hit.values[0] for hit in env} == {"unset"}, env
    assert app.status()["state"] == "awake"
    _ends_cleanly(app)


#: Put as ``{after}``: what a host's first gevent hub does, slowed down. Making a hub
#: imports ``pprint``; here, inside that import, the main thread also imports
#: ``hashlib`` (which building our client imports) and stays there for a second.
#: In CI's stacks the shared module was ``dataclasses``, which ``pprint`` imports on
#: 3.10-3.13 (``patch_all()`` loads it itself on 3.14).
HOLD_AN_IMPORT = textwrap.dedent(
    """\
    import importlib.machinery
    class HoldInMain:
        def find_spec(self, name, path=None, target=None):
            if name not in ("pprint", "hashlib"):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module
            def exec_module(module):
                if name == "pprint":
                    import hashlib
                else:
                    sys.meta_path.remove(self)
                    print("holding", flush=True)
                    monkey.get_original("time", "sleep")(1.0)
                run(module)
            spec.loader.exec_module = exec_module
            return spec
    print("patched", flush=True)
    assert not {"pprint", "hashlib"} & set(sys.modules), "pprint or hashlib is loaded already"
    sys.meta_path.insert(0, HoldInMain())
    import pprint
    """
)


def test_a_wake_while_the_main_thread_imports_before_its_first_hub(spawn, daemon):
    """The main thread holds an import our wake needs, and gevent has no hub yet.

    The wake's thread must not wait on that (gevent) import lock before a hub
    exists: making one imports, and the two threads' imports then wait for each
    other for ever (CI saw it: wake and control plane unanswered).
    """
    source = _app_source(after=HOLD_AN_IMPORT)
    app = spawn(source)
    _wait_patched(app)
    assert app.proc.stdout.readline().strip() == "holding"
    _watch(daemon, app, source)
    body = _wake(app, daemon)
    assert body["status"] == "awake"
    _values_are_real(daemon.wait_for_hits("value", count=3, timeout=30))
    assert app.status()["state"] == "awake"
    _ends_cleanly(app)


#: A patched app that never makes a gevent hub: it computes and sleeps with the
#: unpatched ``time.sleep``, so nothing of gevent's ever runs in it.
NO_HUB_APP = textwrap.dedent(
    """\
    from gevent import monkey
    monkey.patch_all()
    print("patched", flush=True)
    real_sleep = monkey.get_original("time", "sleep")
    n = 0
    while True:
        n += 1
        real_sleep(0.01)
    """
)


def test_a_patched_app_that_never_makes_a_hub_is_answered_within_the_bound(spawn, daemon):
    """The wait for the host's first hub is bounded (FIRST_HUB_WAIT), and paid once."""
    from detrix_auto._import_races import FIRST_HUB_WAIT

    app = spawn(NO_HUB_APP)
    _wait_patched(app)
    started = time.monotonic()
    assert app.status()["state"] == "sleeping"
    first = time.monotonic() - started
    assert FIRST_HUB_WAIT * 0.9 <= first < FIRST_HUB_WAIT + 5, first
    started = time.monotonic()
    body = _wake(app, daemon)  # the client build does not wait again
    assert body["status"] == "awake"
    assert time.monotonic() - started < 15
    assert app.request("POST", "/detrix/sleep", timeout=30)[0] == 200
    _ends_cleanly(app)


def test_wake_sleep_wake_again(spawn, daemon):
    source = _app_source()
    app = _watched(spawn, daemon, source)
    first = _wake(app, daemon)
    daemon.wait_for_hits("value", count=2, timeout=30)
    assert app.request("POST", "/detrix/sleep", timeout=30) == (200, {"status": "sleeping"})
    time.sleep(0.3)
    before = len(daemon.hits("value"))
    time.sleep(0.5)
    assert len(daemon.hits("value")) <= before + 1  # asleep: the logpoints stopped
    _untraced(app)
    second = _wake(app, daemon)
    assert second["debug_port"] == first["debug_port"]
    # With debugpy 1.8.0 on 3.11 this re-wake once brought no values, 3 of 10 runs
    # under load; most likely the 3.11 pending-call spin (tests/test_pending_calls.py:
    # the sleep's thread ending while its call ran). No longer excused.
    wait_until(lambda: len(daemon.hits("value")) >= before + 3, timeout=30)
    _values_are_real(daemon.hits("value"))
    assert daemon.registrations == 2
    assert app.request("POST", "/detrix/sleep", timeout=30)[0] == 200
    _untraced(app)
    _ends_cleanly(app)


def test_the_control_plane_answers_during_start_up_and_a_later_wake_works(spawn, daemon):
    """Requests while the app still sleeps at import (before patch_all), then a wake after."""
    source = _app_source(before="time.sleep(2.0)")
    app = spawn(source)
    worst = 0.0
    for _ in range(5):  # the control plane's loop and parser load now, before gevent
        started = time.monotonic()
        assert app.status()["state"] == "sleeping"
        assert app.request("GET", "/detrix/health")[0] == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.1)
    assert worst < 1.0
    _wait_patched(app)
    for _ in range(3):
        assert app.status()["state"] == "sleeping"
    _watch(daemon, app, source)
    _wake(app, daemon)
    _values_are_real(daemon.wait_for_hits("value", count=3, timeout=30))
    assert app.request("POST", "/detrix/sleep", timeout=30)[0] == 200
    _ends_cleanly(app)


def test_patch_all_before_our_start(spawn, daemon):
    """The app patches first, then starts detrix-auto itself with init()."""
    source = _app_source(after="import detrix_auto; detrix_auto.init()")
    app = _watched(spawn, daemon, source, env={"DETRIX_ENABLE": ""})
    _wake(app, daemon)
    _values_are_real(daemon.wait_for_hits("value", count=3, timeout=30))
    assert app.request("POST", "/detrix/sleep", timeout=30)[0] == 200
    _wake(app, daemon)
    assert app.request("POST", "/detrix/sleep", timeout=30)[0] == 200
    _ends_cleanly(app)


def test_status_answers_at_once_while_greenlets_run(spawn):
    source = _app_source()
    app = spawn(source)
    _wait_patched(app)
    worst = 0.0
    for _ in range(20):
        started = time.monotonic()
        assert app.status()["state"] == "sleeping"
        worst = max(worst, time.monotonic() - started)
    assert worst < 0.5, worst
    _ends_cleanly(app)
