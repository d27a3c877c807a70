"""A controllable daemon double for fault injection.

It answers the daemon's HTTP API (CONTRACT.md section 2) and, unless told to
misbehave, forwards registrations to a real :class:`DevDaemon` so that the
DAP attach of section 3 still happens against the app's debugpy. Each
endpoint can be made to hang, answer slowly, answer any status with any body,
answer garbage, or close the connection mid-reply.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """What to do instead of (or before) the normal answer."""

    delay: float = 0.0  # sleep this long first
    status: int | None = None  # answer this status instead of forwarding
    body: bytes = b""  # with this body
    content_type: str = "application/json"
    close_mid_reply: bool = False  # send headers promising a body, then close
    hang: bool = False  # never answer (until the double stops)


class FaultDaemon:
    def __init__(self, backend: Any = None, *, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate, key) PEM files to answer ``https://`` with."""
        self.backend = backend
        #: The client port of every connection the double accepted, in order.
        self.peers: list[int] = []
        self.faults: dict[str, Fault] = {}  # "health", "register", "unregister", "get"
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []
        self._stop = threading.Event()
        #: Requests read and not yet answered (a delayed one forwards when its delay ends).
        self._in_flight = 0
        self._idle = threading.Condition()
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def setup(self) -> None:
                super().setup()
                double.peers.append(self.client_address[1])

            def _handle(self) -> None:
                with double._idle:
                    double._in_flight += 1
                try:
                    self._handle_one()
                finally:
                    with double._idle:
                        double._in_flight -= 1
                        double._idle.notify_all()

            def _handle_one(self) -> None:
                body = self._body()
                kind = double._kind(self.command, self.path)
                double.calls.append((kind, self.path, dict(self.headers), body))
                fault = double.faults.get(kind)
                if fault is not None:
                    if fault.hang:
                        double._stop.wait(120)
                        return
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.close_mid_reply:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", "100")
                        self.end_headers()
                        self.wfile.write(b'{"conn')
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if fault.status is not None:
                        self._answer(fault.status, fault.body, fault.content_type)
                        return
                status, data, ctype = double._forward(self.command, self.path, self.headers, body)
                self._answer(status, data, ctype)

            def _answer(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultDaemon:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _kind(method: str, path: str) -> str:
        if path.rstrip("/").endswith("/health"):
            return "health"
        if method == "POST":
            return "register"
        if method == "DELETE":
            return "unregister"
        return "get"

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until every request read so far was forwarded and answered.

        A request delayed by a fault still reaches the backend when its delay
        ends, after its sender gave up on it: an unregistration delayed past the
        client's timeout would otherwise land in whatever test runs next, and
        detach a new registration of the same (deterministic) connection id.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise AssertionError(f"{self._in_flight} request(s) still in the double")

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, bytes, str]:
        if self.backend is None:
            if path.endswith("/health"):
                payload = {
                    "status": "ok",
                    "service": "detrix",
                    "uptimeSeconds": 1,
                    "adapterConnected": False,
                }
                return 200, json.dumps(payload).encode(), "application/json"
            return 500, b'{"error": "no backend"}', "application/json"
        request = urllib.request.Request(self.backend.url + path, data=body or None, method=method)
        for key in ("Content-Type", "Authorization"):
            if headers.get(key):
                request.add_header(key, headers[key])
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type", "application/json"),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "application/json")
