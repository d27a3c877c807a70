"""Faults in how the daemon answers: refused, silent, slow, trickling, errors, garbage, cut.

One instrumented app serves the whole module (starting one costs more than most
faults do). It talks to the embedded daemon through :class:`FaultDaemon`, a proxy
whose endpoints (``health``, ``register``, ``unregister``, ``get``) are made to
misbehave one test at a time. Every test ends the same way (:func:`recover`):
faults cleared, a wake and a sleep through the proxy succeed, the daemon holds
no attached connection, and the app's threads and descriptors are back to the
baseline taken after warm-up, for the module as a whole, so a leak anywhere
shows up where it happens.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from doubles import Fault, FaultDaemon
from faultkit import (
    OVER,
    REGISTER_TIMEOUT,
    TIMEOUT,
    UNDER,
    FaultApp,
    blackhole,
    live_rows,
    settle,
    start_app,
    trickle,
    warm_up,
)
from support import free_port, wait_until

from detrix_auto.devdaemon import DevDaemon

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


@dataclass
class Rig:
    app: FaultApp
    daemon: DevDaemon
    proxy: FaultDaemon
    baseline: dict[str, int]

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.daemon.port, int(self.proxy.url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("answers")
    home = root / "home"
    home.mkdir(mode=0o700)
    daemon = DevDaemon().start()
    proxy = FaultDaemon(backend=daemon).start()
    # The app outlives the module however slow the machine (the rig ends it): a fixed
    # 120 s lifetime ran out mid-module on a loaded machine and failed every test after.
    app = start_app(root, home, seconds=3600)
    try:
        warm_up(app, proxy.url)
        wait_until(lambda: not live_rows(daemon), what="warm-up detached")
        time.sleep(0.3)
        baseline = app.counts((daemon.port, int(proxy.url.rsplit(":", 1)[1])))
        yield Rig(app, daemon, proxy, baseline)
    finally:
        app.kill()
        proxy.stop()
        daemon.stop()


@pytest.fixture
def r(rig: Rig) -> Iterator[Rig]:
    rig.proxy.faults.clear()
    if rig.app.status()["state"] != "sleeping":
        rig.app.sleep()
    yield rig
    recover(rig)


def recover(rig: Rig) -> None:
    """The fault is gone: the host runs, the next wake works, nothing leaked."""
    rig.proxy.faults.clear()
    app = rig.app
    app.assert_running()
    if app.status()["state"] != "sleeping":
        assert app.sleep()[0] == 200
    # Whatever the fault left attached on the daemon's side is detached by now, and
    # no delayed request is left to land on the next test's registration.
    wait_until(lambda: not live_rows(rig.daemon), timeout=8, what="no attached connection")
    rig.proxy.wait_idle()
    code, body = app.wake(rig.proxy.url)
    assert code == 200, body
    assert body["status"] == "awake"
    status = app.status()
    assert status["state"] == "awake" and status["connection_id"] == body["connection_id"]
    assert status["last_error"] is None, status
    assert live_rows(rig.daemon) == [body["connection_id"]]
    assert app.sleep() == (200, {"status": "sleeping"})
    assert app.status()["connection_id"] is None
    wait_until(lambda: not live_rows(rig.daemon), timeout=5, what="detached after sleep")
    settle(app, rig.baseline, rig.ports)


def assert_sleeping(app: FaultApp, *needles: str) -> dict[str, Any]:
    status = app.status()
    assert status["state"] == "sleeping", status
    assert status["connection_id"] is None
    for needle in needles:
        assert needle in (status["last_error"] or ""), status
    return status


def timed_wake(app: FaultApp, url: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    code, body = app.wake(url)
    return code, body, time.monotonic() - started


# -- no daemon, a silent one, a trickling one ------------------------------------------


def test_daemon_refused(r: Rig) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, body, took = timed_wake(r.app, url)
    assert code == 503 and "connection refused" in body["error"], body
    assert took < TIMEOUT
    assert_sleeping(r.app, "refused")
    assert r.app.status()["daemon_url"] == url


def test_daemon_accepts_but_never_answers(r: Rig) -> None:
    with blackhole() as hole:
        result: dict[str, Any] = {}
        waker = threading.Thread(target=lambda: result.update(w=timed_wake(r.app, hole.url)))
        waker.start()
        wait_until(lambda: r.app.status()["state"] == "waking", timeout=3, interval=0.01)
        # The control plane answers at once while the wake hangs on the daemon.
        started = time.monotonic()
        for _ in range(10):
            assert r.app.status()["state"] == "waking"
        assert (time.monotonic() - started) / 10 < 0.1
        waker.join(10)
        assert hole.accepted >= 1
    code, body, took = result["w"]
    assert code == 503 and f"did not answer within {TIMEOUT:g}s" in body["error"], body
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1.5
    assert_sleeping(r.app, "did not answer")


def test_daemon_trickling_its_answer_is_cut_at_the_timeout(r: Rig) -> None:
    # Each byte comes well within the timeout, the whole answer takes ~25 s:
    # a per-read timeout would wait for all of it.
    with trickle(0.3) as slow:
        code, body, took = timed_wake(r.app, slow.url)
    assert code == 503 and "did not answer" in body["error"], body
    assert took < TIMEOUT + 1.5
    assert_sleeping(r.app)


# -- slow answers, just under and just over each timeout -------------------------------


@pytest.mark.parametrize("delay", [UNDER, OVER], ids=["under", "over"])
def test_slow_health_check(r: Rig, delay: float) -> None:
    r.proxy.faults["health"] = Fault(delay=delay * TIMEOUT)
    registers = r.proxy.count("register")
    code, body, took = timed_wake(r.app, r.proxy.url)
    if delay < 1:
        assert code == 200 and body["status"] == "awake", body
        assert r.app.sleep()[0] == 200
    else:
        assert code == 503 and "did not answer" in body["error"], body
        assert took < TIMEOUT + 1.5
        assert_sleeping(r.app, "did not answer")
        assert r.proxy.count("register") == registers  # no registration without health


def test_slow_register_just_under_the_timeout(r: Rig) -> None:
    # The attach itself takes ~0.1-0.3 s on top of the delay.
    r.proxy.faults["register"] = Fault(delay=REGISTER_TIMEOUT - 1.0)
    code, body, _ = timed_wake(r.app, r.proxy.url)
    assert code == 200 and body["status"] == "awake", body
    assert r.app.sleep()[0] == 200


def test_register_answered_after_the_timeout_is_detached_once_it_completes(r: Rig) -> None:
    """The daemon finishes the attach after we gave up: that attachment must not stay."""
    before = r.daemon.registrations
    r.proxy.faults["register"] = Fault(delay=REGISTER_TIMEOUT + 0.6)
    code, body, took = timed_wake(r.app, r.proxy.url)
    assert code == 503 and "did not answer" in body["error"], body
    assert took < REGISTER_TIMEOUT + 1.5
    assert_sleeping(r.app, "did not answer")
    # The late registration reaches the daemon, whose DAP attach the sleeping
    # client's debug gate refuses: it never attaches at all.
    time.sleep(1.5)
    assert r.daemon.registrations == before
    assert not live_rows(r.daemon)
    status = assert_sleeping(r.app)
    assert "detach" in (status["last_error"] or "") or "did not answer" in status["last_error"]


@pytest.mark.parametrize("delay", [UNDER, OVER], ids=["under", "over"])
def test_slow_unregister(r: Rig, delay: float) -> None:
    assert r.app.wake(r.proxy.url)[0] == 200
    r.proxy.faults["unregister"] = Fault(delay=delay * TIMEOUT)
    started = time.monotonic()
    assert r.app.sleep() == (200, {"status": "sleeping"})
    took = time.monotonic() - started
    assert took < TIMEOUT + 1.0  # a sleep never waits past the unregister timeout
    status = assert_sleeping(r.app)
    if delay < 1:
        assert status["last_error"] is None, status
        assert not live_rows(r.daemon)
    else:
        # The DELETE lands 1.5 s in, as the sleep answers (after its 1 s timeout and
        # its wait for the detach): either the error is still said, or the keeper
        # already saw the detach and rightly took it back.
        said = "could not unregister" in (status["last_error"] or "")
        assert said or not live_rows(r.daemon), status
        # The late DELETE lands, or the keeper's retry does: nothing stays attached.
        wait_until(lambda: not live_rows(r.daemon), timeout=6, what="detached after a slow DELETE")


@pytest.mark.parametrize("delay", [UNDER, OVER], ids=["under", "over"])
def test_slow_liveness_read_back(r: Rig, delay: float) -> None:
    assert r.app.wake(r.proxy.url)[0] == 200
    gets = r.proxy.count("get")
    r.proxy.faults["get"] = Fault(delay=delay * TIMEOUT)
    wait_until(lambda: r.proxy.count("get") >= gets + 1, timeout=5, what="a liveness check")
    time.sleep(delay * TIMEOUT + 0.1)  # its answer, or its timeout
    status = r.app.status()
    # Still attached (the DAP session is alive): awake, whatever the read-back says.
    assert status["state"] == "awake", status
    if delay < 1:
        assert status["last_error"] is None, status
    else:
        wait_until(lambda: "not answering" in (r.app.status()["last_error"] or ""), timeout=5)
        r.proxy.faults.clear()
        wait_until(
            lambda: r.app.status()["last_error"] is None,
            timeout=5,
            what="warning cleared once the daemon answers",
        )
    assert r.app.status()["state"] == "awake"


# -- error statuses, with and without bodies -------------------------------------------

ERRORS = {
    "400-json": Fault(status=400, body=b'{"error": "bad request", "errorCode": "BAD"}'),
    "401-empty": Fault(status=401),
    "404-empty": Fault(status=404),
    "415-text": Fault(status=415, body=b"unsupported media type", content_type="text/plain"),
    "422-json": Fault(status=422, body=b'{"error": "unprocessable"}'),
    "429-empty": Fault(status=429),
    "429-json": Fault(status=429, body=b'{"error": "slow down"}'),
    "500-json": Fault(status=500, body=b'{"error": "DAP connect failed"}'),
    "500-empty": Fault(status=500),
    "502-html": Fault(status=502, body=b"<html>bad gateway</html>", content_type="text/html"),
    "503-empty": Fault(status=503),
}


@pytest.mark.parametrize("endpoint", ["health", "register"])
def test_error_answers_to_wake(r: Rig, endpoint: str) -> None:
    """Every error status, with a JSON, text, HTML or empty body: a clear 503, still asleep."""
    before = r.daemon.registrations
    for name, fault in ERRORS.items():
        r.proxy.faults[endpoint] = fault
        code, body, _ = timed_wake(r.app, r.proxy.url)
        assert code == 503, (name, body)
        assert f"HTTP {fault.status}" in body["error"], (name, body)
        if b"DAP connect failed" in fault.body:
            assert "DAP connect failed" in body["error"]
        if fault.status == 429:
            assert "rate-limiting" in body["error"]
        if fault.status == 401:
            assert "token" in body["error"]
        assert_sleeping(r.app, f"HTTP {fault.status}")
        r.app.assert_running()
    assert r.daemon.registrations == before  # none of them reached the daemon
    settle(r.app, r.baseline, r.ports)


UNREGISTER_FAULTS = {
    "500-json": (Fault(status=500, body=b'{"error": "boom"}'), "HTTP 500"),
    "503-empty": (Fault(status=503), "HTTP 503"),
    "cut": (Fault(close_mid_reply=True), "mid-reply"),
}


def test_failed_unregister_is_retried_until_the_daemon_takes_it(r: Rig) -> None:
    """Sleep is best effort and bounded; what it could not undo is retried, then said."""
    for name, (fault, needle) in UNREGISTER_FAULTS.items():
        assert r.app.wake(r.proxy.url)[0] == 200, name
        r.proxy.faults["unregister"] = fault
        assert r.app.sleep() == (200, {"status": "sleeping"})
        status = assert_sleeping(r.app, "could not unregister", needle)
        assert status["debug_port_active"] is True
        # Still attached on the daemon's side, and retried while the fault lasts.
        assert live_rows(r.daemon), name
        deletes = r.proxy.count("unregister")
        wait_until(lambda: r.proxy.count("unregister") > deletes, timeout=5, what="a retry")
        r.proxy.faults.clear()
        wait_until(lambda: not live_rows(r.daemon), timeout=5, what=f"{name}: retry succeeding")
        wait_until(
            lambda: "could not unregister" not in (r.app.status()["last_error"] or ""), timeout=5
        )


def test_unregister_404_while_still_attached(r: Rig) -> None:
    """404 means "already gone"; a session that outlives it is looked at again."""
    assert r.app.wake(r.proxy.url)[0] == 200
    r.proxy.faults["unregister"] = ERRORS["404-empty"]  # a lie: the daemon never saw it
    assert r.app.sleep() == (200, {"status": "sleeping"})
    assert_sleeping(r.app)
    assert live_rows(r.daemon)
    r.proxy.faults.clear()
    wait_until(lambda: not live_rows(r.daemon), timeout=6, what="the lingering session detached")
    # The daemon drops the row before it answers the DELETE; the app says so once it has
    # read that answer.
    wait_until(
        lambda: "detach" in (r.app.status()["last_error"] or ""),
        timeout=5,
        what="status says the session was detached",
    )


LIVENESS_FAULTS = {
    "429-empty": (Fault(status=429), "HTTP 429"),
    "500-json": (Fault(status=500, body=b'{"error": "boom"}'), "HTTP 500"),
    "503-empty": (Fault(status=503), "HTTP 503"),
    "html": (Fault(status=200, body=b"<html>hello</html>", content_type="text/html"), "not JSON"),
    "cut": (Fault(close_mid_reply=True), "mid-reply"),
}


def test_failed_liveness_read_back_while_attached(r: Rig) -> None:
    """The read-back fails while the DAP session is alive: awake, with the trouble said."""
    assert r.app.wake(r.proxy.url)[0] == 200
    for name, (fault, needle) in LIVENESS_FAULTS.items():
        r.proxy.faults["get"] = fault
        wait_until(lambda: needle in (r.app.status()["last_error"] or ""), timeout=5, what=name)
        status = r.app.status()
        assert status["state"] == "awake" and status["connection_id"]  # still attached: true
        assert "not answering" in status["last_error"]
        r.proxy.faults.clear()
        wait_until(lambda: r.app.status()["last_error"] is None, timeout=5)


def test_liveness_404_means_the_daemon_forgot_us(r: Rig) -> None:
    assert r.app.wake(r.proxy.url)[0] == 200
    registrations = r.proxy.count("register")
    r.proxy.faults["get"] = ERRORS["404-empty"]
    # The client says so, and re-registers (the daemon answers with the same id).
    wait_until(
        lambda: r.proxy.count("register") > registrations, timeout=5, what="a re-registration"
    )
    r.proxy.faults.clear()
    wait_until(
        lambda: r.app.status()["state"] == "awake" and r.app.status()["last_error"] is None,
        timeout=5,
    )
    assert len(live_rows(r.daemon)) == 1


# -- non-JSON and cut answers ----------------------------------------------------------

HTML = Fault(status=200, body=b"<html>hello</html>", content_type="text/html")
HTML_201 = Fault(status=201, body=b"<html>created</html>", content_type="text/html")
CUT = Fault(close_mid_reply=True)


@pytest.mark.parametrize(
    ("endpoint", "fault", "needle"),
    [
        ("health", HTML, "not JSON"),
        ("register", HTML_201, "not JSON"),
        ("health", CUT, "closed the connection mid-reply"),
        ("register", CUT, "closed the connection mid-reply"),
    ],
    ids=["health-html", "register-html", "health-cut", "register-cut"],
)
def test_garbled_answers_to_wake(r: Rig, endpoint: str, fault: Fault, needle: str) -> None:
    r.proxy.faults[endpoint] = fault
    code, body, _ = timed_wake(r.app, r.proxy.url)
    assert code == 503 and needle in body["error"], body
    assert_sleeping(r.app, needle)
