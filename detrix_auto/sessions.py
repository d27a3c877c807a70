"""Which DAP session is ours, which are past, which is left alone for a while.

A session is pydevd's reader thread of an attached client (``_pydevd``):
the same object for a whole session, a new one for every attach. The client
keeps weak references only, so a session that ended is never kept alive here.

* *current*: the session the daemon attached for the current registration;
  when it ends, the daemon stopped, restarted or dropped us.
* *past*: sessions daemons of ours attached. Once one has ended its socket is
  closed (pydevd leaves it to the garbage collector: one descriptor per
  wake/sleep cycle in a host that rarely collects).
* *settled*: a session found attached while asleep and already dealt with
  (its daemon was asked to detach, or it is no daemon of ours), left alone
  until a deadline: one that outlives the unregister that should have ended
  it is looked at again.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from . import _native, _pydevd

__all__ = ["Sessions"]

#: How many past sessions are remembered.
MAX_PAST = 4


class Sessions:
    def __init__(self) -> None:
        self._current: weakref.ref[Any] | None = None
        self._settled: weakref.ref[Any] | None = None
        self._settled_until = 0.0
        self._past: list[weakref.ref[Any]] = []
        self._past_lock = _native.Lock()  # keeper and wake both touch it; no I/O under it

    # -- the current session -----------------------------------------------------

    def adopt(self, session: Any) -> None:
        """A registration just completed with ``session`` attached (or none seen)."""
        self.release_ended()
        self._current = None if session is None or session is _pydevd.UNKNOWN else _weak(session)
        if self._current is not None:
            with self._past_lock:
                self._past.append(self._current)
        self._settled = None

    def take_over(self, session: Any) -> None:
        """The daemon re-attached by itself: its new session is the current one."""
        if session is not None and session is not _pydevd.UNKNOWN:
            self._current = _weak(session)

    def drop_current(self) -> None:
        self._current = None

    @property
    def has_current(self) -> bool:
        return self._current is not None

    def is_current(self, session: Any) -> bool:
        ref = self._current
        return ref is not None and session is not None and ref() is session

    # -- past and settled sessions ---------------------------------------------------

    def release_ended(self) -> None:
        """Close the sockets of ended sessions of ours."""
        with self._past_lock:
            ended = [ref for ref in self._past if not _still_running(ref)]
            self._past = [ref for ref in self._past if ref not in ended][-MAX_PAST:]
        for ref in ended:
            session = ref()
            if session is not None:
                _pydevd.release_session_socket(session)

    def settle(self, session: Any, *, ours: bool, grace: float) -> None:
        """Leave ``session`` alone for ``grace`` s; if a daemon of ours was asked to
        close it, it goes with the past ones (its socket is closed once it ends)."""
        self._settled = ref = _weak(session)
        if ours and ref is not None:
            with self._past_lock:
                if not any(r() is session for r in self._past):
                    self._past.append(ref)
        self._settled_until = time.monotonic() + grace

    def is_settled(self, session: Any) -> bool:
        ref = self._settled
        return (
            ref is not None
            and session is not None
            and ref() is session
            and time.monotonic() < self._settled_until
        )

    def unsettle(self) -> None:
        self._settled = None


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


def _still_running(ref: weakref.ref[Any]) -> bool:
    session = ref()
    try:
        return session is not None and bool(session.is_alive())
    except Exception:  # noqa: BLE001 - whatever it is, it is not ours to keep
        return False
