"""The daemon's connection API (CONTRACT.md section 2) end to end, against real debugpy.

Registrations go through the HTTP API with urllib, as a client would send them;
hits are read back from the daemon object (the metrics and events routes have
their own file, test_metrics_api.py).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest

from detrix_auto.devdaemon import (
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
    STATUS_FAILED,
    DevDaemon,
    MetricHit,
    MetricSpec,
    connection_id_for,
    log_message_for,
)

API = "/api/v1/connections"


def _metric(debuggee: Any, name: str = "counter", *exprs: str, **kw: Any) -> MetricSpec:
    return MetricSpec(
        name, str(debuggee.script), debuggee.line("loop"), exprs or ("counter",), **kw
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _raw(dd: DevDaemon, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", dd.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _ints(hits: list[MetricHit]) -> list[int]:
    return [int(h.values[0]) for h in hits]


# -- health and the happy path ---------------------------------------------------------


def test_health(api: Any) -> None:
    reply = api("GET", "/health")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert body["service"] == "detrix" and body["status"] == "ok"
    assert isinstance(body["uptimeSeconds"], int)
    assert body["adapterConnected"] is False


@pytest.mark.parametrize("mode", ["inproc", "adapter"])
def test_register_attaches_before_answering_and_reports_hits(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee_factory: Any, mode: str
) -> None:
    app = debuggee_factory(mode)
    dd.add_metric(_metric(app))
    body = reg_body(app, safeMode=True)
    reply = api("POST", API, body)
    assert reply.status == 201, reply.body
    doc = reply.json()
    expected = hashlib.sha256(b"devdaemon-test|python|/srv/app|test-host").digest()[:16].hex()
    assert (
        doc["connectionId"]
        == expected
        == connection_id_for("devdaemon-test", "python", "/srv/app", "test-host")
    )
    assert doc["status"] == "created"
    conn = doc["connection"]
    assert conn["status"] == STATUS_CONNECTED  # attach done before the 201
    assert (conn["port"], conn["pid"], conn["safeMode"], conn["workspaceRoot"]) == (
        app.port,
        app.proc.pid,
        True,
        "/srv/app",
    )
    # setBreakpoints was also answered before the 201
    results = dd.breakpoint_results(expected)
    assert [(r["metric"], r["verified"], r["line"]) for r in results] == [
        ("counter", True, app.line("loop"))
    ]

    values = _ints(dd.wait_for_hits("counter", 5, timeout=10))
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(
        h.connection_id == expected and h.raw.startswith("DETRICS:counter=")
        for h in dd.hits("counter")
    )

    assert api("GET", f"{API}/{expected}").json()["status"] == STATUS_CONNECTED
    assert [c["connectionId"] for c in api("GET", API).json()] == [expected]
    assert api("GET", "/health").json()["adapterConnected"] is True
    assert (dd.registrations, dd.attaches) == (1, 1)


def test_two_expressions_are_split_on_unit_separator(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    spec = _metric(debuggee, "pair", "counter", "counter * 2", "label")
    assert log_message_for(spec) == "DETRICS:pair={counter}\x1f{counter * 2}\x1f{label}"
    dd.add_metric(spec)
    assert api("POST", API, reg_body(debuggee)).status == 201
    for hit in dd.wait_for_hits("pair", 3):
        n, doubled, label = hit.values
        assert int(doubled) == 2 * int(n) and label == "tick"


def test_metric_added_after_attach_and_removed_again(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    seen: list[MetricHit] = []
    dd.on_hit(seen.append)
    cid = api("POST", API, reg_body(debuggee)).json()["connectionId"]
    assert dd.breakpoint_results(cid) == []
    dd.add_metric(_metric(debuggee, "late"))
    dd.wait_for_hits("late", 2)
    # a second metric on another line of the same file: one setBreakpoints with both
    dd.add_metric(
        MetricSpec("other", str(debuggee.script), debuggee.line("comment") + 1, ("label",))
    )
    dd.wait_for_hits("other", 1)
    assert sorted(r["metric"] for r in dd.breakpoint_results(cid)) == ["late", "other"]
    dd.wait_for_hits("late", len(dd.hits("late")) + 1)  # "late" survived the re-send

    dd.remove_metric("late")
    assert [r["metric"] for r in dd.breakpoint_results(cid)] == ["other"]
    time.sleep(0.15)  # let in-flight events land
    frozen = len(dd.hits("late"))
    dd.wait_for_hits("other", len(dd.hits("other")) + 3)  # the app kept running
    assert len(dd.hits("late")) == frozen
    assert {h.metric for h in seen} == {"late", "other"}  # the callback saw them too
    with pytest.raises(KeyError):
        dd.remove_metric("late")


def test_metric_for_one_connection_only(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee_factory: Any
) -> None:
    a, b = debuggee_factory(), debuggee_factory()
    id_a = api("POST", API, reg_body(a, name="a")).json()["connectionId"]
    id_b = api("POST", API, reg_body(b, name="b")).json()["connectionId"]
    dd.add_metric(_metric(a, "only_b", connection_id=id_b))
    dd.wait_for_hits("only_b", 3)
    assert {h.connection_id for h in dd.hits("only_b")} == {id_b}
    assert dd.breakpoint_results(id_a) == []


def test_no_code_line_and_missing_file_are_reported(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    dd.add_metric(MetricSpec("moved", str(debuggee.script), debuggee.line("comment"), ("counter",)))
    dd.add_metric(MetricSpec("ghost", "/nonexistent/ghost.py", 3, ("1",)))
    cid = api("POST", API, reg_body(debuggee)).json()["connectionId"]
    by_metric = {r["metric"]: r for r in dd.breakpoint_results(cid)}
    assert by_metric["moved"]["verified"] is True
    assert by_metric["moved"]["requestedLine"] == debuggee.line("comment")
    assert by_metric["moved"]["line"] == debuggee.line("loop")  # moved up to code
    assert by_metric["ghost"]["verified"] is False
    assert "does not exist" in by_metric["ghost"]["message"]
    dd.wait_for_hits("moved", 1)


def test_app_output_goes_to_output_and_diagnostics_not_hits(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any, until: Any
) -> None:
    dd.add_metric(_metric(debuggee))
    cid = api("POST", API, reg_body(debuggee)).json()["connectionId"]
    until(lambda: any(line.startswith("app warns") for line in dd.diagnostics(cid)), timeout=10)
    until(lambda: any(line.startswith("app says") for line in dd.output(cid)), timeout=10)
    values = _ints(dd.wait_for_hits("counter", 25))
    assert values == list(range(values[0], values[0] + len(values)))  # none lost or mangled
    assert {h.metric for h in dd.hits()} == {"counter"}
    dd.disconnect(cid)
    assert dd.connections[cid].status == STATUS_DISCONNECTED
    with pytest.raises(KeyError):
        dd.disconnect("nope")
    with pytest.raises(KeyError):
        dd.diagnostics("nope")


def test_failing_expression_text_lands_in_output(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    dd.add_metric(_metric(debuggee, "broken", "undefined_name"))
    cid = api("POST", API, reg_body(debuggee)).json()["connectionId"]
    deadline = time.monotonic() + 10
    while "name 'undefined_name' is not defined" not in dd.output(cid):
        assert time.monotonic() < deadline, dd.output(cid)
        time.sleep(0.02)
    assert dd.hits("broken") == []
    with pytest.raises(TimeoutError, match=r"'broken': 0 of 1 hit.*is not defined"):
        dd.wait_for_hits("broken", 1, timeout=0.2)


# -- re-registration ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inproc", "adapter"])
def test_unregister_then_register_again_on_the_same_port(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee_factory: Any, mode: str
) -> None:
    app = debuggee_factory(mode)
    dd.add_metric(_metric(app))
    cid = api("POST", API, reg_body(app)).json()["connectionId"]
    dd.wait_for_hits("counter", 2)

    reply = api("DELETE", f"{API}/{cid}")
    assert (reply.status, reply.body) == (204, b"")
    row = api("GET", f"{API}/{cid}").json()
    assert row["status"] == STATUS_DISCONNECTED  # the row is kept
    assert api("GET", "/health").json()["adapterConnected"] is False
    time.sleep(0.1)
    dd.clear_hits()
    time.sleep(0.2)
    assert dd.hits() == []  # socket closed: nothing arrives any more

    # at once, as a sleep followed by a wake would do
    again = api("POST", API, reg_body(app))
    assert again.status == 201, again.body
    assert again.json()["connectionId"] == cid
    values = _ints(dd.wait_for_hits("counter", 2))  # the stored metric came back
    assert min(values) > 2
    assert (dd.registrations, dd.unregistrations, dd.attaches) == (2, 1, 2)


def test_a_reattach_to_the_separate_adapter_waits_out_the_grace(
    reg_body: Any, http: Any, debuggee_factory: Any
) -> None:
    """Why ``reattach_grace`` exists (notes, finding d): debugpy's separate adapter
    refuses a client that attaches within ~40 ms of the last one closing ("already
    being debugged") and its listener then never answers again. That window is
    debugpy's and only a timing can show it, so this checks what the daemon does
    about it, by lower bounds alone (load only makes them easier to meet): the
    re-attach reaches the adapter no sooner than the grace after the close, and
    works."""
    grace = 0.3
    app = debuggee_factory("adapter")
    with DevDaemon(attach_timeout=10.0, reattach_grace=grace) as daemon:
        cid = http(daemon.url, "POST", API, reg_body(app)).json()["connectionId"]
        assert http(daemon.url, "DELETE", f"{API}/{cid}").status == 204
        closed = time.monotonic()  # the socket was closed before the 204 was sent
        again = http(daemon.url, "POST", API, reg_body(app))
        assert again.status == 201, again.json()
        assert time.monotonic() - closed >= grace
        assert again.json()["connectionId"] == cid
        assert daemon.attaches == 2


def test_already_connected_id_is_returned_without_a_second_attach(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    first = api("POST", API, reg_body(debuggee)).json()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(api("POST", API, reg_body(debuggee))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [r.status for r in results] == [201] * 4
    assert {r.json()["connectionId"] for r in results} == {first["connectionId"]}
    assert dd.attaches == 1 and dd.registrations == 5


def test_concurrent_first_registrations_attach_once(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(api("POST", API, reg_body(debuggee))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [r.status for r in results] == [201] * 4
    assert dd.attaches == 1


@pytest.mark.parametrize("mode", ["inproc", "adapter"])
def test_dead_peer_marks_the_connection_disconnected(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee_factory: Any, until: Any, mode: str
) -> None:
    # inproc: the socket drops; adapter: the adapter sends "terminated" and waits
    debuggee = debuggee_factory(mode)
    cid = api("POST", API, reg_body(debuggee)).json()["connectionId"]
    debuggee.proc.kill()
    debuggee.proc.wait(10)
    until(lambda: dd.connections[cid].status == STATUS_DISCONNECTED, timeout=10)
    assert "lost" in (dd.connections[cid].last_error or "")
    assert api("GET", "/health").json()["adapterConnected"] is False
    # registering again now fails: nothing listens on the port any more
    reply = api("POST", API, reg_body(debuggee))
    assert reply.status == 500 and "error" in reply.json()
    assert dd.connections[cid].status == STATUS_FAILED


# -- service-level refusals: 400 JSON (the real daemon answers 500) -----------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"host": ""},
        {"name": ""},
        {"workspaceRoot": ""},
        {"language": ""},
        {"language": "go"},
        {"port": 80},
        {"port": 1023},
    ],
)
def test_values_the_daemon_cannot_use_are_400_json(
    api: Any, reg_body: Any, overrides: dict[str, Any]
) -> None:
    reply = api("POST", API, reg_body(None, **overrides))
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert isinstance(body["error"], str) and body["error"]
    assert (body["errorCode"], body["errorType"], body["retryable"]) == (
        3001,
        "CONFIG_INVALID",
        False,
    )


def test_language_is_case_insensitive_and_hashed_lower_case(
    api: Any, reg_body: Any, debuggee: Any
) -> None:
    reply = api("POST", API, reg_body(debuggee, language="Python"))
    assert reply.status == 201, reply.body
    assert reply.json()["connectionId"] == connection_id_for(
        "devdaemon-test", "python", "/srv/app", "test-host"
    )
    assert reply.json()["connection"]["language"] == "python"


def test_nothing_listening_is_500_and_failed_row(dd: DevDaemon, api: Any, reg_body: Any) -> None:
    port = _free_port()
    start = time.monotonic()
    reply = api("POST", API, reg_body(None, port=port))
    assert reply.status == 500
    assert "refused" in reply.json()["error"]
    assert reply.json()["errorType"] == "ADAPTER_ERROR" and reply.json()["retryable"] is True
    assert time.monotonic() - start < 5  # refusals are retried only briefly
    (row,) = dd.connections.values()
    assert row.status == STATUS_FAILED and row.last_error


def test_silent_dap_peer_times_out_with_500(reg_body: Any, http: Any) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        with DevDaemon(attach_timeout=0.5) as daemon:
            start = time.monotonic()
            reply = http(daemon.url, "POST", API, reg_body(None, port=listener.getsockname()[1]))
            assert reply.status == 500
            assert "initialize" in reply.json()["error"]
            assert time.monotonic() - start < 3
    finally:
        listener.close()


# -- malformed requests: 4xx JSON --------------------------------------------------------


def test_content_type_must_be_json(api: Any, reg_body: Any) -> None:
    import json

    data = json.dumps(reg_body(None)).encode()
    for headers in ({"Content-Type": "text/plain"}, {}):
        reply = api("POST", API, raw=data, headers=headers)
        assert reply.status == 415, headers
        assert "error" in reply.json()
    past = json.dumps(reg_body(None, name="")).encode()
    ok = api("POST", API, raw=past, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 400  # got past the media check to the service check
    assert "name must not be empty" in ok.json()["error"]


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b"", b"[" * 100_000])
def test_malformed_json_is_400(api: Any, raw: bytes) -> None:
    reply = api("POST", API, raw=raw, headers={"Content-Type": "application/json"})
    assert reply.status == (413 if len(raw) > 64 * 1024 else 400)
    assert reply.json()["errorType"] == "CONFIG_INVALID"
    deep = api("POST", API, raw=b"[" * 60_000, headers={"Content-Type": "application/json"})
    assert deep.status == 400 and "malformed JSON" in deep.json()["error"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(port="5678"),
        lambda b: b.update(port=True),
        lambda b: b.update(port=70000),
        lambda b: b.update(port=-1),
        lambda b: b.update(port=5678.5),
        lambda b: b.pop("name"),
        lambda b: b.update(host=None),
        lambda b: b.update(pid="1"),
        lambda b: b.update(safeMode="yes"),
        lambda b: b.update(hostname=5),
    ],
)
def test_wrong_field_types_are_422(api: Any, reg_body: Any, mutate: Any) -> None:
    body = reg_body(None)
    mutate(body)
    reply = api("POST", API, body)
    assert reply.status == 422, body
    assert "error" in reply.json()


@pytest.mark.parametrize("document", [[], "x", 1, None])
def test_non_object_body_is_422(api: Any, document: Any) -> None:
    import json

    reply = api(
        "POST", API, raw=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )
    assert reply.status == 422


def test_huge_body_is_refused_without_reading_it(dd: DevDaemon) -> None:
    head = (
        f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    response = _raw(dd, head + b"{" * 1000)
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in rest
    assert b'"error"' in rest.split(b"\r\n\r\n", 1)[1]


def test_bad_content_length_and_chunked_are_refused(dd: DevDaemon) -> None:
    bad = _raw(dd, f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".encode())
    assert bad.startswith(b"HTTP/1.1 400 ")
    chunked = _raw(
        dd,
        f"POST {API} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
    )
    # As the control plane answers it (test_http_rules.py compares the two).
    assert chunked.startswith(b"HTTP/1.1 400 ") and b'"error"' in chunked


def test_protocol_errors_are_json_not_html(dd: DevDaemon) -> None:
    for request in (b"GARBAGE\r\n\r\n", b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n"):
        response = _raw(dd, request)
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json" in head, response
        assert body.startswith(b'{"error"')
        assert b"<html" not in response.lower()


# -- routing -----------------------------------------------------------------------------


def test_unknown_paths_are_404_json(api: Any) -> None:
    for method, path in [
        ("GET", "/"),
        ("GET", "/api/v1/nope"),
        ("POST", "/health/x"),
        ("GET", f"{API}/a/b"),
    ]:
        reply = api(method, path, raw=b"{}" if method == "POST" else None)
        assert reply.status == 404, (method, path)
        assert reply.json()["error"]


def test_unknown_connection_is_404_json(api: Any) -> None:
    for method in ("GET", "DELETE"):
        reply = api(method, f"{API}/{'0' * 32}")
        assert reply.status == 404
        assert "not found" in reply.json()["error"]


def test_wrong_methods_are_405_json(api: Any) -> None:
    for method, path in [
        ("PUT", API),
        ("DELETE", API),
        ("POST", "/health"),
        ("PATCH", f"{API}/x"),
        ("POST", f"{API}/x"),
    ]:
        reply = api(method, path, raw=b"{}" if method in ("PUT", "POST", "PATCH") else None)
        assert reply.status == 405, (method, path)
        assert reply.json()["error"]


def test_connection_id_in_path_is_url_decoded(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    cid = api("POST", API, reg_body(debuggee)).json()["connectionId"]
    encoded = "".join(f"%{ord(ch):02X}" for ch in cid)
    assert api("GET", f"{API}/{encoded}").json()["connectionId"] == cid
    assert api("DELETE", f"{API}/{quote(cid)}").status == 204
    assert dd.unregistrations == 1


# -- auth --------------------------------------------------------------------------------


def test_token_guards_every_route_but_health(reg_body: Any, http: Any) -> None:
    """The daemon's token opens every route; a wrong one is refused, JSON 401.

    A caller of our own user needs no token (the kernel vouches for it, as for
    the control plane); other users are tested as other users in test_privacy.py.
    """
    with DevDaemon(token="s3cret") as daemon:
        assert http(daemon.url, "GET", "/health").status == 200  # health is open
        for headers in (
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer s3cret x"},
        ):
            for method, path, body in [
                ("POST", API, reg_body(None)),
                ("GET", API, None),
                ("DELETE", f"{API}/x", None),
                ("GET", f"{API}/x", None),
                ("GET", "/api/v1/metrics", None),
                ("GET", "/api/v1/events", None),
                ("GET", "/api/v1/status", None),
            ]:
                reply = http(daemon.url, method, path, body, headers=headers)
                assert reply.status == 401, (headers, method, path)
                assert "invalid token" in reply.json()["error"]
                assert reply.json()["errorType"] == "UNAUTHORIZED"
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        good = {"Authorization": "Bearer s3cret"}
        assert http(daemon.url, "GET", API, headers=good).json() == []
        assert http(daemon.url, "GET", API).json() == []  # our own user, no token
        # past auth: the service check answers
        assert http(daemon.url, "POST", API, reg_body(None, name=""), headers=good).status == 400


def test_without_a_token_bearer_headers_are_ignored(dd: DevDaemon, api: Any) -> None:
    """A token-less daemon (tests, a bare ``-m`` run) serves its own user whatever an
    app sends: an app presents its own DETRIX_TOKEN when it registers."""
    assert api("GET", API, headers={"Authorization": "Bearer the-apps-token"}).status == 200


def test_require_token_refuses_our_own_user_too(http: Any) -> None:
    with DevDaemon(token="s3cret", require_token=True) as daemon:
        refused = http(daemon.url, "GET", API)
        assert refused.status == 401
        assert "requires a token" in refused.json()["error"]
        assert (
            http(daemon.url, "GET", API, headers={"Authorization": "Bearer s3cret"}).status == 200
        )


def test_app_tokens_open_the_registration_routes_only(
    reg_body: Any, http: Any, debuggee: Any
) -> None:
    with DevDaemon(token="owner", app_tokens=["app-token"], require_token=True) as daemon:
        app = {"Authorization": "Bearer app-token"}
        created = http(daemon.url, "POST", API, reg_body(debuggee), headers=app)
        assert created.status == 201, created.body
        cid = created.json()["connectionId"]
        assert http(daemon.url, "GET", f"{API}/{cid}", headers=app).status == 200
        for method, path in [
            ("GET", API),
            ("POST", f"{API}/cleanup"),
            ("GET", "/api/v1/metrics"),
            ("GET", "/api/v1/events"),
            ("GET", "/api/v1/status"),
        ]:
            assert http(daemon.url, method, path, headers=app).status == 401, (method, path)
        assert http(daemon.url, "DELETE", f"{API}/{cid}", headers=app).status == 204


# -- robustness ------------------------------------------------------------------------


def test_idle_client_does_not_block_others_and_is_cut_after_timeout(
    dd: DevDaemon, api: Any
) -> None:
    idle = socket.create_connection(("127.0.0.1", dd.port))
    slow = socket.create_connection(("127.0.0.1", dd.port))
    try:
        slow.sendall(
            b"POST /api/v1/connections HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"
        )  # never finished
        start = time.monotonic()
        for _ in range(5):
            assert api("GET", "/health", timeout=2).status == 200
        assert time.monotonic() - start < 1.5
        idle.settimeout(5)
        assert idle.recv(1) == b""  # request_timeout (1 s in the fixture) closed it
        assert time.monotonic() - start < 3
    finally:
        idle.close()
        slow.close()


def test_keep_alive_carries_several_requests_including_204(
    dd: DevDaemon, api: Any, reg_body: Any, debuggee: Any
) -> None:
    import json

    conn = http.client.HTTPConnection("127.0.0.1", dd.port, timeout=15)
    try:
        conn.request(
            "POST", API, json.dumps(reg_body(debuggee)), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        cid = json.loads(response.read())["connectionId"]
        assert response.status == 201
        conn.request("DELETE", f"{API}/{cid}")
        response = conn.getresponse()
        assert (response.status, response.read()) == (204, b"")
        conn.request("GET", f"{API}/{cid}")
        response = conn.getresponse()
        assert (
            response.status == 200 and json.loads(response.read())["status"] == STATUS_DISCONNECTED
        )
        conn.request("GET", "/nope")
        response = conn.getresponse()
        assert response.status == 404 and json.loads(response.read())["error"]
    finally:
        conn.close()


def test_stop_closes_dap_sockets_and_is_idempotent(reg_body: Any, http: Any, debuggee: Any) -> None:
    daemon = DevDaemon().start()
    url = daemon.url
    cid = http(url, "POST", API, reg_body(debuggee)).json()["connectionId"]
    daemon.stop()
    daemon.stop()
    assert daemon.connections[cid].status == STATUS_DISCONNECTED
    with pytest.raises(OSError):
        http(url, "GET", "/health", timeout=2)
    # the debuggee's port takes a new daemon's attach right away
    with DevDaemon() as second:
        assert http(second.url, "POST", API, reg_body(debuggee)).status == 201


def test_metric_spec_validation() -> None:
    for bad in [
        dict(name="", path="a.py", line=1, expressions=("x",)),
        dict(name="a=b", path="a.py", line=1, expressions=("x",)),
        dict(name="a%s", path="a.py", line=1, expressions=("x",)),
        dict(name="m", path="a.py", line=0, expressions=("x",)),
        dict(name="m", path="a.py", line=True, expressions=("x",)),
        dict(name="m", path="a.py", line=1, expressions=()),
        dict(name="m", path="a.py", line=1, expressions=("{x",)),
        dict(name="m", path="a.py", line=1, expressions=("'}'",)),
        dict(name="m", path="a.py", line=1, expressions=("a\nb",)),
        dict(name="m", path="", line=1, expressions=("x",)),
    ]:
        with pytest.raises(ValueError):
            MetricSpec(**bad)  # type: ignore[arg-type]
    assert MetricSpec("m", "a.py", 1, ["x", "y"]).expressions == ("x", "y")  # type: ignore[arg-type]
    assert MetricSpec("m", "a.py", 1, "x").expressions == ("x",)  # type: ignore[arg-type]
    # balanced braces are Python: a set, a dict, an f-string
    assert MetricSpec("m", "a.py", 1, ("{x}", "f'{x:.2f}'")).expressions == ("{x}", "f'{x:.2f}'")


def test_base_path_prefix_and_request_log(http: Any, reg_body: Any) -> None:
    with DevDaemon(base_path="/detrix/") as daemon:
        assert daemon.url.endswith("/detrix")
        assert http(daemon.url, "GET", "/health").json()["service"] == "detrix"
        assert http(daemon.url, "GET", API).json() == []
        root = daemon.url[: -len("/detrix")]
        assert http(root, "GET", "/health").status == 404
        assert http(root, "GET", "/detrixhealth").status == 404
        assert daemon.request_log == [
            ("GET", "/detrix/health", 200),
            ("GET", "/detrix" + API, 200),
            ("GET", "/health", 404),
            ("GET", "/detrixhealth", 404),
        ]


def test_module_runs_in_the_foreground_and_prints_its_url(tmp_path: Any, http: Any) -> None:
    import os
    import select
    import signal
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n\n")
    token_file.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "detrix_auto.devdaemon", "--token-file", str(token_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, proc.stderr.read() if proc.stderr else ""
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert http(url, "GET", "/health").status == 200
        assert http(url, "GET", API, headers={"Authorization": "Bearer nope"}).status == 401
        assert http(url, "GET", API, headers={"Authorization": "Bearer t0k3n"}).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "requests need `Authorization: Bearer <token>`" in err, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
