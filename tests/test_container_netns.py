"""The container recipe (README "Containers", examples/container/Dockerfile), no container runtime.

Two network namespaces joined by a veth pair stand in for two containers on
one network: the app in one, configured by environment only, as the recipe
does (control plane and debugger bound to all interfaces of its namespace,
``DETRIX_HOST=app``, a token, ``DETRIX_DAEMON_URL=http://detrix:8090``, a
``DETRIX_HOME`` it cannot write, as on a read-only root file system); a
daemon double speaking the real HTTP API in the other, which, like a daemon
that reaches apps by their advertised name, runs the DAP attach (initialize,
attach, configurationDone) against the registered host and port. Names are
resolved through ``/etc/netns/<ns>/hosts``, which ``ip netns exec`` puts in
place of ``/etc/hosts`` (the containers' DNS).

What is reproduced: reaching the app by name from the other namespace, wake
through the control plane with the token (and not without it), the
registration carrying the advertised host and control-plane URL, the attach
across namespaces through the debug gate, and the gate refusing other
addresses. Not reproduced: the non-root user (the interpreter of this suite
lives where other users cannot run it) and a truly read-only root.

Needs root, Linux and ``ip``; skipped with the reason otherwise. Only
addresses inside the namespaces created here are used; all is removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import SAMPLE_APP, wait_until

TOKEN = "container-token-3b9f1c"
CONTROL_PORT = 8091
DEBUG_PORT = 5678
DAEMON_PORT = 8090

#: The daemon double: the daemon's HTTP API, and the DAP attach against the
#: host and port the app registered (not 127.0.0.1: it is another namespace).
DAEMON = textwrap.dedent(
    """\
    import json, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from detrix_auto.devdaemon.dap import DapClient, DapError
    from detrix_auto.devdaemon.server import ATTACH_ARGUMENTS, INITIALIZE_ARGUMENTS

    ADVERTISED = sys.argv[2]
    sessions = {}
    closed_at = [0.0]
    lock = threading.Lock()

    def report(**event):
        print(json.dumps(event), flush=True)

    def attach(host, port):
        pause = closed_at[0] + 0.5 - time.monotonic()  # let the last session end
        if pause > 0:
            time.sleep(pause)
        client = DapClient.connect(host, port, timeout=10)
        try:
            client.request("initialize", INITIALIZE_ARGUMENTS, timeout=10)
            client.send_request("attach", ATTACH_ARGUMENTS)
            client.request("configurationDone", timeout=10)
        except BaseException:
            client.close("attach failed")
            raise
        return client

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body=None):
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.answer(200, {"status": "ok", "service": "detrix", "advertiseUrl": ADVERTISED})
            else:
                self.answer(200, {"connection": {"status": 3}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            event = {"event": "register", "body": body, "auth": self.headers.get("Authorization")}
            try:
                client = attach(body["host"], body["port"])
            except (DapError, OSError) as exc:
                report(attached=False, error=str(exc), **event)
                self.answer(500, {"error": f"DAP attach failed: {exc}"})
                return
            with lock:
                sessions["c" * 32] = client
            report(attached=True, **event)
            self.answer(201, {"connectionId": "c" * 32, "status": "created",
                              "advertiseUrl": ADVERTISED})

        def do_DELETE(self):
            with lock:
                client = sessions.pop("c" * 32, None)
            if client is not None:
                client.close("unregistered")
                closed_at[0] = time.monotonic()
            report(event="unregister", auth=self.headers.get("Authorization"))
            self.answer(204)

    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
    report(event="ready")
    server.serve_forever()
    """
)

#: A caller in the daemon's namespace: one HTTP request, or one bare TCP connection.
CALLER = textwrap.dedent(
    """\
    import http.client, json, socket, sys, time
    job = json.loads(sys.argv[1])
    if job.get("connect"):
        sock = socket.socket()
        sock.bind((job["source"], 0))
        sock.connect((job["host"], job["port"]))
        print(json.dumps({"local": sock.getsockname()[0]}))
        sys.exit(0)
    deadline = time.monotonic() + job.get("retry", 0)
    while True:
        try:
            conn = http.client.HTTPConnection(job["host"], job["port"], timeout=60)
            headers = {"Content-Type": "application/json"} if job.get("body") is not None else {}
            if job.get("token"):
                headers["Authorization"] = "Bearer " + job["token"]
            body = json.dumps(job["body"]) if job.get("body") is not None else None
            conn.request(job["method"], job["path"], body=body, headers=headers)
            response = conn.getresponse()
            print(json.dumps({"status": response.status, "body": json.loads(response.read())}))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    """
)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


@dataclass
class Network:
    app_ns: str
    daemon_ns: str
    app_ip: str
    daemon_ip: str
    stranger_ip: str
    workdir: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def call(self, method: str, path: str, *, token: str | None = None, **job: Any) -> Any:
        """An HTTP request to the app's control plane from the daemon's namespace."""
        payload = {"host": "app", "port": CONTROL_PORT, "method": method, "path": path}
        payload.update(token=token, **job)
        done = _run(
            "ip", "netns", "exec", self.daemon_ns, sys.executable, "-c", CALLER, json.dumps(payload)
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    def touch_debug_port(self, source: str) -> str:
        """Open (and leave) one TCP connection to the app's debug port from ``source``."""
        payload = {"connect": True, "host": "app", "port": DEBUG_PORT, "source": source}
        done = _run(
            "ip", "netns", "exec", self.daemon_ns, sys.executable, "-c", CALLER, json.dumps(payload)
        )
        return str(json.loads(done.stdout)["local"])


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on this machine"
    return None


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    subnet = 10 + int(tag, 16) % 200  # 10.213.<subnet>.0/24: private, inside our namespaces only
    net = Network(
        app_ns=f"dtx-app-{tag}",
        daemon_ns=f"dtx-daemon-{tag}",
        app_ip=f"10.213.{subnet}.1",
        daemon_ip=f"10.213.{subnet}.2",
        stranger_ip=f"10.213.{subnet}.3",
        workdir=tmp_path,
    )
    made: list[str] = []
    hosts_dirs: list[Path] = []
    try:
        for ns in (net.app_ns, net.daemon_ns):
            done = _run("ip", "netns", "add", ns, check=False)
            if done.returncode != 0:
                pytest.skip(f"`ip netns add` failed here: {done.stderr.strip()}")
            made.append(ns)
        veth_a, veth_d = f"dtxa{tag}", f"dtxd{tag}"
        _run("ip", "link", "add", veth_a, "netns", net.app_ns, "type", "veth", "peer", "name",
             veth_d, "netns", net.daemon_ns)  # fmt: skip
        for ns, dev, addresses in (
            (net.app_ns, veth_a, [net.app_ip]),
            (net.daemon_ns, veth_d, [net.daemon_ip, net.stranger_ip]),
        ):
            for address in addresses:
                _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # Container-style names: `ip netns exec` uses /etc/netns/<ns>/hosts as /etc/hosts.
        names = f"127.0.0.1 localhost\n{net.app_ip} app\n{net.daemon_ip} detrix\n"
        for ns in (net.app_ns, net.daemon_ns):
            directory = Path("/etc/netns") / ns
            try:
                directory.mkdir(parents=True)
                (directory / "hosts").write_text(names)
            except OSError as exc:
                pytest.skip(f"cannot give the namespaces host names ({exc})")
            hosts_dirs.append(directory)
        yield net
    finally:
        for proc in net.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        for ns in made:
            _run("ip", "netns", "del", ns, check=False)  # takes the veth pair with it
        for directory in hosts_dirs:
            shutil.rmtree(directory, ignore_errors=True)


def _start_daemon(net: Network) -> list[dict[str, Any]]:
    script = net.workdir / "daemon_double.py"
    script.write_text(DAEMON)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", net.daemon_ns, sys.executable, str(script), str(DAEMON_PORT),
         f"http://detrix:{DAEMON_PORT}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(net.workdir),
    )  # fmt: skip
    net.procs.append(proc)
    events: list[dict[str, Any]] = []

    def collect() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.append(json.loads(line))

    threading.Thread(target=collect, daemon=True).start()
    wait_until(lambda: any(e.get("event") == "ready" for e in events), timeout=30)
    return events


def _start_app(net: Network) -> tuple[subprocess.Popen[str], Path]:
    script = net.workdir / "app.py"
    script.write_text(SAMPLE_APP)
    stderr_path = net.workdir / "app.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env.pop("PYTHONPATH", None)
    env.update(
        DETRIX_ENABLE="1",
        DETRIX_NAME="shop",
        DETRIX_CONTROL_HOST="0.0.0.0",
        DETRIX_CONTROL_PORT=str(CONTROL_PORT),
        DETRIX_DEBUG_HOST="0.0.0.0",
        DETRIX_DEBUG_PORT=str(DEBUG_PORT),
        DETRIX_HOST="app",
        DETRIX_DAEMON_URL=f"http://detrix:{DAEMON_PORT}",
        DETRIX_TOKEN=TOKEN,
        DETRIX_HOME="/proc/detrix-not-writable",  # as on a read-only root file system
        DETRIX_LOG_LEVEL="info",
    )
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", net.app_ns, sys.executable, str(script), "120"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            cwd=str(net.workdir),
        )
    net.procs.append(proc)
    return proc, stderr_path


