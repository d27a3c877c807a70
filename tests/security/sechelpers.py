"""Shared pieces of the security tests.

* :func:`start_app`: an instrumented application as a real subprocess
  (``DETRIX_ENABLE=1``), whose stderr goes to a file so that audit lines and
  warnings can be read at any time.
* :func:`raw_http`: one request over a raw socket, every header chosen by the
  test (no client library adds or normalises anything), optionally from a
  chosen source address.
* :func:`as_other_user`: the same, sent by a process of another user.
* :class:`NaiveServer`: a control plane that trusts every loopback peer, as
  the original client did. Each attack is run against it too, to show the test
  would catch a server that is fooled.
* :func:`parse_responses`: a strict reader of our HTTP responses, used by the
  attack tests and the fuzzers alike.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from doubles import Fault, FaultDaemon  # noqa: E402
from support import App, clean_env, wait_for_record  # noqa: E402

__all__ = [
    "TOKEN",
    "Fault",
    "FaultDaemon",
    "ImpostorDaemon",
    "NaiveServer",
    "Response",
    "RunningApp",
    "Target",
    "as_other_user",
    "spawn_as_other_user",
    "parse_responses",
    "raw_http",
    "start_app",
]

#: The token the apps under attack are configured with (never a real one).
TOKEN = "tok-5f3c9a1e7b2d4c6e8a0b1c3d5e7f9a2b"

#: The application every subprocess test runs. Before anything can reach
#: its control plane it installs a guard: the client may talk only to the
#: daemon doubles the test names in DETRIX_TEST_ALLOW (loopback), whatever URL
#: a request asks for. Any other URL fails as an unreachable daemon would
#: (503), so neither a fuzzer nor an attack test ever opens a connection
#: beyond this machine. The guard is test scaffolding: it is the same failure
#: the real client reports for a daemon it cannot reach.
APP_SOURCE = textwrap.dedent(
    """\
    import os, sys, time
    import detrix_auto.lifecycle as lifecycle
    from detrix_auto.errors import DaemonError

    real = lifecycle._default_daemon_factory
    allowed = {u.rstrip("/") for u in os.environ.get("DETRIX_TEST_ALLOW", "").split(",") if u}

    class Unreachable:
        def __init__(self, url):
            self.url = url

        def health(self, *args):
            raise DaemonError(f"daemon not reachable at {self.url} (test guard)")

        register = unregister = connection = health

    def guarded(url, settings):
        return real(url, settings) if url.rstrip("/") in allowed else Unreachable(url)

    lifecycle._default_daemon_factory = guarded
    print("ready", flush=True)
    while True:
        time.sleep(1)
    """
)


class RunningApp(App):
    """An app of :data:`APP_SOURCE` (stdin closed, stderr to a file), guarded."""

    def __init__(
        self,
        proc: subprocess.Popen[str],
        home: Path,
        script: Path,
        stderr_path: Path,
        record_dir: Path | None = None,
    ) -> None:
        super().__init__(proc, home, script, {})
        self.stderr_path = stderr_path
        #: Where the record is expected, when not under ``home`` (a fallback directory).
        self.record_dir = record_dir

    @property
    def record_path(self) -> Path:
        return (self.record_dir or self.home / "clients") / f"{self.pid}.json"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "", self.stderr()


def start_app(
    workdir: Path, *, allow: Sequence[str] = (), record_dir: Path | None = None, **env: str
) -> RunningApp:
    """Start :data:`APP_SOURCE` with ``DETRIX_ENABLE=1`` and wait until it is guarded.

    ``record_dir``: where its discovery record will be (default ``home/clients``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    script = workdir / "app.py"
    script.write_text(APP_SOURCE)
    stderr_path = workdir / "stderr.txt"
    full_env = clean_env(home, DETRIX_ENABLE="1", DETRIX_TEST_ALLOW=",".join(allow))
    full_env.update(env)
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=full_env,
            cwd=str(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    app = RunningApp(proc, home, script, stderr_path, record_dir)
    try:
        line = _readline(proc, 30.0)
        if line.strip() != "ready":
            raise AssertionError(f"app did not start: {line!r}\n{app.stderr()}")
        app.record = wait_for_record(
            home, proc.pid, timeout=10, directory=record_dir, why=app.stderr
        )
    except BaseException:
        app.stop()
        raise
    return app


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append(proc.stdout.readline()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


# -- HTTP over raw sockets ----------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes

    @property
    def error(self) -> str:
        return str(self.body.get("error", "")) if isinstance(self.body, dict) else ""


class MalformedResponse(AssertionError):
    pass


def parse_responses(
    data: bytes, *, head_requests: int = 0, require_json: bool = True
) -> list[Response]:
    """Every response in ``data``, strictly: a status line, headers with
    Content-Length and ``Content-Type: application/json``, and a JSON object as
    body (omitted for up to ``head_requests`` HEAD answers). Raises
    :class:`MalformedResponse` otherwise."""
    out: list[Response] = []
    rest = data
    while rest:
        head, sep, after = rest.partition(b"\r\n\r\n")
        if not sep:
            raise MalformedResponse(f"truncated response head: {rest[:200]!r}")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) != 3 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit():
            raise MalformedResponse(f"bad status line {lines[0][:200]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise MalformedResponse(f"bad header line {line[:200]!r}")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        if "content-length" not in headers:
            raise MalformedResponse("no Content-Length")
        length = int(headers["content-length"])
        body_bytes = after[:length]
        if head_requests > 0 and length and (not after or after.startswith(b"HTTP/1.1 ")):
            head_requests -= 1  # an answer to HEAD: headers only
            body_bytes, rest = b"", after
        elif len(body_bytes) < length:
            raise MalformedResponse(f"body shorter than Content-Length {length}: {after[:200]!r}")
        else:
            rest = after[length:]
        body: Any = None
        if body_bytes or require_json:
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                raise MalformedResponse(f"not JSON: {headers.get('content-type')!r}")
        if body_bytes:
            try:
                body = json.loads(body_bytes)
            except ValueError:
                raise MalformedResponse(f"body is not JSON: {body_bytes[:200]!r}") from None
            if not isinstance(body, dict):
                raise MalformedResponse(f"body is not a JSON object: {body_bytes[:200]!r}")
            if int(parts[1]) >= 400 and not (isinstance(body.get("error"), str) and body["error"]):
                raise MalformedResponse(f"error without an error message: {body!r}")
            if "Traceback" in body_bytes.decode("utf-8", "replace"):
                raise MalformedResponse("a traceback on the wire")
        out.append(Response(int(parts[1]), parts[2].decode("latin-1"), headers, body, body_bytes))
    return out


def build_request(
    method: str,
    path: str,
    *,
    host: str | None,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    close: bool = True,
) -> bytes:
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def exchange(
    address: tuple[str, int], data: bytes, *, source: str | None = None, timeout: float = 15.0
) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(address)
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def raw_http(
    address: tuple[str, int],
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    host: str | None = "default",
    source: str | None = None,
    timeout: float = 15.0,
) -> Response:
    """One request, ``Connection: close``; ``host="default"`` sends ``Host: <addr>:<port>``."""
    if host == "default":
        shown = address[0]
        if shown.startswith("::ffff:"):
            shown = shown[7:]
        host = f"[{shown}]:{address[1]}" if ":" in shown else f"{shown}:{address[1]}"
    data = build_request(method, path, host=host, headers=headers, body=body)
    responses = parse_responses(
        exchange(address, data, source=source, timeout=timeout), require_json=False
    )
    assert len(responses) == 1, responses
    return responses[0]


# -- another user -----------------------------------------------------------------

#: Runs as root, imports everything it will need, then becomes the other user
#: (root may take any uid; after that the interpreter cannot read more modules).
_ATTACKER_PRELUDE = textwrap.dedent(
    """\
    import encodings.idna, json, os, socket, sys, time
    job = json.loads(sys.argv[1])
    os.setgroups([])
    os.setgid(job["gid"])
    os.setuid(job["uid"])
    assert os.geteuid() == job["uid"]

    def connect(address, source=None):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(15)
        if source:
            sock.bind((source, 0))
        sock.connect(tuple(address))
        return sock

    def exchange(address, data, source=None):
        sock = connect(address, source)
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        sock.close()
        return b"".join(chunks)
    """
)


def _other_user_argv(
    user: tuple[int, int], code: str, job: dict[str, Any]
) -> tuple[list[str], dict[str, str]]:
    payload = dict(job, uid=user[0], gid=user[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env.pop("PYTHONPATH", None)
    argv = [sys.executable, "-c", _ATTACKER_PRELUDE + textwrap.dedent(code), json.dumps(payload)]
    return argv, env


def spawn_as_other_user(user: tuple[int, int], code: str, **job: Any) -> subprocess.Popen[str]:
    """Start ``code`` as ``user`` with pipes on stdin and stdout; the caller ends it."""
    argv, env = _other_user_argv(user, code, job)
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/"
    )


def as_other_user(user: tuple[int, int], code: str, **job: Any) -> Any:
    """Run ``code`` (after the prelude) as ``user``; it prints one JSON value as its result."""
    argv, env = _other_user_argv(user, code, job)
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd="/"
    )
    if proc.returncode != 0:
        raise AssertionError(f"attacker process failed ({proc.returncode}): {proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- a daemon impostor run by the other user ---------------------------------------------

#: A "Detrix daemon" the attacker runs: it answers the health check as the real
#: one would, accepts any registration, and prints one JSON line per event: each
#: connection (``{"connection": n}``) and each request with its Authorization
#: header and body. Raw sockets only (the other user cannot import more modules).
FAKE_DAEMON = """\
srv = socket.socket(socket.AF_INET6 if ":" in job["host"] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((job["host"], job["port"]))
srv.listen(16)
print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
count = 0
while True:
    conn, _ = srv.accept()
    count += 1
    print(json.dumps({"connection": count}), flush=True)
    conn.settimeout(10)
    buf = b""
    try:
        while True:
            while b"\\r\\n\\r\\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
            head, _, buf = buf.partition(b"\\r\\n\\r\\n")
            lines = head.decode("latin-1").split("\\r\\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            while len(buf) < length:
                buf += conn.recv(65536)
            body, buf = buf[:length], buf[length:]
            print(json.dumps({
                "method": method, "path": path,
                "authorization": headers.get("authorization"),
                "body": body.decode("latin-1"),
            }), flush=True)
            if path.endswith("/health"):
                code, reply = "200 OK", {"status": "ok", "service": "detrix"}
            elif method == "POST":
                code, reply = "201 Created", {"connectionId": "stolen"}
            else:
                code, reply = "404 Not Found", {"error": "no such connection"}
            data = json.dumps(reply).encode()
            conn.sendall(
                f"HTTP/1.1 {code}\\r\\nContent-Type: application/json\\r\\n"
                f"Content-Length: {len(data)}\\r\\n\\r\\n".encode() + data
            )
    except (EOFError, OSError, ValueError):
        conn.close()
"""


class ImpostorDaemon:
    """:data:`FAKE_DAEMON` running as another user; what it received, read at any time."""

    def __init__(self, user: tuple[int, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.proc = spawn_as_other_user(user, FAKE_DAEMON, host=host, port=port)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            self.proc.kill()
            raise AssertionError(f"the impostor could not listen on {host}:{port}")
        self.port = int(json.loads(first)["port"])
        self.host = host
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "method" in e]

    @property
    def connections(self) -> int:
        return sum(1 for e in self.events if "connection" in e)

    def tokens(self) -> list[str]:
        return [str(r["authorization"]) for r in self.requests if r.get("authorization")]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)
        self._reader.join(5)

    def __enter__(self) -> ImpostorDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the naive server ----------------------------------------------------------------


class NaiveServer:
    """A control plane built on "loopback is trusted" (the original client's rule).

    Any 127/8, ``::1`` or IPv4-mapped loopback peer is trusted; others need
    the bearer token. ``wake`` reads a JSON ``daemon_url`` from the body,
    whatever its Content-Type, and registers with that daemon, sending the
    token. It is exactly as vulnerable as issue 7 says, and no more.
    """

    def __init__(self, daemon_url: str, token: str | None, host: str = "127.0.0.1") -> None:
        self.daemon_url = daemon_url
        self.token = token
        naive = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    self.wfile.write(data)
                except OSError:
                    pass

            def _trusted(self) -> bool:
                try:
                    address = ipaddress.ip_address(self.client_address[0])
                except ValueError:
                    return False
                mapped = getattr(address, "ipv4_mapped", None)
                if address.is_loopback or (mapped is not None and mapped.is_loopback):
                    return True
                return self.headers.get("Authorization") == f"Bearer {naive.token}"

            def do_GET(self) -> None:
                if self.path == "/detrix/health":
                    self._send(200, {"status": "ok", "service": "detrix-client"})
                elif not self._trusted():
                    self._send(401, {"error": "unauthorized"})
                elif self.path == "/detrix/status":
                    self._send(200, {"state": "sleeping", "daemon_url": naive.daemon_url})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not self._trusted():
                    self._send(401, {"error": "unauthorized"})
                    return
                if self.path == "/detrix/sleep":
                    self._send(200, {"status": "already_sleeping"})
                    return
                url = naive.daemon_url
                try:
                    data = json.loads(body or b"{}")
                    if isinstance(data, dict) and data.get("daemon_url"):
                        url = str(data["daemon_url"])
                except ValueError:
                    pass
                status, payload = naive.wake(url)
                self._send(status, payload)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            request_queue_size = 128

        self.server = Server((host, 0), Handler)
        self.host = host
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wake(self, url: str) -> tuple[int, Any]:
        # Only ever asked for loopback daemon doubles by these tests.
        assert ipaddress.ip_address(url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")).is_loopback
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            request = urllib.request.Request(url + "/api/v1/connections", data=b"{}", method="POST")
            request.add_header("Content-Type", "application/json")
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            urllib.request.urlopen(request, timeout=5).read()
        except (urllib.error.URLError, OSError) as exc:
            return 503, {"error": f"daemon failed: {exc}"}
        return 200, {"status": "awake", "debug_port": 5678, "connection_id": "x"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Target:
    """One server under attack: detrix-auto or the naive one, and its daemon double."""

    name: str
    naive: bool
    host: str
    port: int
    daemon: FaultDaemon
    token: str | None
    app: RunningApp | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def wake_attempts(self) -> int:
        """How many wakes reached the daemon (each starts with a health check)."""
        return self.daemon.count("health")

    def verdict(self, succeeded: bool, attack: str) -> None:
        if self.naive:
            assert succeeded, f"the naive server resisted {attack}: this test would prove nothing"
        else:
            assert not succeeded, f"{attack} succeeded against detrix-auto"


def authorization_headers(daemon: FaultDaemon) -> list[str]:
    """Every Authorization header value the double received."""
    found = []
    for _, _, headers, _ in daemon.calls:
        for key, value in headers.items():
            if key.lower() == "authorization":
                found.append(value)
    return found
