"""HTTP/1.1 request parsing and JSON responses for the control plane.

Hand-written rather than ``http.server`` for three reasons: every limit is ours
(request line, header block, header count, body), every failure is a JSON error
with a 4xx status rather than an HTML page, and the parser is a pure function
of bytes that property tests and fuzzers can drive directly. It is loaded when
the first connection arrives, never at process start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BODY",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_REQUEST_LINE",
    "HttpError",
    "Request",
    "json_response",
    "media_problem",
    "parse_request",
]

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_BODY = 64 * 1024

_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """A request we refuse; ``status`` is the 4xx to answer with, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def parse_request(
    buffer: bytes | bytearray, *, max_body: int = MAX_BODY
) -> tuple[Request | None, int]:
    """Parse one request from the start of ``buffer``.

    Returns ``(request, consumed)`` when a whole request is there, ``(None, 0)``
    when more bytes are needed, and raises :class:`HttpError` when the bytes
    can never become an acceptable request. The embedded daemon parses with
    these same rules (``devdaemon/httpserver.py``); only its body limit may differ.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        line_end = buffer.find(b"\r\n")
        if line_end < 0 and len(buffer) > MAX_REQUEST_LINE:
            raise HttpError(400, "request line too long")
        if len(buffer) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
            raise HttpError(431, "request headers too large")
        return None, 0
    head = bytes(buffer[:end])
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > MAX_REQUEST_LINE:
        raise HttpError(400, "request line too long")
    if len(head) - len(request_line) > MAX_HEADER_BYTES:
        raise HttpError(431, "request headers too large")
    method, target, version = _parse_request_line(request_line)
    headers = _parse_headers(lines[1:])
    if "transfer-encoding" in headers:
        raise HttpError(400, "Transfer-Encoding is not supported; send a Content-Length body")
    length_text = headers.get("content-length")
    length = 0
    if length_text is not None:
        if not length_text.isdigit() or not length_text.isascii() or len(length_text) > 12:
            raise HttpError(400, "invalid Content-Length")
        length = int(length_text)
        if length > max_body:
            raise HttpError(413, f"body larger than {max_body} bytes")
    start = end + 4
    if len(buffer) - start < length:
        return None, 0
    body = bytes(buffer[start : start + length])
    path = target.split("?", 1)[0]
    request = Request(
        method=method, target=target, path=path, version=version, headers=headers, body=body
    )
    return request, start + length


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not method or not all(c in _TOKEN_CHARS for c in method):
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, "only HTTP/1.0 and HTTP/1.1 are supported")
    if not target.startswith(b"/") or any(c <= 0x20 or c >= 0x7F for c in target):
        raise HttpError(400, "malformed request target")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for raw in lines:
        name, sep, value = raw.partition(b":")
        if not sep or not name or not all(c in _TOKEN_CHARS for c in name):
            raise HttpError(400, "malformed header field")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise HttpError(400, "control character in header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1").strip(" \t")
        if key in headers:
            if key in ("content-length", "host", "authorization", "content-type"):
                raise HttpError(400, f"duplicate {key} header")
            headers[key] = headers[key] + ", " + text
        else:
            headers[key] = text
    return headers


def media_problem(request: Request) -> tuple[int, str] | None:
    """A request body must be JSON (``application/json``) or absent.

    Applied to every request that changes state, by the control plane and the
    embedded daemon alike: no HTML form or other "simple" cross-site request
    can carry one, and a daemon is never asked to guess a body's format.
    """
    content_type = request.header("content-type")
    if content_type is None:
        if request.body.strip():
            return 415, "a request body must be sent as Content-Type: application/json"
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json":
        return 415, "Content-Type must be application/json"
    return None


def json_response(
    status: int,
    payload: Any,
    *,
    keep_alive: bool = True,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A complete HTTP/1.1 response with a JSON body."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if status == 401:
        headers.append('WWW-Authenticate: Bearer realm="detrix"')
    for key, value in (extra_headers or {}).items():
        headers.append(f"{key}: {value}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


def error_response(status: int, message: str, *, keep_alive: bool = False) -> bytes:
    return json_response(status, {"error": message}, keep_alive=keep_alive)
