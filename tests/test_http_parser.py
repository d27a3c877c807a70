"""The control plane's request parser: limits, malformed input, and a property run."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from detrix_auto.control.http import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    HttpError,
    json_response,
    parse_request,
)


def test_parses_a_complete_request_and_reports_bytes_used():
    raw = b"POST /detrix/wake?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}NEXT"
    request, used = parse_request(raw)
    assert request is not None
    assert (request.method, request.path, request.body) == ("POST", "/detrix/wake", b"{}")
    assert request.header("HOST") == "localhost"
    assert raw[used:] == b"NEXT"
    assert request.keep_alive


@pytest.mark.parametrize(
    "partial",
    [b"", b"GET /detrix/status HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"],
)
def test_incomplete_request_asks_for_more(partial):
    assert parse_request(partial) == (None, 0)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET\r\n\r\n", 400),
        (b"GET /x HTTP/2.0\r\n\r\n", 400),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"G(T /x HTTP/1.1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
        (
            b"GET /x HTTP/1.1\r\n"
            + b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
            + b"\r\n",
            431,
        ),
        (b"GET /" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_malformed_requests_are_refused_with_a_4xx(raw, status):
    with pytest.raises(HttpError) as info:
        parse_request(raw)
    assert info.value.status == status


def test_an_endless_request_line_is_refused_before_it_ends():
    with pytest.raises(HttpError):
        parse_request(b"GET /" + b"a" * (MAX_REQUEST_LINE + 1))


def test_http10_closes_unless_asked_to_keep_alive():
    request, _ = parse_request(b"GET / HTTP/1.0\r\n\r\n")
    assert request is not None and not request.keep_alive
    request, _ = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert request is not None and not request.keep_alive


def test_json_response_is_well_formed():
    data = json_response(401, {"error": "x"}, keep_alive=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"Content-Length: %d" % len(body) in head
    assert b"WWW-Authenticate: Bearer" in head
    assert b"Connection: close" in head


@settings(max_examples=examples(3000), deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_parser(data):
    try:
        request, used = parse_request(data)
    except HttpError as exc:
        assert 400 <= exc.status < 500
        return
    assert 0 <= used <= len(data)
    if request is not None:
        assert request.path.startswith("/")


_method = st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "GE T", ""])
_path = st.sampled_from(["/detrix/status", "/detrix/wake", "/", "/x?y=z", "nope", "/%00"])
_header = st.tuples(
    st.sampled_from(["Host", "Content-Length", "Origin", "X", "Bad Name", "Content-Type"]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=20),
)


@settings(max_examples=examples(2000), deadline=None)
@given(_method, _path, st.lists(_header, max_size=5), st.binary(max_size=50))
def test_structured_requests_parse_or_fail_cleanly(method, path, headers, body):
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw = head.encode("latin-1") + b"\r\n" + body
    try:
        parse_request(raw)
    except HttpError as exc:
        assert 400 <= exc.status < 500
