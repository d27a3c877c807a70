"""A debug port or host that cannot be had: the wake says so at once and leaves nothing.

The attack (issue: "denial of service by a port"): another local user binds the fixed
``DETRIX_DEBUG_PORT`` before the owner wakes. Before the fix, ``debugpy.listen()`` waited
forever: the wake never answered, sleep hung behind it, the state stayed ``waking`` and the
shortened GIL switch interval was never put back (the host's CPU went from ~0 to 30-80%).
Hosts debugpy cannot listen on as written (``::1``, ``localhost.``, ``127.0.0.1%lo``) hung
the same way. Now each is refused with a named reason, in bounded time, and the host is
left as it was: state ``sleeping``, switch interval the host's own, the next wake works.
"""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
from sechelpers import spawn_as_other_user
from support import quiet_port, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sockets")

#: The host app: reports its switch interval every tick, so the test sees it from outside.
APP = textwrap.dedent(
    """\
    import os, sys, time
    report = sys.argv[1]
    for _ in range(6000):
        with open(report + ".new", "w") as f:
            f.write(repr(sys.getswitchinterval()))
        os.replace(report + ".new", report)  # whole: never read half-written
        time.sleep(0.02)
    """
)

#: The squatter: binds and listens on the port, says so, and holds it until stdin closes.
SQUAT = """
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", job["port"]))
s.listen(1)
print("ready", flush=True)
sys.stdin.read()
"""

#: How long a refused wake may take: far below the 10 s listen bound and any hang.
PROMPT = 5.0


def _timed_wake(app, daemon_url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon_url})
    return code, body, time.monotonic() - started


def test_a_debug_port_another_user_took_first_is_refused_at_once(
    spawn, daemon, other_user, tmp_path
):
    port = quiet_port()
    squatter = spawn_as_other_user(other_user, SQUAT, port=port)
    assert squatter.stdout is not None
    assert squatter.stdout.readline().strip() == "ready"
    report = tmp_path / "interval"
    app = spawn(APP, str(report), env={"DETRIX_DEBUG_PORT": str(port)})
    try:
        wait_until(report.exists, what="the app's first report")
        host_interval = float(report.read_text())
        code, body, took = _timed_wake(app, daemon.url)
        assert code >= 500, body
        assert f"the debug port {port} on 127.0.0.1 is taken" in body["error"], body
        assert "DETRIX_DEBUG_PORT" in body["error"], body
        assert took < PROMPT, f"a refused wake took {took:.1f}s"
        status = app.status()
        assert status["state"] == "sleeping", status
        assert "is taken" in (status["last_error"] or ""), status
        time.sleep(0.2)  # a few ticks of the app after the wake
        assert float(report.read_text()) == host_interval, "the wake's switch interval stayed"
        assert app.request("POST", "/detrix/sleep")[0] == 200
        assert not daemon.connections, "nothing reached the daemon"
    finally:
        squatter.stdin.close()  # type: ignore[union-attr]
        squatter.wait(timeout=10)
    # The port is free again: the same process wakes on it now.
    code, body, _ = _timed_wake(app, daemon.url)
    assert code == 200, body
    assert body["debug_port"] == port
    assert app.request("POST", "/detrix/sleep")[0] == 200


@pytest.mark.parametrize("host", ["::1", "localhost.", "127.0.0.1%lo", "[::1]"])
def test_a_debug_host_debugpy_cannot_listen_on_is_named_at_start(spawn, host):
    """Refused where it is read: one ``detrix-auto:`` line, the app runs on untouched."""
    app = spawn(
        "import time\nprint('app ran', flush=True)\ntime.sleep(0.5)\n",
        env={"DETRIX_DEBUG_HOST": host},
        wait=False,
    )
    out, err = app.proc.communicate(timeout=30)
    assert app.proc.returncode == 0, err
    assert out == "app ran\n"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("detrix-auto: "), err
    assert "DETRIX_DEBUG_HOST" in lines[0] and "IPv4 address" in lines[0], err
