"""The rules of metrics and the event store, without sockets: pure functions and bounds."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from detrix_auto.devdaemon.metrics import (
    MetricRuleError,
    check_expressions,
    check_name,
    display_text,
    error_type_for,
    log_message,
    parse_location,
    typed_value,
)
from detrix_auto.devdaemon.store import Event, EventStore


@pytest.mark.parametrize("name", ["order_info", "_x", "a-b", "A1", "x" * 255, "metric-2_b"])
def test_names_the_real_daemon_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1a", "-a", "a b", "a=b", "a%s", "a{b", "a__b", "a--b", "All", "detrix", "x" * 256, 5],
)
def test_names_it_refuses(name: object) -> None:
    with pytest.raises(MetricRuleError) as info:
        check_name(name)
    assert info.value.code.name == "METRIC_INVALID_NAME" and info.value.status == 400


def test_expressions_with_balanced_braces_are_python() -> None:
    exprs = ["f'{a:.2f} {b!r}'", "{k: v for k, v in d.items()}", "  x  ", "{1, 2}"]
    assert check_expressions(exprs) == (
        "f'{a:.2f} {b!r}'",
        "{k: v for k, v in d.items()}",
        "x",
        "{1, 2}",
    )


@pytest.mark.parametrize(
    "exprs",
    [
        [],
        ["'{'"],
        ["'}'"],
        ["}{"],
        [" "],
        ["a\nb"],
        ["a\x1fb"],
        ["x"] * 21,
        ["x" * 10_001],
        "x",
        [1],
    ],
)
def test_expressions_it_refuses(exprs: object) -> None:
    with pytest.raises(MetricRuleError):
        check_expressions(exprs)


def test_log_message_is_the_real_daemons() -> None:
    assert log_message("m", ("a", "b['k']")) == "DETRICS:m={a}\x1f{b['k']}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"file": "/a/b.py", "line": 3}, ("/a/b.py", 3)),
        ("b.py#42", ("b.py", 42)),
        ("@b.py#42", ("b.py", 42)),
        ("./src/b.py#7", ("src/b.py", 7)),
        ("C:/x/b.py#10", ("C:/x/b.py", 10)),
        ("/p/with#hash.py#9", ("/p/with#hash.py", 9)),
    ],
)
def test_locations(value: object, expected: tuple[str, int]) -> None:
    assert parse_location(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "b.py",
        "b.py#",
        "b.py#x",
        "#3",
        {"file": "b.py"},
        {"file": "", "line": 1},
        {"line": 1},
        {"file": "b.py", "line": True},
        {"file": "b.py", "line": 0},
        3,
        None,
    ],
)
def test_bad_locations(value: object) -> None:
    with pytest.raises(MetricRuleError) as info:
        parse_location(value)
    assert info.value.code.name == "METRIC_INVALID_LOCATION"


@pytest.mark.parametrize(
    ("text", "value_json", "typed"),
    [
        ("12", "12", {"numericValue": 12.0}),
        ("-0.5", "-0.5", {"numericValue": -0.5}),
        ("1e+20", "1e+20", {"numericValue": 1e20}),
        ("True", "true", {"boolValue": True}),
        ("False", "false", {"boolValue": False}),
        ("None", "null", None),
        ("[1, 2]", "[1, 2]", None),
        ('{"a": 1}', '{"a": 1}', None),
        ("BTCUSD", '"BTCUSD"', {"stringValue": "BTCUSD"}),
        ("{'a': 1}", "\"{'a': 1}\"", {"stringValue": "{'a': 1}"}),
        ("nan", '"nan"', {"stringValue": "nan"}),
        ("inf", '"inf"', {"stringValue": "inf"}),
        ("NaN", '"NaN"', {"stringValue": "NaN"}),
        ("007", '"007"', {"stringValue": "007"}),
        ("true", '"true"', {"stringValue": "true"}),
        ('"quoted"', '"\\"quoted\\""', {"stringValue": '"quoted"'}),
        ("", '""', {"stringValue": ""}),
        ("9" * 400, "9" * 400, None),  # too large for a float: the digits, untyped
    ],
)
def test_typed_values(text: str, value_json: str, typed: object) -> None:
    assert typed_value(text) == (value_json, typed)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=40) | st.sampled_from(["[" * 5000, "1" * 500, "-", "[1,", "{}"]))
def test_every_value_json_is_json_and_shows_its_text(text: str) -> None:
    value_json, typed = typed_value(text)
    parsed = json.loads(value_json)  # always valid JSON
    if isinstance(parsed, float):
        assert math.isfinite(parsed)
    shown = display_text({"valueJson": value_json, "typedValue": typed})
    assert shown == text.strip() or shown == text


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("name 'x' is not defined", "NameError"),
        ("'Foo' object has no attribute 'bar'", "AttributeError"),
        ("division by zero", "ZeroDivisionError"),
        ("integer division or modulo by zero", "ZeroDivisionError"),
        ("list index out of range", "IndexError"),
        ("unsupported operand type(s) for +: 'int' and 'str'", "TypeError"),
        ("'NoneType' object is not subscriptable", "TypeError"),
        ("invalid literal for int() with base 10: 'x'", "ValueError"),
        ("No module named 'nope'", "ModuleNotFoundError"),
        ("invalid syntax (<string>, line 1)", "SyntaxError"),
        ("'missing_key'", "KeyError"),
        ("app started", None),
        ("INFO:root:order placed", None),
        ("", None),
    ],
)
def test_failure_reports_are_told_by_their_shape(text: str, kind: str | None) -> None:
    assert error_type_for(text) == kind


def _event(metric_id: int, stamp: int, text: str = "v") -> Event:
    return Event(metric_id, f"m{metric_id}", "c", "/f.py", 1, stamp, ("x",), (text,))


def test_store_drops_the_oldest_first_and_counts_them() -> None:
    store = EventStore(max_events=3, max_bytes=10**9)
    for stamp in range(1, 6):
        store.add(_event(1 + stamp % 2, stamp))
    assert [e.timestamp for e in store.oldest_first()] == [3, 4, 5]
    assert store.dropped == 2 and len(store) == 3
    assert [e.timestamp for e in store.newest_first([1])] == [4]
    assert [e.timestamp for e in store.newest_first([2])] == [5, 3]
    assert [e.timestamp for e in store.newest_first(None)] == [5, 4, 3]
    assert [e.timestamp for e in store.newest_first([1, 2], since=4)] == [5, 4]
    assert [e.timestamp for e in store.newest_first([1, 2], until=4)] == [4, 3]


def test_store_is_bounded_by_bytes_too_and_keeps_the_newest_event() -> None:
    store = EventStore(max_events=1000, max_bytes=2000)
    store.add(_event(1, 1, "a" * 500))
    store.add(_event(1, 2, "b" * 500))
    store.add(_event(1, 3, "c" * 5000))  # alone larger than the bound: kept, the rest dropped
    assert [e.timestamp for e in store.oldest_first()] == [3]
    assert store.dropped == 2


def test_store_forgets_a_metric_and_hands_out_increasing_timestamps() -> None:
    store = EventStore(max_events=10, max_bytes=10**9)
    stamps = [store.next_timestamp() for _ in range(1000)]
    assert stamps == sorted(set(stamps))  # strictly increasing, even within a microsecond
    store.add(_event(1, 1))
    store.add(_event(2, 2))
    store.forget_metric(1)
    assert [e.metric_id for e in store.oldest_first()] == [2]
    assert store.bytes == _event(2, 2).size
    with pytest.raises(ValueError):
        EventStore(0, 1)
