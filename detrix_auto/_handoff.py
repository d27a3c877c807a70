"""Quick GIL hand-offs while a wake runs beside a host that computes.

A thread that waits for the GIL gets it only when the running thread reaches
CPython's switch interval (5 ms by default). A cold wake imports debugpy and
attaches: a few thousand file and socket calls, each of which gives the GIL
up and must then wait for it again. Beside a main thread that never blocks,
every one of those waits lasts the full interval, and a wake that takes 0.2 s
on an idle host took 10-30 s (measured, docs/performance.md). For the length
of a wake the interval is made short, then put back, unless the host changed
it meanwhile (then the host's value stays). The host's own threads see more
frequent switches only while a wake runs.

The short interval of a wake needs the GIL to be set, and so cannot help a
thread that never gets it. CPython's waiting thread asks the holder to drop
the GIL only after a whole interval without a hand-off; a main thread that
computes in slices shorter than that and makes a system call between them (a
busy asyncio loop polling with timeout 0, a loop that logs or stats files)
drops the GIL voluntarily each time, wakes the waiter, and takes it back
before the waiter runs: the waiter's interval starts over, and the control
plane's thread (debugpy's too, the host's own) waits as long as that goes on
(measured: no answer in 30 s beside 2 ms slices). Only an interval shorter
than the slices ends it, so an operator may ask for one for the process's
whole life (``DETRIX_SWITCH_INTERVAL``, :func:`keep_interval`).
"""

from __future__ import annotations

import sys
from types import TracebackType

from . import _native

__all__ = [
    "WAKE_SWITCH_INTERVAL",
    "enter",
    "forget_after_fork",
    "keep_interval",
    "leave",
    "quick_handoffs",
    "release_interval",
]

#: Switch interval (seconds) while a wake runs: 0.1 ms keeps a cold wake beside a
#: CPU-bound host within a small multiple of the idle wake.
WAKE_SWITCH_INTERVAL = 0.0001

_lock = _native.Lock()
_holders = 0
_saved: float | None = None
#: (ours, the one before it) while ``DETRIX_SWITCH_INTERVAL`` holds the interval.
_kept: tuple[float, float] | None = None


def enter() -> None:
    """One more holder of the short interval (the first one sets it).

    Every :func:`enter` must be matched by one :func:`leave`, on every path:
    ``with quick_handoffs():`` does that for a block of one thread; the control
    plane's loop pairs them itself across threads (a wake or sleep request,
    from its parsing to its answer).
    """
    global _holders, _saved
    with _lock:
        _holders += 1
        if _holders == 1:
            current = sys.getswitchinterval()
            if current > WAKE_SWITCH_INTERVAL:
                _saved = current
                sys.setswitchinterval(WAKE_SWITCH_INTERVAL)


def leave() -> None:
    """One holder fewer; the last one puts the host's interval back."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            return  # unmatched: never below zero (a fork reset the count meanwhile)
        _holders -= 1
        if _holders == 0 and _saved is not None:
            # Someone else set another value meanwhile: theirs wins.
            if abs(sys.getswitchinterval() - WAKE_SWITCH_INTERVAL) < 1e-6:
                sys.setswitchinterval(_saved)
            _saved = None


def keep_interval(seconds: float) -> None:
    """The operator's ``DETRIX_SWITCH_INTERVAL``: this interval from now on.

    Set at start-up, when they asked for it, and only then: it is the host's
    scheduling, changed for the process's life, so it is never our default.
    A wake's shorter interval comes and goes on top of it.
    """
    global _kept, _saved
    with _lock:
        before = _saved if _holders and _saved is not None else sys.getswitchinterval()
        if _kept is not None:
            before = _kept[1]  # a second start (init() after the hook): the host's stays first
        sys.setswitchinterval(seconds)
        ours = sys.getswitchinterval()  # as CPython rounded it
        if _holders and _saved is not None:
            # A wake holds the short interval now: its end puts ours back.
            sys.setswitchinterval(WAKE_SWITCH_INTERVAL)
            _saved = ours
        _kept = (ours, before)


def release_interval() -> None:
    """At shutdown: the interval from before :func:`keep_interval`, unless someone changed it."""
    global _kept, _saved
    with _lock:
        if _kept is None:
            return
        ours, before = _kept
        _kept = None
        if _holders and _saved is not None:
            if abs(_saved - ours) < 1e-6:
                _saved = before  # the running wake's end restores the host's
            return
        if abs(sys.getswitchinterval() - ours) < 1e-6:
            sys.setswitchinterval(before)


class quick_handoffs:  # lower case: reads like a function in ``with quick_handoffs():``
    """Context manager: a short switch interval while at least one holder is inside."""

    def __enter__(self) -> None:
        enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leave()


def forget_after_fork() -> None:
    """In a forked child: the parent's wake (and its short interval) did not come along.

    A fork made while a wake ran would otherwise leave the child with the short
    switch interval for good (nobody there will leave the block that set it)
    and with a lock its owner thread, gone, may have held.
    """
    global _lock, _holders, _saved
    _lock = _native.Lock()
    short = abs(sys.getswitchinterval() - WAKE_SWITCH_INTERVAL) < 1e-6
    if _holders and _saved is not None and short:
        sys.setswitchinterval(_saved)
    _holders = 0
    _saved = None
