"""The embedded daemon and the control plane refuse the same bytes the same way (issue 17).

Each malformed request goes, byte for byte, to a real app's control plane
(``DETRIX_ENABLE=1``) and to the embedded daemon; both must answer the same
4xx with a JSON error and no traceback, then close. Before, the daemon (on
``http.server``) answered ``Content-Length: ²`` with a 500 and a traceback.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from detrix_auto.devdaemon import DevDaemon

SECURITY = Path(__file__).resolve().parent.parent / "security"
if str(SECURITY) not in sys.path:
    sys.path.insert(0, str(SECURITY))

from sechelpers import exchange, parse_responses  # noqa: E402

#: Where a body is read: the control plane's wake, the daemon's registration.
BODY_PATH = {"control": "/detrix/wake", "daemon": "/api/v1/connections"}


def _request(head: str, body: bytes = b"") -> bytes:
    """``head`` with one more header, ``Connection: close``, so the answer ends the exchange."""
    first, _, rest = head.partition("\n")
    head = f"{first}\nConnection: close\n{rest}"
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


CASES: list[tuple[str, str, bytes, int]] = [
    ("non-ASCII digit length", "POST {path} HTTP/1.1\nHost: h\nContent-Length: \u00b2\n", b"", 400),
    ("negative length", "POST {path} HTTP/1.1\nHost: h\nContent-Length: -1\n", b"", 400),
    ("length in exponent form", "POST {path} HTTP/1.1\nHost: h\nContent-Length: 1e3\n", b"", 400),
    (
        "two lengths",
        "POST {path} HTTP/1.1\nHost: h\nContent-Length: 2\nContent-Length: 2\n",
        b"{}",
        400,
    ),
    (
        "chunked body",
        "POST {path} HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n",
        b"2\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    ("body too large", "POST {path} HTTP/1.1\nHost: h\nContent-Length: 70000\n", b"{}", 413),
    ("header block too large", "GET /x HTTP/1.1\nHost: h\nX-Big: " + "a" * 17000 + "\n", b"", 431),
    (
        "too many headers",
        "GET /x HTTP/1.1\nHost: h\n" + "".join(f"X-{i}: v\n" for i in range(70)),
        b"",
        431,
    ),
    ("request line too long", "GET /" + "a" * 9000 + " HTTP/1.1\nHost: h\n", b"", 400),
    ("HTTP/2.0", "GET /x HTTP/2.0\nHost: h\n", b"", 400),
    ("no version", "GET /x\nHost: h\n", b"", 400),
    ("control character in a header", "GET /x HTTP/1.1\nHost: h\nX-A: a\x01b\n", b"", 400),
    ("space in a header name", "GET /x HTTP/1.1\nHost: h\nBad Name: v\n", b"", 400),
    ("target not a path", "GET x HTTP/1.1\nHost: h\n", b"", 400),
    (
        "a body that is not JSON",
        "POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: text/plain\nContent-Length: 2\n",
        b"{}",
        415,
    ),
    (
        "a body without a media type",
        "POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 2\n",
        b"{}",
        415,
    ),
    ("an unknown path", "GET /nowhere HTTP/1.1\nHost: 127.0.0.1\n", b"", 404),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The control plane of a real sleeping app, and a daemon; both on loopback."""
    import subprocess

    from support import SAMPLE_APP, clean_env, wait_for_record

    work = tmp_path_factory.mktemp("http-rules")
    home = work / "home"
    home.mkdir(mode=0o700)
    script = work / "app.py"
    script.write_text(SAMPLE_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script), "120"],
        env=clean_env(home, DETRIX_ENABLE="1"),
        cwd=str(work),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemon = DevDaemon().start()
    try:
        record = wait_for_record(home, proc.pid)
        yield {
            "control": ("127.0.0.1", int(record["control_port"])),
            "daemon": ("127.0.0.1", daemon.port),
        }
    finally:
        daemon.stop()
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(("what", "head", "body", "status"), CASES, ids=[c[0] for c in CASES])
def test_same_bytes_same_answer(
    servers: dict[str, tuple[str, int]], what: str, head: str, body: bytes, status: int
) -> None:
    answers = {}
    for name, address in servers.items():
        data = _request(head.format(path=BODY_PATH[name]), body)
        (response,) = parse_responses(exchange(address, data))  # strict: JSON, no traceback
        answers[name] = response.status
        assert response.error, (name, response)
        assert response.headers.get("connection") == "close", (name, what)
    assert answers == {"control": status, "daemon": status}, what


def test_a_request_split_into_bytes_is_still_one_request(
    servers: dict[str, tuple[str, int]],
) -> None:
    """The daemon reassembles a request however the client's writes fall."""
    data = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(servers["daemon"], timeout=10) as sock:
        for byte in data:
            sock.sendall(bytes([byte]))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    (response,) = parse_responses(received)
    assert response.status == 200 and response.body["service"] == "detrix"


def test_expect_100_continue_is_answered_before_the_body(
    servers: dict[str, tuple[str, int]],
) -> None:
    """curl sends a body over 1 KiB only after "100 Continue" (or a second's wait)."""
    body = b'{"name": "' + b"x" * 2000 + b'"}'
    head = (
        "POST /api/v1/connections HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(servers["daemon"], timeout=10) as sock:
        sock.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    (response,) = parse_responses(received)
    assert response.status == 422  # the body arrived and was read: fields are missing
