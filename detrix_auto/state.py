"""The client's state as immutable snapshots.

Readers (``status()``, ``GET /detrix/status``) take the current snapshot
reference without any lock: a snapshot never changes, and replacing the
reference is atomic. Writers build a new snapshot under ``StateCell.lock``,
which is held only for that, never across I/O.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, replace
from typing import Any

from . import _native

__all__ = ["Snapshot", "State", "StateCell"]


class State(str, enum.Enum):
    SLEEPING = "sleeping"
    WAKING = "waking"
    AWAKE = "awake"


@dataclass(frozen=True)
class Snapshot:
    state: State = State.SLEEPING
    #: debugpy imported and ready, so the next wake is fast (the seed's "warm").
    warm: bool = False
    #: The debug listener's port; stays set after sleep because debugpy cannot close it.
    debug_port: int = 0
    debug_port_active: bool = False
    daemon_url: str = ""
    #: How the last wake chose ``daemon_url`` (or, before any wake, how the next one
    #: will): ``configured``; ``daemon.pid`` or ``default`` (nothing configured: the
    #: running daemon's pid file, else 127.0.0.1:8090, looked up anew at every wake);
    #: ``override`` (given in that wake's request only: the next wake without one
    #: goes elsewhere); ``discover`` (nothing configured and no wake yet).
    daemon_url_source: str = "configured"
    connection_id: str | None = None
    #: Last failure of a wake or of the liveness check, for a truthful status.
    last_error: str | None = None
    since: float = 0.0


class StateCell:
    """One mutable reference to the current :class:`Snapshot`."""

    def __init__(self, initial: Snapshot) -> None:
        self.lock = _native.Lock()
        self._current = replace(initial, since=time.time())

    @property
    def current(self) -> Snapshot:
        return self._current

    def update(self, **changes: Any) -> Snapshot:
        """Replace the snapshot with a copy carrying ``changes``; returns the new one."""
        with self.lock:
            old = self._current
            if "state" in changes and changes["state"] is not old.state:
                changes.setdefault("since", time.time())
            new = replace(old, **changes)
            self._current = new
            return new
