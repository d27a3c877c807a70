"""The metrics and events API (issue 15), end to end: an untouched app started with
``DETRIX_ENABLE=1``, woken through its control plane, observed through REST only.

The first test is the original project's agent simulation
(``clients/python/examples/test_wake.py`` in flashus/detrix): list the
connections, add an f-string metric and a three-expression metric, poll the
events with ``since``, and check the values are the app's real ones.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from support import (
    TRADE_BOT,
    TRADE_BOT_LINES,
    TRADE_BOT_SYMBOLS,
    http_json,
    metric_body,
    wait_until,
)

from detrix_auto.devdaemon import STATUS_CONNECTED, DevDaemon


class Rest:
    """The daemon's REST API through the stdlib client, as a script would call it."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(self.url, method, path, body, headers=self.headers)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        code, answer = self(method, path, body)
        assert code == status, (method, path, code, answer)
        return answer


def wake(app: Any, daemon: DevDaemon) -> str:
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body
    return str(body["connection_id"])


def poll(rest: Rest, metric_id: int, since: int, want: int, timeout: float = 20) -> list[dict]:
    """Events of a metric since ``since`` until ``want`` arrived, oldest first."""
    seen: dict[int, dict] = {}

    def enough() -> bool:
        for event in rest.ok("GET", f"/api/v1/events?metricId={metric_id}&limit=10&since={since}"):
            seen[event["timestamp"]] = event
        return len(seen) >= want

    wait_until(enough, timeout=timeout)
    return [seen[stamp] for stamp in sorted(seen)]


@pytest.fixture
def bot(spawn: Any) -> Any:
    return spawn(TRADE_BOT)


@pytest.fixture
def open_daemon() -> Any:
    with DevDaemon(attach_timeout=15) as daemon:
        yield daemon


def test_agent_simulation_of_the_original_project(bot: Any, open_daemon: DevDaemon) -> None:
    rest = Rest(open_daemon.url)
    health = rest.ok("GET", "/health")
    assert health["service"] == "detrix"
    cid = wake(bot, open_daemon)

    (connection,) = [c for c in rest.ok("GET", "/api/v1/connections") if c["connectionId"] == cid]
    assert connection["status"] == STATUS_CONNECTED
    assert connection["port"] == bot.status()["debug_port"]

    session_start = time.time_ns() // 1000
    order = rest.ok(
        "POST",
        "/api/v1/metrics",
        metric_body(cid, "order_info", "order", "f'Order: {symbol} x{quantity} @ ${price:.2f}'"),
        status=201,
    )
    pnl = rest.ok(
        "POST",
        "/api/v1/metrics",
        metric_body(cid, "pnl_data", "pnl", "f'P&L: ${pnl:.2f} (iter {iteration})'"),
        status=201,
    )
    details = rest.ok(
        "POST",
        "/api/v1/metrics",
        metric_body(cid, "order_details", "sleep", "symbol", "quantity", "price"),
        status=201,
    )
    ids = [order["metricId"], pnl["metricId"], details["metricId"]]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 3
    assert all(m["dapConfirmed"] for m in (order, pnl, details))
    assert details["metric"]["expressions"] == ["symbol", "quantity", "price"]
    assert details["metric"]["location"] == {
        "file": str(bot.script),
        "line": TRADE_BOT_LINES["sleep"],
    }

    for event in poll(rest, ids[0], session_start, 3):
        assert event["metricName"] == "order_info" and event["connectionId"] == cid
        assert event["timestamp"] >= session_start and event["error"] is None
        (value,) = event["values"]
        text = value["typedValue"]["stringValue"]
        match = re.fullmatch(r"Order: (\w+) x(\d) @ \$(\d+\.\d\d)", text)
        assert match, text
        assert float(match.group(3)) == int(match.group(2)) * 12.5  # price = quantity * 12.5
        assert value["valueJson"] == f'"{text}"'  # always valid JSON here

    for event in poll(rest, ids[1], session_start, 3):
        text = event["values"][0]["typedValue"]["stringValue"]
        match = re.fullmatch(r"P&L: \$(-?\d+\.\d\d) \(iter (\d+)\)", text)
        assert match, text
        assert float(match.group(1)) == int(match.group(2)) % 7 - 3.0

    for event in poll(rest, ids[2], session_start, 3):
        symbol, quantity, price = event["values"]
        assert [v["expression"] for v in event["values"]] == ["symbol", "quantity", "price"]
        assert symbol["typedValue"] == {"stringValue": symbol["typedValue"]["stringValue"]}
        assert symbol["typedValue"]["stringValue"] in TRADE_BOT_SYMBOLS
        assert quantity["valueJson"] in {"1", "2", "3", "4", "5"}
        assert price["typedValue"]["numericValue"] == quantity["typedValue"]["numericValue"] * 12.5

    # newest first, limit honoured, since inclusive
    events = rest.ok("GET", f"/api/v1/events?metricId={ids[2]}&limit=2&since=0")
    stamps = [e["timestamp"] for e in events]
    assert len(events) == 2 and stamps == sorted(stamps, reverse=True)
    again = rest.ok("GET", f"/api/v1/events?metricId={ids[2]}&limit=100&since={stamps[-1]}")
    assert stamps[-1] in [e["timestamp"] for e in again]

    assert bot.request("POST", "/detrix/sleep")[0] == 200