def test_the_container_recipe_across_two_network_namespaces(network):
    net = network
    events = _start_daemon(net)
    app, stderr_path = _start_app(net)

    def app_log() -> str:
        return stderr_path.read_text(errors="replace")

    # The app is reached by its name from the other namespace; health needs no token.
    health = net.call("GET", "/detrix/health", retry=30)
    assert health == {"status": 200, "body": {"status": "ok", "service": "detrix-client"}}
    # Everything else from there needs the token.
    assert net.call("GET", "/detrix/status")["status"] == 401
    assert net.call("POST", "/detrix/wake")["status"] == 401

    woke = net.call("POST", "/detrix/wake", token=TOKEN)
    assert woke["status"] == 200, (woke, app_log(), events)
    assert woke["body"]["status"] == "awake"
    assert woke["body"]["debug_port"] == DEBUG_PORT
    assert woke["body"]["daemon_url"] == f"http://detrix:{DAEMON_PORT}"
    first = [e for e in events if e.get("event") == "register"][-1]
    assert first["attached"], first
    assert first["body"]["host"] == "app"  # the advertised name, not 0.0.0.0 or 127.0.0.1
    assert first["body"]["port"] == DEBUG_PORT
    assert first["body"]["controlPlaneUrl"] == f"http://app:{CONTROL_PORT}"
    assert first["auth"] == f"Bearer {TOKEN}"

    status = net.call("GET", "/detrix/status", token=TOKEN)["body"]
    assert (status["state"], status["advertise_host"]) == ("awake", "app")
    found = net.call("GET", "/detrix/discover", token=TOKEN)["body"]
    assert found["control_plane_url"] == f"http://app:{CONTROL_PORT}"

    assert net.call("POST", "/detrix/sleep", token=TOKEN)["body"] == {"status": "sleeping"}
    assert wait_until(lambda: any(e.get("event") == "unregister" for e in events), timeout=10)

    # Asleep, nobody attaches, not even from the daemon's address.
    net.touch_debug_port(net.daemon_ip)
    assert wait_until(
        lambda: (
            f"debug-attach peer={net.daemon_ip}:" in app_log()
            and "refused: the client is not awake" in app_log()
        ),
        timeout=10,
    ), app_log()

    # Awake again: the daemon's attach now passes the gate from the other namespace...
    woke = net.call("POST", "/detrix/wake", token=TOKEN)
    assert woke["status"] == 200 and woke["body"]["status"] == "awake", (woke, app_log())
    assert [e for e in events if e.get("event") == "register"][-1]["attached"]
    # ...and a connection from another address of that network is refused.
    net.touch_debug_port(net.stranger_ip)
    assert wait_until(
        lambda: (
            f"debug-attach peer={net.stranger_ip}:" in app_log()
            and f"{net.stranger_ip} is not an address of this wake's daemon" in app_log()
        ),
        timeout=10,
    ), app_log()
    assert net.call("GET", "/detrix/status", token=TOKEN)["body"]["state"] == "awake"
    assert net.call("POST", "/detrix/sleep", token=TOKEN)["status"] == 200
    assert app.poll() is None
    assert "Traceback" not in app_log()
