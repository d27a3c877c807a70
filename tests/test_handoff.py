"""The short switch interval of a wake: on while a wake runs, the host's value after."""

from __future__ import annotations

import sys
import threading

import pytest

from detrix_auto import _handoff
from detrix_auto._handoff import WAKE_SWITCH_INTERVAL, quick_handoffs


@pytest.fixture(autouse=True)
def _restore_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_short_while_inside_and_restored_after():
    sys.setswitchinterval(0.005)
    with quick_handoffs():
        assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_nested_and_concurrent_holders_restore_once_the_last_leaves():
    sys.setswitchinterval(0.004)
    inside, release = threading.Event(), threading.Event()

    def other_wake():
        with quick_handoffs():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other_wake)
    with quick_handoffs():
        thread.start()
        assert inside.wait(5)
    # The first holder left; the other is still inside.
    assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL)
    release.set()
    thread.join(5)
    assert sys.getswitchinterval() == pytest.approx(0.004)


def test_a_value_the_host_sets_meanwhile_is_kept():
    sys.setswitchinterval(0.005)
    with quick_handoffs():
        sys.setswitchinterval(0.002)
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_a_host_that_already_switches_faster_is_left_alone():
    sys.setswitchinterval(WAKE_SWITCH_INTERVAL / 2)
    with quick_handoffs():
        assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL / 2)
    assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL / 2)


def test_an_exception_inside_still_restores():
    sys.setswitchinterval(0.005)
    with pytest.raises(RuntimeError), quick_handoffs():
        raise RuntimeError("wake failed")
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_an_operators_interval_holds_between_wakes_and_goes_at_shutdown():
    """``DETRIX_SWITCH_INTERVAL``: a wake's short interval comes and goes on top of it."""
    sys.setswitchinterval(0.005)
    _handoff.keep_interval(0.0005)
    try:
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        with quick_handoffs():
            assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL)
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        _handoff.release_interval()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_an_operators_interval_set_or_released_while_a_wake_runs_lands_after_it():
    sys.setswitchinterval(0.005)
    with quick_handoffs():
        _handoff.keep_interval(0.0005)
        assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    with quick_handoffs():
        _handoff.release_interval()
        assert sys.getswitchinterval() == pytest.approx(WAKE_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_value_the_host_sets_over_the_operators_is_kept_at_shutdown():
    sys.setswitchinterval(0.005)
    _handoff.keep_interval(0.0005)
    sys.setswitchinterval(0.002)
    _handoff.release_interval()
    assert sys.getswitchinterval() == pytest.approx(0.002)


#: A host that computes without pause and reports, after every block, the block's
#: number and its switch interval as it sees it (whole, never half-written).
BUSY_APP = """\
import os, sys, time
report = sys.argv[1]
sys.setswitchinterval(0.007)  # the host's own value
deadline = time.time() + 120
block = 0
while time.time() < deadline:
    t = 0
    for i in range(20000):
        t += i * i % 7
    block += 1
    with open(report + ".new", "w") as f:
        f.write(f"{block} {sys.getswitchinterval()!r}")
    os.replace(report + ".new", report)
"""


def test_wake_and_sleep_requests_give_the_host_its_interval_back_on_every_path(
    spawn, daemon, tmp_path
):
    """The control plane holds quick hand-offs from parsing a wake or sleep request
    to its answer (control/loop.py): whatever the answer, the host's own interval
    is back afterwards."""
    import time

    from support import wait_until

    report = tmp_path / "interval"
    app = spawn(BUSY_APP, str(report))
    wait_until(report.exists, what="the app's first report")

    def read_report():
        block, interval = report.read_text().split()
        return int(block), float(interval)

    def host_interval_after(method, path, body=None, headers=None):
        """The interval the host sees once it computed a while after the answer.

        Not after a fixed pause: a woken 3.10 host, traced, under a loaded machine,
        can take longer than any pause for one block, and then its last report is
        from inside the request. Several blocks after the answer, the release
        (which follows the answer by microseconds) has happened whatever the load,
        and a leaked hold still shows: the interval stays short."""
        code, answer = app.request(method, path, body, headers=headers)
        answered_at = read_report()[0]
        deadline = time.monotonic() + 30
        while read_report()[0] < answered_at + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        block, interval = read_report()
        assert block >= answered_at + 3, "the app stopped computing"
        return interval, code, answer

    cases = [
        ("POST", "/detrix/wake", {"daemon_url": daemon.url}, None, 200),
        ("POST", "/detrix/wake", {"daemon_url": daemon.url}, None, 200),  # already awake
        ("POST", "/detrix/sleep", None, None, 200),
        ("POST", "/detrix/sleep", None, None, 200),  # already asleep
        ("POST", "/detrix/wake", {"daemon_url": "http://127.0.0.1:9"}, None, 503),
        ("POST", "/detrix/wake", {"daemon_url": 5}, None, 400),
        ("POST", "/detrix/wake", None, {"Authorization": "Bearer wrong"}, 401),
        ("GET", "/detrix/wake", None, None, 405),
    ]
    for method, path, body, headers, expected in cases:
        interval, code, answer = host_interval_after(method, path, body, headers)
        assert code == expected, (method, path, body, code, answer)
        assert interval == pytest.approx(0.007, abs=1e-5), (method, path, body, code, interval)
