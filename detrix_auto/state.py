"""The client's state as immutable snapshots.

Readers (``status()``, ``GET /detrix/status``) take the current snapshot
reference without any lock: a snapshot never changes, and replacing the
reference is atomic. Writers build a new snapshot under ``StateCell.lock``,
which is held only for that, never across I/O.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from . import _native

__all__ = ["Snapshot", "State", "StateCell"]


class State(str, enum.Enum):
    SLEEPING = "sleeping"
    WAKING = "waking"
    AWAKE = "awake"


class Snapshot:
    """The client's state at one moment; never changes (:meth:`replace` makes another).

    A plain slotted class: a frozen dataclass costs each process 1.5 ms to build
    the first time it wakes, for nothing a snapshot needs.
    """

    __slots__ = (
        "connection_id",
        "daemon_url",
        "daemon_url_source",
        "debug_port",
        "debug_port_active",
        "last_error",
        "since",
        "state",
        "warm",
    )

    state: State
    #: debugpy imported and ready, so the next wake is fast (the seed's "warm").
    warm: bool
    #: The debug listener's port; stays set after sleep because debugpy cannot close it.
    debug_port: int
    debug_port_active: bool
    daemon_url: str
    #: How the last wake chose ``daemon_url`` (or, before any wake, how the next one
    #: will): ``configured``; ``daemon.pid`` or ``default`` (nothing configured: the
    #: running daemon's pid file, else 127.0.0.1:8090, looked up anew at every wake);
    #: ``override`` (given in that wake's request only: the next wake without one
    #: goes elsewhere); ``discover`` (nothing configured and no wake yet).
    daemon_url_source: str
    connection_id: str | None
    #: Last failure of a wake or of the liveness check, for a truthful status.
    last_error: str | None
    since: float

    def __init__(
        self,
        *,
        state: State = State.SLEEPING,
        warm: bool = False,
        debug_port: int = 0,
        debug_port_active: bool = False,
        daemon_url: str = "",
        daemon_url_source: str = "configured",
        connection_id: str | None = None,
        last_error: str | None = None,
        since: float = 0.0,
    ) -> None:
        values = {
            "state": state,
            "warm": warm,
            "debug_port": debug_port,
            "debug_port_active": debug_port_active,
            "daemon_url": daemon_url,
            "daemon_url_source": daemon_url_source,
            "connection_id": connection_id,
            "last_error": last_error,
            "since": since,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> Snapshot:
        """A copy with ``changes``."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Snapshot(**fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Snapshot never changes (set {name!r}): use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Snapshot never changes (delete {name!r})")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Snapshot({inner})"


class StateCell:
    """One mutable reference to the current :class:`Snapshot`."""

    def __init__(self, initial: Snapshot) -> None:
        self.lock = _native.Lock()
        self._current = initial.replace(since=time.time())

    @property
    def current(self) -> Snapshot:
        return self._current

    def update(self, **changes: Any) -> Snapshot:
        """Replace the snapshot with a copy carrying ``changes``; returns the new one."""
        with self.lock:
            old = self._current
            if "state" in changes and changes["state"] is not old.state:
                changes.setdefault("since", time.time())
            new = old.replace(**changes)
            self._current = new
            return new