def test_typed_values_errors_and_the_read_routes(bot: Any, open_daemon: DevDaemon) -> None:
    rest = Rest(open_daemon.url)
    cid = wake(bot, open_daemon)
    typed = rest.ok(
        "POST",
        "/api/v1/metrics",
        metric_body(cid, "typed", "sleep", "flag", "None", "[quantity, 1]", "entry", "price"),
        status=201,
    )
    broken = rest.ok(
        "POST",
        "/api/v1/metrics",
        metric_body(cid, "broken", "order", "no_such_name + 1"),
        status=201,
    )
    event = poll(rest, typed["metricId"], 0, 3)[0]
    flag, none, listed, entry, price = event["values"]
    assert flag["typedValue"] in ({"boolValue": True}, {"boolValue": False})
    assert flag["valueJson"] in ("true", "false")
    assert (none["valueJson"], none["typedValue"]) == ("null", None)
    assert listed["typedValue"] is None and listed["valueJson"].startswith("[")
    # a dict's str() is not JSON: a string, encoded as JSON
    assert entry["typedValue"]["stringValue"].startswith("{'symbol': ")
    assert "numericValue" in price["typedValue"]

    (failure,) = poll(rest, broken["metricId"], 0, 1)[:1]
    assert failure["values"] == []
    assert failure["error"] == {
        "error": True,
        "errorCode": "EVAL_ERROR",
        "errorType": "NameError",
        "errorMessage": "name 'no_such_name' is not defined",
        "traceback": None,
    }

    # the other read routes
    value = rest.ok("GET", f"/api/v1/metrics/{typed['metricId']}/value")
    assert value["metricName"] == "typed" and value["value"] in (True, False)
    assert value["isError"] is False
    assert rest.ok("GET", f"/api/v1/metrics/{broken['metricId']}/value")["isError"] is True
    history = rest.ok("GET", f"/api/v1/metrics/{typed['metricId']}/history?limit=2")
    assert len(history["events"]) == 2 and history["hasMore"] is True
    assert history["totalCount"] >= 2
    by_name = rest.ok("GET", "/api/v1/events?metricName=typed&limit=3")
    assert {e["metricId"] for e in by_name} == {typed["metricId"]}
    listing = rest.ok("GET", f"/api/v1/metrics?connectionId={cid}")
    assert listing["total"] == 2 and [m["name"] for m in listing["metrics"]] == ["broken", "typed"]
    assert rest.ok("GET", f"/api/v1/metrics/{typed['metricId']}")["hitCount"] >= 1
    everything = rest.ok("GET", "/api/v1/events?limit=5")
    assert len(everything) == 5


