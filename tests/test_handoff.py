"""The short switch interval of a wake: on while a wake runs, the host's value after."""

from __future__ import annotations

import sys
import threading

import pytest

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
