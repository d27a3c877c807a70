"""End to end: an untouched script, woken over HTTP, attached by the daemon double.

Each test starts the app as a subprocess with ``DETRIX_ENABLE=1`` and talks to
its control plane over real sockets; the daemon double is the embedded
daemon, which runs the real DAP sequence against the app's real debugpy.
"""

from __future__ import annotations

import concurrent.futures
import textwrap
import threading
import time

import pytest
from doubles import Fault, FaultDaemon
from support import SAMPLE_APP, SAMPLE_LINE, wait_until

from detrix_auto.devdaemon import MetricSpec

#: The wake-and-logpoint path; tox's debugpy-oldest env runs these (-m e2e).
pytestmark = pytest.mark.e2e


def _metric(app, name="value", expressions=("value",), line=SAMPLE_LINE):
    return MetricSpec(name=name, path=str(app.script), line=line, expressions=tuple(expressions))


@pytest.mark.debugpy_contract
def test_logpoint_value_travels_from_debugpy_to_the_daemon(spawn, daemon):
    app = spawn()
    assert app.status()["state"] == "sleeping"
    daemon.add_metric(_metric(app, expressions=("value", "counter")))

    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body
    assert body["status"] == "awake"
    assert len(body["connection_id"]) == 32
    status = app.status()
    assert status["state"] == "awake"
    assert status["debug_port"] == body["debug_port"] and status["debug_port_active"]

    hits = daemon.wait_for_hits("value", count=3, timeout=20)
    for hit in hits:
        value, counter = (int(v) for v in hit.values)
        assert value == counter * 10  # the real values at line 8, not a guess
    assert hits[-1].connection_id == body["connection_id"]

    code, body = app.request("POST", "/detrix/sleep")
    assert (code, body) == (200, {"status": "sleeping"})
    assert app.status()["connection_id"] is None
    assert daemon.unregistrations == 1
    seen = len(daemon.hits("value"))
    time.sleep(0.5)
    assert len(daemon.hits("value")) <= seen + 1  # the daemon closed its DAP socket
    out, err = app.stop()
    assert "DETRICS" not in out  # logpoint output never reaches the app's stdout


@pytest.mark.debugpy_contract
def test_wake_sleep_wake_reattaches_on_the_same_port(spawn, daemon):
    app = spawn()
    daemon.add_metric(_metric(app))
    first = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})[1]
    daemon.wait_for_hits("value", 1, timeout=20)
    assert app.request("POST", "/detrix/sleep")[0] == 200
    time.sleep(0.3)
    before = len(daemon.hits("value"))
    code, second = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, second
    assert second["debug_port"] == first["debug_port"]
    wait_until(lambda: len(daemon.hits("value")) >= before + 2, timeout=30)
    assert daemon.registrations == 2


def test_concurrent_wakes_collapse_into_one_registration(spawn, daemon):
    app = spawn()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda _: app.request("POST", "/detrix/wake", {"daemon_url": daemon.url}), range(16)
            )
        )
    assert all(code == 200 for code, _ in results), results
    ids = {body["connection_id"] for _, body in results}
    assert len(ids) == 1
    assert sorted(body["status"] for _, body in results).count("awake") == 1
    assert daemon.registrations == 1


def test_status_and_health_answer_at_once_while_a_slow_wake_runs(spawn, daemon):
    app = spawn()
    with FaultDaemon(backend=daemon) as slow:
        slow.faults["health"] = Fault(delay=1.5)
        result: dict[str, object] = {}
        waker = threading.Thread(
            target=lambda: result.update(
                r=app.request("POST", "/detrix/wake", {"daemon_url": slow.url})
            )
        )
        waker.start()
        wait_until(lambda: app.status()["state"] == "waking", timeout=5, interval=0.01)
        worst = 0.0
        for _ in range(20):
            start = time.perf_counter()
            assert app.request("GET", "/detrix/health")[0] == 200
            assert app.status()["state"] in ("waking", "awake")
            worst = max(worst, time.perf_counter() - start)
        waker.join(30)
    assert result["r"][0] == 200
    assert worst < 0.5, f"status took {worst:.3f}s during a wake"


def test_sleep_during_a_wake_waits_and_unregisters_what_it_created(spawn, daemon):
    app = spawn()
    with FaultDaemon(backend=daemon) as slow:
        slow.faults["health"] = Fault(delay=1.0)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            wake = pool.submit(app.request, "POST", "/detrix/wake", {"daemon_url": slow.url})
            wait_until(lambda: app.status()["state"] == "waking", timeout=5, interval=0.01)
            sleep = pool.submit(app.request, "POST", "/detrix/sleep")
            assert wake.result(30)[0] == 200
            assert sleep.result(30) == (200, {"status": "sleeping"})
        # One registration; unregistered at least once (the keeper may repeat
        # the DELETE if the daemon is slow to close its DAP socket: idempotent).
        assert slow.count("register") == 1 and slow.count("unregister") >= 1
    assert app.status()["state"] == "sleeping"
    assert daemon.connections[next(iter(daemon.connections))].status == 1


def test_many_clients_waking_sleeping_and_reading_status_at_once(spawn, daemon):
    app = spawn()
    errors: list[object] = []

    def worker(i: int) -> None:
        for j in range(5):
            if (i + j) % 3 == 0:
                code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
                ok = code == 200
            elif (i + j) % 3 == 1:
                code, body = app.request("POST", "/detrix/sleep")
                ok = code == 200 and body["status"] in ("sleeping", "already_sleeping")
            else:
                code, body = app.request("GET", "/detrix/status")
                ok = code == 200 and body["state"] in ("sleeping", "waking", "awake")
            if not ok:
                errors.append((code, body))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    # Every registration was matched by an unregistration, and nothing stays
    # attached (a repeated DELETE for a slow-closing session is harmless).
    app.request("POST", "/detrix/sleep")
    assert daemon.unregistrations >= daemon.registrations
    wait_until(lambda: all(c.status != 3 for c in daemon.connections.values()), timeout=10)
    assert app.proc.poll() is None


