"""A small Debug Adapter Protocol client, just enough to drive debugpy the way Detrix does.

Why hand-written: the embedded daemon must stay stdlib-only (it ships inside the
client package and doubles as the test double of the Rust daemon), and the part of
DAP it needs is tiny: ``Content-Length`` framing, requests matched to responses by
``seq`` and a thread that reads events as they come.

Threading model: one reader thread per connection owns the socket's receive side;
writers serialise on a lock. Every pending request is failed with :class:`DapError`
when the connection drops, so no caller ever waits past its own timeout or the
peer's death.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "MAX_MESSAGE_BYTES",
    "DapClient",
    "DapError",
    "PendingRequest",
    "connect_with_retry",
    "decode_header",
    "encode_message",
]

_log = logging.getLogger(__name__)

#: Refuse a peer message larger than this: a corrupt or hostile ``Content-Length``
#: must not make the reader allocate without bound.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The header block is a line or two; anything longer is not DAP.
_MAX_HEADER_BYTES = 8 * 1024

JsonObject = dict[str, Any]
EventHandler = Callable[[JsonObject], None]
CloseHandler = Callable[[str], None]


class DapError(Exception):
    """A DAP exchange failed: refused request, dropped connection, timeout or bad framing.

    ``command`` names the request concerned, when there is one, so a caller can
    report "attach failed: ..." rather than a bare message.
    """

    def __init__(self, message: str, *, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Frame one DAP message: ``Content-Length: N\\r\\n\\r\\n`` then UTF-8 JSON."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def decode_header(block: bytes) -> int:
    """Return the ``Content-Length`` of a header block (without the blank line).

    Raises :class:`DapError` for a missing, non-numeric, negative or oversized length,
    because after any of those the stream cannot be resynchronised.
    """
    length: int | None = None
    for raw_line in block.split(b"\r\n"):
        if not raw_line:
            continue
        name, sep, value = raw_line.partition(b":")
        if not sep:
            raise DapError(f"malformed DAP header line: {raw_line[:80]!r}")
        if name.strip().lower() == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise DapError(f"bad Content-Length: {text[:40]!r}")
            length = int(text)
    if length is None:
        raise DapError("DAP header without Content-Length")
    if length > MAX_MESSAGE_BYTES:
        raise DapError(f"DAP message of {length} bytes exceeds the {MAX_MESSAGE_BYTES} limit")
    return length


def connect_with_retry(
    host: str, port: int, *, deadline: float, retry_for: float = 1.0
) -> socket.socket:
    """TCP-connect, retrying *refused* connections for up to ``retry_for`` seconds.

    The Rust daemon retries briefly because a debug listener that has just been
    started may not accept yet; other errors (unreachable, timeout) are final.
    ``deadline`` is a ``time.monotonic()`` value bounding the whole attempt.
    """
    retry_until = min(deadline, time.monotonic() + retry_for)
    delay = 0.05
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DapError(f"timed out connecting to {host}:{port}")
        try:
            sock = socket.create_connection((host, port), timeout=remaining)
        except ConnectionRefusedError as exc:
            if time.monotonic() + delay >= retry_until:
                raise DapError(f"connection to {host}:{port} refused") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.4)
            continue
        except OSError as exc:
            raise DapError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class PendingRequest:
    """A request sent and not yet answered; ``wait`` blocks for its response."""

    def __init__(self, seq: int, command: str) -> None:
        self.seq = seq
        self.command = command
        self._done = threading.Event()
        self._response: JsonObject | None = None
        self._error: DapError | None = None

    def _resolve(self, response: JsonObject) -> None:
        self._response = response
        self._done.set()

    def _fail(self, error: DapError) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    @property
    def done(self) -> bool:
        """True once a response arrived or the connection failed."""
        return self._done.is_set()

    def response(self, timeout: float | None = None) -> JsonObject:
        """The raw response message (``success`` may be false); raises on timeout or drop."""
        if not self._done.wait(timeout):
            raise DapError(
                f"no response to {self.command!r} within {timeout:.1f}s", command=self.command
            )
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response

    def wait(self, timeout: float | None = None) -> JsonObject:
        """The response ``body`` of a successful request; raises :class:`DapError` otherwise."""
        response = self.response(timeout)
        if not response.get("success", False):
            message = response.get("message") or "request failed"
            body = response.get("body")
            if isinstance(body, dict):
                error = body.get("error")
                if isinstance(error, dict) and isinstance(error.get("format"), str):
                    message = error["format"]
            raise DapError(f"{self.command} failed: {message}", command=self.command)
        body = response.get("body")
        return body if isinstance(body, dict) else {}


class DapClient:
    """One DAP session over a connected socket.

    ``on_event`` receives every event (from the reader thread; it must not block for
    long, and its exceptions are logged, never propagated). ``on_close`` is called
    once, with a reason, when the session ends for any cause: peer closed, read
    error, or :meth:`close`.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        on_event: EventHandler | None = None,
        on_close: CloseHandler | None = None,
        name: str = "dap",
    ) -> None:
        self._sock = sock
        self._on_event = on_event
        self._on_close = on_close
        self._name = name
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, PendingRequest] = {}
        self._closed = False
        self._close_reason = ""
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        retry_for: float = 1.0,
        on_event: EventHandler | None = None,
        on_close: CloseHandler | None = None,
        name: str = "dap",
    ) -> DapClient:
        """Connect (retrying refusals briefly) and start the reader thread."""
        sock = connect_with_retry(
            host, port, deadline=time.monotonic() + timeout, retry_for=retry_for
        )
        client = cls(sock, on_event=on_event, on_close=on_close, name=name)
        client.start()
        return client

    def start(self) -> None:
        """Start the reader thread; the socket is switched to blocking reads for it."""
        if self._reader is not None:
            return
        self._sock.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"devdaemon-{self._name}-reader", daemon=True
        )
        self._reader.start()

    @property
    def closed(self) -> bool:
        """True once the session is over (for any reason)."""
        return self._closed

    @property
    def close_reason(self) -> str:
        """Why the session ended ("" while open)."""
        return self._close_reason

    def close(self, reason: str = "closed by client") -> None:
        """Close the socket without a DAP ``disconnect``, as the real daemon does.

        ``shutdown`` first so the reader thread's blocking ``recv`` returns at once.
        Idempotent and safe from any thread, including the reader itself.
        """
        self._finish(reason)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader thread to exit (tests use this to avoid stray threads)."""
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)

    # -- requests --------------------------------------------------------------------

    def send_request(
        self, command: str, arguments: Mapping[str, Any] | None = None
    ) -> PendingRequest:
        """Send a request and return its pending handle without waiting."""
        with self._state_lock:
            if self._closed:
                raise DapError(
                    f"cannot send {command!r}: connection closed ({self._close_reason})",
                    command=command,
                )
            self._seq += 1
            seq = self._seq
            pending = PendingRequest(seq, command)
            self._pending[seq] = pending
        message: JsonObject = {"seq": seq, "type": "request", "command": command}
        if arguments is not None:
            message["arguments"] = dict(arguments)
        try:
            self._send(message)
        except DapError as exc:
            with self._state_lock:
                self._pending.pop(seq, None)
            raise DapError(str(exc), command=command) from exc
        return pending

    def request(
        self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float = 10.0
    ) -> JsonObject:
        """Send a request and wait for a successful response's body."""
        return self.send_request(command, arguments).wait(timeout)

    def _send(self, message: Mapping[str, Any]) -> None:
        data = encode_message(message)
        with self._send_lock:
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._finish(f"send failed: {exc}")
                raise DapError(f"send failed: {exc}") from exc

    # -- reader ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        reason = "peer closed the connection"
        buffer = bytearray()
        try:
            while True:
                message = self._read_message(buffer)
                if message is None:
                    break
                self._dispatch(message)
        except DapError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = "closed by client" if self._closed else f"read failed: {exc}"
        self._finish(reason)

    def _recv_into(self, buffer: bytearray) -> bool:
        chunk = self._sock.recv(65536)
        if not chunk:
            return False
        buffer.extend(chunk)
        return True

    def _read_message(self, buffer: bytearray) -> JsonObject | None:
        """Read one framed message; None on a clean end of stream."""
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buffer) > _MAX_HEADER_BYTES:
                raise DapError("DAP header block too long")
            if not self._recv_into(buffer):
                if buffer.strip():
                    raise DapError("peer closed the connection mid-header")
                return None
        length = decode_header(bytes(buffer[:end]))
        del buffer[: end + 4]
        while len(buffer) < length:
            if not self._recv_into(buffer):
                raise DapError("peer closed the connection mid-message")
        body = bytes(buffer[:length])
        del buffer[:length]
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DapError(f"undecodable DAP message: {exc}") from exc
        if not isinstance(message, dict):
            raise DapError("DAP message is not a JSON object")
        return message

    def _dispatch(self, message: JsonObject) -> None:
        kind = message.get("type")
        if kind == "response":
            seq = message.get("request_seq")
            with self._state_lock:
                pending = self._pending.pop(seq, None) if isinstance(seq, int) else None
            if pending is not None:
                pending._resolve(message)
        elif kind == "event":
            handler = self._on_event
            if handler is not None:
                try:
                    handler(message)
                except Exception:  # noqa: BLE001 - a buggy callback must not kill the session
                    _log.exception("DAP event handler failed")
        elif kind == "request":
            # Reverse requests (runInTerminal, startDebugging) are not supported: say
            # so, instead of leaving the adapter waiting forever.
            command = message.get("command")
            with self._state_lock:
                self._seq += 1
                seq = self._seq
            reply = {
                "seq": seq,
                "type": "response",
                "request_seq": message.get("seq"),
                "command": command,
                "success": False,
                "message": f"{command} is not supported by this client",
            }
            try:
                self._send(reply)
            except DapError:
                pass

    def _finish(self, reason: str) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._close_reason = reason
            pending = list(self._pending.values())
            self._pending.clear()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        error = DapError(f"connection closed: {reason}")
        for item in pending:
            item._fail(DapError(str(error), command=item.command))
        handler = self._on_close
        if handler is not None:
            try:
                handler(reason)
            except Exception:  # noqa: BLE001 - same: the session is over either way
                _log.exception("DAP close handler failed")
