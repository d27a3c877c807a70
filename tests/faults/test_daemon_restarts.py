"""The daemon goes away and comes back: restarts while awake or asleep, a dropped DAP link.

A restart is a :class:`DevDaemon` stopped (it closes its DAP sockets without a
DAP ``disconnect``, like the real one) and a new one started on the same port,
with no memory of the old one's connections.

The real daemon re-attaches on start to every stored connection whose port
answers, whatever the client thinks (CONTRACT.md section 3.10). The new
DevDaemon is made to do the same by registering the app's debug port itself,
with the app's own identity, so the DAP attach is the real one.

What the client does about a daemon that attaches while it sleeps is a decision,
documented in ``detrix_auto/lifecycle.py`` and docs/reliability.md: sleep is what
the user asked for, so it asks that daemon to detach (``DELETE``), stays
``sleeping``, and says what happened in ``last_error``. The next wake then works
as usual, under the same deterministic connection id.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import faultkit
import pytest
from faultkit import LIVENESS, RETRY_MAX, FaultApp, live_rows, settle, warm_up
from support import wait_until

from detrix_auto.devdaemon import DevDaemon

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

fault_app = faultkit.fault_app


@pytest.fixture
def daemons() -> Iterator[Callable[[int], DevDaemon]]:
    """Start daemons (``port=0``: any); all are stopped at the end."""
    started: list[DevDaemon] = []

    def start(port: int = 0) -> DevDaemon:
        daemon = DevDaemon(port=port).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def reattach(daemon: DevDaemon, app: FaultApp) -> str:
    """What the real daemon does on start: attach to a stored connection's port."""
    status = app.status()
    body = json.dumps(
        {
            "host": "127.0.0.1",
            "port": status["debug_port"],
            "language": "python",
            "name": status["name"],
            "workspaceRoot": str(Path(app.script).parent),
            "hostname": socket.gethostname(),
            "pid": app.pid,
        }
    ).encode()
    request = urllib.request.Request(
        daemon.url + "/api/v1/connections",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 201
        return str(json.loads(response.read())["connectionId"])


def ready(fault_app: Callable[..., FaultApp], daemon: DevDaemon) -> tuple[FaultApp, dict[str, int]]:
    app = fault_app()
    warm_up(app, daemon.url)
    wait_until(lambda: not live_rows(daemon), what="warm-up detached")
    time.sleep(0.3)
    return app, app.counts((daemon.port,))


@pytest.mark.parametrize("daemon_reattaches", [False, True], ids=["plain", "daemon-reattaches"])
def test_daemon_restarts_while_the_client_is_awake(
    fault_app: Callable[..., FaultApp],
    daemons: Callable[[int], DevDaemon],
    daemon_reattaches: bool,
) -> None:
    first = daemons(0)
    port = first.port
    app, baseline = ready(fault_app, first)
    code, woke = app.wake(first.url)
    assert code == 200, woke
    cid = woke["connection_id"]

    first.stop()
    # Gone: the client says so, truthfully, without anybody asking it to check.
    status = wait_until(
        lambda: (s := app.status())["state"] == "waking" and s, timeout=3, what="status says waking"
    )
    assert status["connection_id"] is None and status["last_error"]
    # While it stays gone the keeper retries and says why it cannot get through.
    wait_until(
        lambda: "refused" in (app.status()["last_error"] or ""),
        timeout=3,
        what="the retry's reason in last_error",
    )
    time.sleep(0.5)
    assert app.status()["state"] == "waking"
    app.assert_running()

    second = daemons(port)
    if daemon_reattaches:
        assert reattach(second, app) == cid  # before the client's own retry, usually
    started = time.monotonic()
    wait_until(
        lambda: app.status()["state"] == "awake",
        timeout=RETRY_MAX + 5,
        what="awake again on the new daemon",
    )
    assert time.monotonic() - started < RETRY_MAX + 3
    status = app.status()
    assert status["connection_id"] == cid  # the same deterministic id
    assert status["last_error"] is None, status
    assert live_rows(second) == [cid]
    # One attachment, however the two registrations raced.
    assert second.attaches == 1

    assert app.sleep() == (200, {"status": "sleeping"})
    wait_until(lambda: not live_rows(second), timeout=5)
    assert second.unregistrations == 1
    settle(app, baseline, (port,))


def test_daemon_restarts_while_the_client_sleeps_and_reattaches(
    fault_app: Callable[..., FaultApp],
    daemons: Callable[[int], DevDaemon],
) -> None:
    """The real daemon re-attaches to stored ports on start; a sleeping client refuses.

    The debug gate closes any DAP connection while the client sleeps, so the
    daemon's view (nothing attached) stays the same as ours.
    """
    first = daemons(0)
    port = first.port
    app, baseline = ready(fault_app, first)
    cid = app.wake(first.url)[1]["connection_id"]
    assert app.sleep()[0] == 200
    first.stop()

    second = daemons(port)
    with pytest.raises(urllib.error.HTTPError) as refused:
        reattach(second, app)
    assert refused.value.code == 500  # its DAP attach was closed by the gate
    assert not live_rows(second)
    status = app.status()
    assert status["state"] == "sleeping" and status["connection_id"] is None
    app.assert_running()

    code, woke = app.wake(second.url)
    assert code == 200 and woke["connection_id"] == cid, woke
    assert app.status()["last_error"] is None
    assert live_rows(second) == [cid]
    assert app.sleep()[0] == 200
    wait_until(lambda: not live_rows(second), timeout=5)
    settle(app, baseline, (port,))


def test_daemon_drops_the_dap_connection(
    fault_app: Callable[..., FaultApp],
    daemons: Callable[[int], DevDaemon],
) -> None:
    daemon = daemons(0)
    app, baseline = ready(fault_app, daemon)
    cid = app.wake(daemon.url)[1]["connection_id"]
    registrations = daemon.registrations
    daemon.disconnect(cid)  # the socket closes; the daemon keeps the row, disconnected
    assert not live_rows(daemon)
    # Noticed locally (the DAP session ended) and re-registered under the same id.
    wait_until(
        lambda: daemon.registrations > registrations, timeout=LIVENESS + 3, what="a re-registration"
    )
    wait_until(lambda: live_rows(daemon) == [cid], timeout=5)
    status = wait_until(lambda: (s := app.status())["state"] == "awake" and s, timeout=5)
    assert status["connection_id"] == cid and status["last_error"] is None, status
    app.assert_running()
    assert app.sleep()[0] == 200
    wait_until(lambda: not live_rows(daemon), timeout=5)
    settle(app, baseline, (daemon.port,))


def test_another_debugger_cannot_attach_while_asleep(
    fault_app: Callable[..., FaultApp],
    daemons: Callable[[int], DevDaemon],
) -> None:
    """While asleep nobody attaches: the debug port stays open (debugpy), the gate does not."""
    daemon = daemons(0)
    other = daemons(0)
    app, _ = ready(fault_app, daemon)
    with pytest.raises(urllib.error.HTTPError):
        reattach(other, app)  # an unrelated "debugger": a daemon we never registered with
    assert not live_rows(other)
    status = app.status()
    assert status["state"] == "sleeping", status
    # Under load the warm-up's own session may outlive its unregister, and the
    # keeper then asks *our* daemon to let go; the other one is never asked.
    assert status["last_error"] is None or "detach" in status["last_error"], status
    assert other.unregistrations == 0
    code, body = app.wake(daemon.url)
    assert code == 200, body
    assert app.sleep()[0] == 200
