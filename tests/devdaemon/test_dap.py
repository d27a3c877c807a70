"""The DAP client: framing, request/response matching, events, failure modes.

The first half runs against a scripted peer over a socketpair (exact bytes, odd
chunking, misbehaviour); the second half against real debugpy, pinning down the
behaviours the daemon relies on (CONTRACT.md section 3 and 7).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from detrix_auto.devdaemon import DapClient, DapError
from detrix_auto.devdaemon.dap import (
    MAX_MESSAGE_BYTES,
    connect_with_retry,
    decode_header,
    encode_message,
)
from detrix_auto.devdaemon.output import OutputParser, failure_text, parse_hit
from detrix_auto.devdaemon.server import ATTACH_ARGUMENTS, INITIALIZE_ARGUMENTS

# -- framing -----------------------------------------------------------------------------


def test_encode_message_frames_utf8_json_with_byte_length() -> None:
    data = encode_message({"seq": 1, "text": "é"})
    header, body = data.split(b"\r\n\r\n", 1)
    assert header == b"Content-Length: %d" % len(body)
    assert json.loads(body) == {"seq": 1, "text": "é"}
    assert len(body) != len(body.decode())  # bytes, not characters


@pytest.mark.parametrize(
    "block",
    [b"", b"Content-Type: x", b"Content-Length: abc", b"Content-Length: -1", b"garbage"],
)
def test_decode_header_rejects_unusable_headers(block: bytes) -> None:
    with pytest.raises(DapError):
        decode_header(block)


def test_decode_header_rejects_oversized_length_and_accepts_extra_headers() -> None:
    with pytest.raises(DapError, match="limit"):
        decode_header(b"Content-Length: %d" % (MAX_MESSAGE_BYTES + 1))
    assert decode_header(b"Content-Type: application/json\r\ncontent-length: 12") == 12


# -- a scripted peer ---------------------------------------------------------------------


class Peer:
    """The far end of a socketpair, speaking raw DAP under the test's control."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(5)
        self.buffer = b""

    def read(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "client closed"
            self.buffer += chunk
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = decode_header(header)
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        message: dict[str, Any] = json.loads(body)
        return message

    def send(self, message: dict[str, Any], *, bytewise: bool = False) -> None:
        data = encode_message(message)
        if bytewise:
            for i in range(len(data)):
                self.sock.sendall(data[i : i + 1])
        else:
            self.sock.sendall(data)

    def respond(self, request: dict[str, Any], success: bool = True, **extra: Any) -> None:
        self.send(
            {
                "seq": 100 + request["seq"],
                "type": "response",
                "request_seq": request["seq"],
                "command": request["command"],
                "success": success,
                **extra,
            }
        )


@pytest.fixture
def pair() -> Any:
    ours, theirs = socket.socketpair()
    events: list[dict[str, Any]] = []
    closed: list[str] = []
    client = DapClient(ours, on_event=events.append, on_close=closed.append)
    client.start()
    peer = Peer(theirs)
    yield client, peer, events, closed
    client.close()
    client.join(5)
    theirs.close()


def test_requests_are_matched_to_responses_by_seq_in_any_order(pair: Any) -> None:
    client, peer, _, _ = pair
    first = client.send_request("initialize", {"a": 1})
    second = client.send_request("threads")
    req1, req2 = peer.read(), peer.read()
    assert (req1["seq"], req1["command"], req1["arguments"]) == (1, "initialize", {"a": 1})
    assert req2["seq"] == 2 and "arguments" not in req2
    peer.respond(req2, body={"threads": []})
    peer.respond(req1, body={"supportsLogPoints": True})
    assert first.wait(2) == {"supportsLogPoints": True}
    assert second.wait(2) == {"threads": []}


def test_events_and_bytewise_chunking_are_handled(pair: Any) -> None:
    client, peer, events, _ = pair
    pending = client.send_request("configurationDone")
    request = peer.read()
    peer.send(
        {"seq": 1, "type": "event", "event": "output", "body": {"output": "é"}}, bytewise=True
    )
    # two messages in one send()
    both = encode_message({"seq": 2, "type": "event", "event": "process"}) + encode_message(
        {"seq": 3, "type": "response", "request_seq": request["seq"], "success": True}
    )
    peer.sock.sendall(both)
    assert pending.wait(2) == {}
    assert [e["event"] for e in events] == ["output", "process"]
    assert events[0]["body"]["output"] == "é"


def test_failed_response_raises_with_adapter_message(pair: Any) -> None:
    client, peer, _, _ = pair
    pending = client.send_request("attach", ATTACH_ARGUMENTS)
    peer.respond(peer.read(), success=False, message="Server[pid=1] is already being debugged.")
    with pytest.raises(DapError, match="attach failed: .*already being debugged") as info:
        pending.wait(2)
    assert info.value.command == "attach"
    # the raw response is still available to a caller that wants it
    assert pending.response(0)["success"] is False


def test_timeout_raises_dap_error(pair: Any) -> None:
    client, _, _, _ = pair
    with pytest.raises(DapError, match="no response to 'threads'"):
        client.request("threads", timeout=0.1)


def test_peer_close_fails_pending_requests_and_reports_once(pair: Any) -> None:
    client, peer, _, closed = pair
    pending = client.send_request("configurationDone")
    peer.read()
    peer.sock.close()
    with pytest.raises(DapError, match="connection closed"):
        pending.wait(2)
    client.join(2)
    assert client.closed
    assert closed == ["peer closed the connection"]
    with pytest.raises(DapError, match="cannot send"):
        client.send_request("threads")
    client.close()
    assert len(closed) == 1


def test_garbage_from_peer_ends_the_session(pair: Any) -> None:
    client, peer, _, closed = pair
    pending = client.send_request("initialize")
    peer.sock.sendall(b"Content-Length: 5\r\n\r\n[1,2]")  # JSON, but not an object
    with pytest.raises(DapError):
        pending.wait(2)
    client.join(2)
    assert closed and "not a JSON object" in closed[0]


def test_reverse_request_is_refused_not_ignored(pair: Any) -> None:
    client, peer, _, _ = pair
    peer.send({"seq": 7, "type": "request", "command": "runInTerminal", "arguments": {}})
    reply = peer.read()
    assert reply["type"] == "response" and reply["request_seq"] == 7
    assert reply["success"] is False and "not supported" in reply["message"]


def test_raising_event_handler_does_not_kill_the_session() -> None:
    ours, theirs = socket.socketpair()

    def boom(message: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    client = DapClient(ours, on_event=boom)
    client.start()
    peer = Peer(theirs)
    try:
        peer.send({"seq": 1, "type": "event", "event": "output"})
        pending = client.send_request("threads")
        peer.respond(peer.read())
        assert pending.wait(2) == {}
    finally:
        client.close()
        theirs.close()


def test_close_from_another_thread_unblocks_the_reader() -> None:
    ours, theirs = socket.socketpair()
    client = DapClient(ours)
    client.start()
    pending = client.send_request("initialize")
    threading.Timer(0.1, client.close).start()
    with pytest.raises(DapError, match="closed by client"):
        pending.wait(5)
    client.join(2)
    theirs.close()


def test_connect_retries_refused_then_succeeds() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def late_listen() -> None:
        server.bind(("127.0.0.1", port))
        server.listen()

    timer = threading.Timer(0.3, late_listen)
    timer.start()
    try:
        sock = connect_with_retry("127.0.0.1", port, deadline=time.monotonic() + 5)
        sock.close()
    finally:
        timer.join()
        server.close()


def test_connect_gives_up_on_refusal_after_retry_window() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    start = time.monotonic()
    with pytest.raises(DapError, match="refused"):
        connect_with_retry("127.0.0.1", port, deadline=time.monotonic() + 10, retry_for=0.3)
    assert time.monotonic() - start < 2


# -- output parsing ----------------------------------------------------------------------


def test_parser_handles_split_batched_and_multiline_output() -> None:
    parser = OutputParser()
    assert parser.feed("DETRICS:a=") == ([], [])
    assert parser.feed("1\n") == (["DETRICS:a=1"], [])
    assert parser.feed("DETRICS:a=2\nDETRICS:b=3\x1f4\r\n") == (
        ["DETRICS:a=2", "DETRICS:b=3\x1f4"],
        [],
    )
    # a str value with a newline stays one hit
    assert parser.feed("DETRICS:s=line1\nline2\n") == (["DETRICS:s=line1\nline2"], [])
    # the app's own partial print does not swallow the next hit
    assert parser.feed("partial app output") == ([], [])
    assert parser.feed("DETRICS:a=5\n") == (["DETRICS:a=5"], [])
    assert parser.feed("app line\n") == ([], ["app line"])


def test_parse_hit_splits_values_on_unit_separator() -> None:
    assert parse_hit("DETRICS:m=1\x1f\x1fx=y") == ("m", ("1", "", "x=y"))
    assert parse_hit("DETRICS:no-equals") is None
    assert parse_hit("DETRICS:=v") is None
    assert parse_hit("app=1") is None


def test_failure_reports_are_whole_lines_alone_in_their_event() -> None:
    assert failure_text("name 'x' is not defined\n") == "name 'x' is not defined"
    assert failure_text("division by zero\r\n") == "division by zero"
    for not_one in ("partial", "two\nlines\n", "\n", "DETRICS:m=1\n", ""):
        assert failure_text(not_one) is None, not_one


_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x1f"),
    max_size=12,
)


@settings(max_examples=examples(200), deadline=None)
@given(
    hits=st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True),
            st.lists(_values, min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_parser_is_independent_of_event_boundaries(
    hits: list[tuple[str, list[str]]], cuts: list[int]
) -> None:
    lines = [f"DETRICS:{name}=" + "\x1f".join(values) for name, values in hits]
    stream = "".join(line + os.linesep for line in lines)
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    parser = OutputParser()
    found: list[str] = []
    for chunk in chunks:
        got, other = parser.feed(chunk)
        found.extend(got)
        assert other == []
    assert found == lines
    parsed = [parse_hit(raw) for raw in found]
    assert [(p[0], list(p[1])) for p in parsed if p] == [(n, v) for n, v in hits]


# -- against real debugpy ----------------------------------------------------------------


def _session(port: int, events: list[dict[str, Any]]) -> DapClient:
    client = DapClient.connect("127.0.0.1", port, on_event=events.append, timeout=5)
    init = client.request("initialize", INITIALIZE_ARGUMENTS, timeout=10)
    assert init.get("supportsLogPoints") is True
    attach = client.send_request("attach", ATTACH_ARGUMENTS)
    client.request("configurationDone", timeout=10)
    assert attach.wait(5) == {} or True  # answered after configurationDone
    return client


def _set(client: DapClient, path: str, bps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = client.request(
        "setBreakpoints",
        {
            "source": {"path": path, "name": os.path.basename(path)},
            "breakpoints": bps,
            "sourceModified": False,
        },
        timeout=10,
    )
    result: list[dict[str, Any]] = body["breakpoints"]
    return result


def _wait_output(
    events: list[dict[str, Any]], predicate: Any, timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in list(events):
            if event.get("event") == "output" and predicate(event["body"]):
                return event
        time.sleep(0.02)
    raise AssertionError(f"no matching output event; got {[e.get('event') for e in events]}")


@pytest.mark.parametrize("mode", ["inproc", "adapter"])
def test_debugpy_logpoint_sequence_and_reattach(debuggee_factory: Any, mode: str) -> None:
    """Findings (a), (b), (d), (e) of the notes, as executable facts."""
    app = debuggee_factory(mode)
    path = str(app.script)
    events: list[dict[str, Any]] = []
    client = _session(app.port, events)
    try:
        # "process" comes around the configurationDone response; in adapter mode
        # it is sometimes just after it, so wait rather than assert the order.
        deadline = time.monotonic() + 5
        while "process" not in [e["event"] for e in events] and time.monotonic() < deadline:
            time.sleep(0.01)
        names = [e["event"] for e in events]
        assert "process" in names
        if mode == "adapter":
            assert "debugpySockets" in names  # only the separate adapter sends it
        results = _set(
            client,
            path,
            [{"line": app.line("loop"), "logMessage": "DETRICS:c={counter}\x1f{undefined_name}"}],
        )
        assert results[0]["verified"] is True
        # (b): a raising expression replaces the whole message, prefix included
        bad = _wait_output(events, lambda b: "is not defined" in b["output"])
        assert bad["body"]["category"] == "stdout"
        assert bad["body"]["output"].rstrip() == "name 'undefined_name' is not defined"
        _set(client, path, [{"line": app.line("loop"), "logMessage": "DETRICS:c={counter}"}])
        hit = _wait_output(events, lambda b: b["output"].startswith("DETRICS:c="))
        # (e): no thread id, line or source in a logpoint's output event
        assert hit["body"]["category"] == "stdout"
        assert hit["body"].get("source") in ({}, None)
        assert not {"line", "threadId", "variablesReference"} & set(hit["body"])
    finally:
        client.close()
    # (d): after a plain close the port takes a fresh session (after a short grace
    # for the separate adapter, which refuses a client while it finalises).
    time.sleep(0.25 if mode == "adapter" else 0)
    events2: list[dict[str, Any]] = []
    client = _session(app.port, events2)
    try:
        _set(client, path, [{"line": app.line("loop"), "logMessage": "DETRICS:again={counter}"}])
        _wait_output(events2, lambda b: b["output"].startswith("DETRICS:again="))
    finally:
        client.close()


def test_debugpy_breakpoint_answers_for_no_code_line_and_missing_file(debuggee: Any) -> None:
    """Finding (c): a line without code moves up to the previous code line; a
    missing file is unverified with a message."""
    events: list[dict[str, Any]] = []
    client = _session(debuggee.port, events)
    try:
        moved = _set(
            client,
            str(debuggee.script),
            [{"line": debuggee.line("comment"), "logMessage": "DETRICS:x={1}"}],
        )
        assert moved[0]["verified"] is True
        assert moved[0]["line"] == debuggee.line("loop")  # the preceding line with code
        missing = _set(
            client, "/nonexistent/nowhere.py", [{"line": 3, "logMessage": "DETRICS:x={1}"}]
        )
        assert missing[0]["verified"] is False
        assert missing[0]["message"] == "Breakpoint in file that does not exist."
    finally:
        client.close()
