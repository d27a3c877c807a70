"""The state snapshot: readers take it without a lock, so it must never change."""

from __future__ import annotations

import pytest

from detrix_auto.daemon import Registration
from detrix_auto.state import Snapshot, State, StateCell


def test_a_snapshot_never_changes_and_replace_makes_another() -> None:
    first = Snapshot(state=State.AWAKE, debug_port=5678)
    with pytest.raises(AttributeError, match="never changes"):
        first.warm = True  # type: ignore[misc]
    with pytest.raises(AttributeError, match="never changes"):
        del first.warm
    second = first.replace(warm=True)
    assert (first.warm, second.warm) == (False, True)
    assert second.debug_port == 5678 and second.state is State.AWAKE
    assert first == first.replace() and hash(first) == hash(first.replace())
    assert first != second
    with pytest.raises(TypeError):
        first.replace(no_such_field=1)
    assert "debug_port=5678" in repr(first)


def test_the_cell_stamps_a_change_of_state_and_only_that() -> None:
    cell = StateCell(Snapshot())
    before = cell.current
    assert before.since > 0
    same_state = cell.update(warm=True)
    assert same_state.since == before.since and same_state.warm
    awake = cell.update(state=State.AWAKE)
    assert awake.since >= before.since and cell.current is awake
    assert before.warm is False  # the old snapshot is untouched


def test_a_registration_never_changes() -> None:
    reg = Registration(host="127.0.0.1", port=1, name="n", workspace_root="", hostname="h")
    with pytest.raises(AttributeError, match="never changes"):
        reg.port = 2  # type: ignore[misc]
    assert reg.to_json()["workspaceRoot"] == "/"
    assert "port=1" in repr(reg)