def test_update_toggle_delete_and_the_same_location(bot: Any, open_daemon: DevDaemon) -> None:
    rest = Rest(open_daemon.url)
    cid = wake(bot, open_daemon)
    body = metric_body(cid, "qty", "sleep", "quantity")
    created = rest.ok("POST", "/api/v1/metrics", body, status=201)
    mid = created["metricId"]
    # the same connection and file:line: the existing metric, unchanged
    again = rest.ok("POST", "/api/v1/metrics", {**body, "name": "other"}, status=200)
    assert (again["metricId"], again["name"], again["status"]) == (mid, "qty", "existing")
    assert "already sits at" in again["warnings"][0]
    # the same name elsewhere on the connection: refused, since a hit names its metric
    code, clash = rest("POST", "/api/v1/metrics", metric_body(cid, "qty", "order", "symbol"))
    assert code == 409 and clash["errorType"] == "METRIC_DUPLICATE"
    # "FILE#LINE" locations, as the real daemon takes them
    string_form = metric_body(cid, "sym", "order", "symbol")
    string_form["location"] = f"@./app.py#{TRADE_BOT_LINES['order']}"
    sym = rest.ok("POST", "/api/v1/metrics", string_form, status=201)
    assert sym["metric"]["location"]["file"] == str(bot.script)

    updated = rest.ok("PUT", f"/api/v1/metrics/{mid}", {"expressions": ["quantity * 2"]})
    assert updated["expressions"] == ["quantity * 2"]
    start = time.time_ns() // 1000
    for event in poll(rest, mid, start, 2):
        assert event["values"][0]["expression"] == "quantity * 2"
        assert int(event["values"][0]["valueJson"]) % 2 == 0

    off = rest.ok("POST", f"/api/v1/metrics/{mid}/disable")
    assert (off["enabled"], off["storageUpdated"], off["status"]) == (False, True, "disabled")
    assert off["dapConfirmed"] is True  # it was installed, and debugpy took it out
    time.sleep(0.3)
    quiet_from = time.time_ns() // 1000
    time.sleep(0.5)
    assert rest.ok("GET", f"/api/v1/events?metricId={mid}&since={quiet_from}") == []
    again_off = rest.ok("POST", f"/api/v1/metrics/{mid}/disable")
    assert (again_off["storageUpdated"], again_off["dapConfirmed"]) == (False, False)
    on = rest.ok("POST", f"/api/v1/metrics/{mid}/enable")
    assert on["dapConfirmed"] is True and on["actualLine"] == TRADE_BOT_LINES["sleep"]
    poll(rest, mid, time.time_ns() // 1000, 1)

    assert rest("DELETE", f"/api/v1/metrics/{mid}")[0] == 204
    code, gone = rest("GET", f"/api/v1/metrics/{mid}")
    assert code == 404 and gone["errorType"] == "METRIC_NOT_FOUND"
    for method, path in [
        ("DELETE", f"/api/v1/metrics/{mid}"),
        ("POST", f"/api/v1/metrics/{mid}/enable"),
        ("GET", f"/api/v1/metrics/{mid}/value"),
        ("GET", f"/api/v1/events?metricId={mid}"),
        ("GET", "/api/v1/events?metricName=nope"),
    ]:
        assert rest(method, path)[0] == 404, (method, path)  # the real daemon: 500 or []


def test_metrics_come_back_after_a_sleep_and_a_new_wake(bot: Any, open_daemon: DevDaemon) -> None:
    rest = Rest(open_daemon.url)
    cid = wake(bot, open_daemon)
    mid = rest.ok(
        "POST", "/api/v1/metrics", metric_body(cid, "qty", "sleep", "quantity"), status=201
    )["metricId"]
    poll(rest, mid, 0, 2)
    assert bot.request("POST", "/detrix/sleep")[0] == 200
    # stored while asleep: added now, installed at the next registration
    late = rest.ok(
        "POST", "/api/v1/metrics", metric_body(cid, "late", "order", "symbol"), status=201
    )
    assert "not connected" in late["warnings"][0] and late["dapConfirmed"] is False
    time.sleep(0.3)
    after_sleep = time.time_ns() // 1000
    assert wake(bot, open_daemon) == cid  # the same connection id: the same metrics
    assert len(poll(rest, mid, after_sleep, 2)) >= 2
    assert len(poll(rest, late["metricId"], after_sleep, 1)) >= 1


def test_bad_metric_requests_get_named_4xx(bot: Any, open_daemon: DevDaemon) -> None:
    rest = Rest(open_daemon.url)
    cid = wake(bot, open_daemon)
    good = metric_body(cid, "ok", "sleep", "quantity")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "connectionId": "0" * 32}, 404, "CONNECTION_NOT_FOUND"),
        ({**good, "name": "has space"}, 400, "METRIC_INVALID_NAME"),
        ({**good, "name": "detrix"}, 400, "METRIC_INVALID_NAME"),
        ({**good, "expressions": []}, 400, "METRIC_INVALID_EXPRESSION"),
        ({**good, "expressions": ["'}'"]}, 400, "METRIC_INVALID_EXPRESSION"),
        ({**good, "expressions": ["x"] * 21}, 400, "METRIC_INVALID_EXPRESSION"),
        ({**good, "expressions": ["x" * 10_001]}, 400, "METRIC_EXPRESSION_TOO_LONG"),
        ({**good, "location": "app.py"}, 400, "METRIC_INVALID_LOCATION"),
        ({**good, "location": {"file": "app.py", "line": 0}}, 400, "METRIC_INVALID_LOCATION"),
        ({**good, "mode": "first"}, 400, "CONFIG_INVALID"),
        ({**good, "captureStackTrace": True}, 400, "CONFIG_INVALID"),
        ({k: v for k, v in good.items() if k != "enabled"}, 422, "CONFIG_INVALID"),
        ({**good, "expressions": "quantity"}, 422, "CONFIG_INVALID"),
        ({**good, "location": 5}, 422, "METRIC_INVALID_LOCATION"),
    ]
    for body, status, kind in cases:
        code, answer = rest("POST", "/api/v1/metrics", body)
        assert (code, answer["errorType"]) == (status, kind), (body, answer)
        assert answer["error"]
    for path in [
        "/api/v1/metrics/x",
        "/api/v1/metrics?limit=-1",
        "/api/v1/metrics?enabled=yes",
        "/api/v1/events?metricId=1&metricName=a",
        "/api/v1/events?limit=1&limit=2",
        "/api/v1/events?since=soon",
    ]:
        code, answer = rest("GET", path)
        assert code == 400 and answer["errorType"] == "CONFIG_INVALID", (path, answer)
    assert rest.ok("GET", "/api/v1/metrics")["total"] == 0  # nothing was stored


def test_the_event_store_is_bounded_and_counts_what_it_drops(spawn: Any) -> None:
    bot = spawn(TRADE_BOT)
    with DevDaemon(max_events=20) as daemon:
        rest = Rest(daemon.url)
        cid = wake(bot, daemon)
        mid = rest.ok(
            "POST", "/api/v1/metrics", metric_body(cid, "qty", "sleep", "quantity"), status=201
        )["metricId"]
        wait_until(lambda: rest.ok("GET", "/api/v1/status")["eventsDropped"] >= 10, timeout=30)
        status = rest.ok("GET", "/api/v1/status")
        assert status["eventsStored"] <= 20 and status["eventCapacity"]["events"] == 20
        assert status["totalEvents"] >= status["eventsStored"] + status["eventsDropped"]
        kept = rest.ok("GET", f"/api/v1/events?metricId={mid}&since=0&limit=1000")
        assert 0 < len(kept) <= 20
        # the newest are kept: their iteration values keep growing
        stamps = [e["timestamp"] for e in kept]
        assert stamps == sorted(stamps, reverse=True)
