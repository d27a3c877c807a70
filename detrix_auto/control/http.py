"""HTTP/1.1 request parsing and JSON responses for the control plane.

Hand-written rather than ``http.server`` for three reasons: every limit is ours
(request line, header block, header count, body), every failure is a JSON error
with a 4xx status rather than an HTML page, and the parser is a pure function
of bytes that property tests and fuzzers can drive directly. It is loaded when
the first connection arrives, never at process start.

It imports nothing (``_json``, a small C module, only for strings that need
escaping): answering a status
request must not load ``json`` (and with it ``re``), ``dataclasses`` (and
``inspect``) or ``typing``, megabytes that a sleeping process would keep
(docs/performance.md, "Memory").
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    "text_response",
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


class Request:
    """One parsed request. Compares and prints like the dataclass it replaces."""

    __slots__ = ("body", "headers", "method", "path", "target", "version")

    def __init__(  # noqa: PLR0917 - the dataclass's positional signature
        self,
        method: str,
        target: str,
        path: str,
        version: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.version = version
        self.headers: dict[str, str] = {} if headers is None else headers
        self.body = body

    def _fields(self) -> tuple[Any, ...]:
        return (self.method, self.target, self.path, self.version, self.headers, self.body)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, target={self.target!r}, path={self.path!r}, "
            f"version={self.version!r}, headers={self.headers!r}, body={self.body!r})"
        )

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
    body = dumps(payload).encode()
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


def text_response(status: int, body: bytes, *, keep_alive: bool = True) -> bytes:
    """A complete HTTP/1.1 response with a UTF-8 plain-text body (a source file)."""
    headers = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


def error_response(status: int, message: str, *, keep_alive: bool = False) -> bytes:
    return json_response(status, {"error": message}, keep_alive=keep_alive)


def dumps(payload: Any) -> str:
    """``json.dumps(payload, separators=(",", ":"))``, without loading ``json``.

    Written out for what responses carry (dicts, lists, strings, numbers,
    booleans, None); anything else goes to ``json`` itself, so the text is
    always exactly what ``json`` would write.
    """
    try:
        return "".join(_encode(payload, []))
    except _Unusual:
        import json

        return json.dumps(payload, separators=(",", ":"))


class _Unusual(Exception):
    """A value :func:`dumps` leaves to ``json``."""


def _encode_string_fallback(text: str) -> str:
    import json

    return json.dumps(text)


def _quote(text: str) -> str:
    """A JSON string literal as ``json`` writes it (ASCII only, escapes)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # nothing to escape: the usual case, no module loaded
    try:
        from _json import encode_basestring_ascii
    except ImportError:  # pragma: no cover - an interpreter without the C accelerator
        return _encode_string_fallback(text)
    return str(encode_basestring_ascii(text))


def _encode(value: Any, parts: list[str], depth: int = 0) -> list[str]:
    if depth > 32:
        raise _Unusual  # json itself reports recursion the way it does
    if isinstance(value, str):
        parts.append(_quote(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        if value - value != 0.0:
            raise _Unusual  # NaN and the infinities: json's spelling
        parts.append(float.__repr__(value))
    elif type(value) is dict:
        parts.append("{")
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unusual  # json's rules for other keys are its own
            if not first:
                parts.append(",")
            first = False
            parts.append(_quote(key))
            parts.append(":")
            _encode(item, parts, depth + 1)
        parts.append("}")
    elif type(value) is list or type(value) is tuple:
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, parts, depth + 1)
        parts.append("]")
    else:
        raise _Unusual
    return parts