def test_daemon_down_gives_503_and_leaves_the_debugger_closed(spawn):
    app = spawn(env={"DETRIX_DAEMON_URL": "http://127.0.0.1:9", "DETRIX_HEALTH_CHECK_TIMEOUT": "1"})
    code, body = app.request("POST", "/detrix/wake")
    assert code == 503
    assert "Cannot connect to daemon at http://127.0.0.1:9" in body["error"]
    status = app.status()
    assert status["state"] == "sleeping"
    assert (status["debug_port"], status["debug_port_active"]) == (0, False)
    assert status["last_error"]


def test_without_urllib3_an_http_daemon_still_works_and_https_names_it(spawn, daemon):
    """urllib3 is only for an https:// daemon: as if it were not installed, a wake
    to the plain loopback daemon works (it never tries to load it), and a wake
    to an https:// daemon is a named error, not a crash."""
    # None in sys.modules: any import of urllib3 raises ImportError.
    app = spawn(
        "import sys\nsys.modules['urllib3'] = None\n" + SAMPLE_APP,
        env={"DETRIX_DAEMON_URL": daemon.url},
    )
    code, body = app.request("POST", "/detrix/wake")
    assert code == 200 and body["status"] == "awake", body
    assert app.request("POST", "/detrix/sleep")[0] == 200
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": "https://127.0.0.1:9"})
    assert code == 503, body
    assert "pip install urllib3" in body["error"] and "http://" in body["error"], body
    status = app.status()
    assert status["state"] == "sleeping" and "urllib3" in status["last_error"]
    assert app.proc.poll() is None


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(status=500, body=b'{"error": "DAP connect failed"}'), "DAP connect failed"),
        (Fault(status=401), "token"),
        (Fault(status=429), "rate-limiting"),
        (Fault(status=200, body=b"<html>hi</html>", content_type="text/html"), "not JSON"),
        (Fault(status=201, body=b'{"status": "created"}'), "no connectionId"),
    ],
)
def test_refused_registration_keeps_status_truthful(spawn, fault, expected):
    app = spawn()
    with FaultDaemon() as bad:
        bad.faults["register"] = fault
        code, body = app.request("POST", "/detrix/wake", {"daemon_url": bad.url})
    assert code == 503
    assert expected in body["error"]
    status = app.status()
    assert status["state"] == "sleeping" and status["connection_id"] is None
    # debugpy cannot close its listener: status says it is open, truthfully.
    assert status["debug_port"] > 0 and status["debug_port_active"] is True


def test_token_goes_in_the_header_never_the_body(spawn, daemon):
    app = spawn(env={"DETRIX_TOKEN": "tok-123"})
    with FaultDaemon(backend=daemon) as spy:
        app.request(
            "POST",
            "/detrix/wake",
            {"daemon_url": spy.url},
            headers={"Authorization": "Bearer tok-123"},
        )
        register = next(c for c in spy.calls if c[0] == "register")
    assert register[2].get("Authorization") == "Bearer tok-123"
    assert b"tok-123" not in register[3]
    import json

    body = json.loads(register[3])
    assert body["language"] == "python" and body["workspaceRoot"] and body["pid"] == app.pid
    assert body["hostname"] and body["port"] >= 1024 and body["name"].endswith(f"-{app.pid}")
    assert "tok-123" not in str(app.status())


#: An app with a thread caught in the middle of its start when the wake comes:
#: ``Thread.start()`` puts the thread in threading's ``_limbo`` table, without an
#: ident yet, until it runs. Put there by hand here, for as long as the app lives,
#: so that the wake meets it every time (in CI a thread-starting app met it once).
STARTING_THREAD_APP = textwrap.dedent(
    """\
    import sys, threading, time
    starting = threading.Thread(target=lambda: None)
    with threading._active_limbo_lock:
        threading._limbo[starting] = starting
    print("app started", flush=True)
    counter = 0
    while True:
        counter += 1
        value = counter * 10
        time.sleep(0.02)  # LOGPOINT
        if counter % 25 == 0:
            print(sorted(map(str, threading._active)), flush=True)
    """
)
STARTING_THREAD_LINE = next(
    i for i, line in enumerate(STARTING_THREAD_APP.splitlines(), 1) if "LOGPOINT" in line
)


def test_a_thread_being_started_during_the_wake_is_left_to_start(spawn, daemon):
    """pydevd's all-threads tracing took every thread of ``threading.enumerate()``,
    limbo included, and made a dummy thread for an ident of None: on 3.13 a
    TypeError that failed the wake (500, "ident must be an integer"), on 3.10/3.11
    a ``None`` key left in ``threading._active``. The wake works; nothing of the
    host's threading changes; the logpoint fires."""
    app = spawn(STARTING_THREAD_APP)
    daemon.add_metric(_metric(app, line=STARTING_THREAD_LINE))
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert (code, body.get("status")) == (200, "awake"), body
    daemon.wait_for_hits("value", 1, timeout=20)
    assert app.proc.stdout is not None
    assert app.proc.stdout.readline().strip() == "app started"
    for _ in range(2):  # a report from after the wake
        idents = app.proc.stdout.readline().strip()
        assert idents.startswith("["), idents
    assert "'None'" not in idents, idents
