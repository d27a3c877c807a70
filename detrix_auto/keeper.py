"""The keeper: one background thread that keeps the client's word true.

It runs once the debug listener is open (or a wake is wanted) and ends when
nothing is left to watch.

* **Awake**: is the daemon still holding our connection? Locally and for
  free on every look (has the DAP session the daemon attached ended?), over
  the network every ``liveness_interval`` (or at once when the local look
  cannot tell). When the connection is gone the client says ``waking`` with
  ``last_error`` and the keeper re-registers with bounded backoff.
* **Wanted awake but not** (``start_state=awake``, or after the daemon was
  lost): retry the wake with backoff until it works.
* **Asleep**: no daemon may stay attached to us. A registration that timed
  out on our side but completed later, or a daemon that restarted and
  re-attached (CONTRACT.md section 3.10), is asked to detach (``DELETE``);
  the client stays ``sleeping`` and says what happened in ``last_error``.
  Owed unregistrations are retried.

Whether a DAP client is attached is read from debugpy's in-process session,
never by connecting to the debug port (CONTRACT.md section 7). Where that
cannot be read, the keeper falls back to network checks.

The keeper sees the client only through :class:`Kept`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

from . import _log, _native
from ._pydevd import UNKNOWN
from .contract import holds_connection
from .errors import DaemonError, DetrixError
from .state import State

if TYPE_CHECKING:
    from .config import Settings
    from .daemon import DaemonClient
    from .debugger import Debugger
    from .links import Links
    from .sessions import Sessions
    from .state import StateCell

__all__ = ["Backoff", "Keeper", "Kept", "Registered"]


class Registered(NamedTuple):
    """What the current registration was made with."""

    daemon: DaemonClient
    token: str | None
    #: The daemon's ids are deterministic, so a re-registration reuses the id:
    #: the generation tells one registration from the next.
    generation: int


class Kept(Protocol):
    """What the keeper needs of the client it keeps."""

    settings: Settings
    name: str
    cell: StateCell
    debugger: Debugger
    links: Links
    sessions: Sessions
    #: Serialises wake and sleep; the keeper takes it for what changes state.
    op_lock: threading.Lock

    @property
    def closed(self) -> bool: ...

    @property
    def wants_awake(self) -> bool: ...

    def registered(self) -> Registered | None: ...

    def retry_wake(self) -> None:
        """Wake again as the last wake did; the caller holds ``op_lock``."""

    def note_awake(self, generation: int, problem: str | None) -> None:
        """Say ``problem`` (or that there is none) if ``generation`` is still current."""

    def lose_registration(self, generation: int, reason: str) -> bool:
        """The daemon let go of us: back to ``waking`` (False if that answer is stale)."""


class Backoff:
    """Delays between retries: doubling from ``initial`` up to ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial
        self.retry_at = 0.0

    def wait_left(self, now: float) -> float:
        return max(0.0, self.retry_at - now)

    def failed(self) -> float:
        """One more failure: returns how long to wait before the next attempt."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        self.retry_at = time.monotonic() + delay
        return delay

    def reset(self) -> None:
        self.delay = self.initial

    def retry_now(self) -> None:
        self.retry_at = 0.0


class Keeper:
    def __init__(self, client: Kept) -> None:
        self._client = client
        self._thread: _native.ThreadLike | None = None
        self._lock = _native.Lock()  # its start and end do not race a wake
        self._event = _native.Event()
        self.backoff = Backoff(0.5, client.settings.wake_retry_max)
        self._last_look = 0.0  # last look of any kind (rate-limits pokes)
        self._last_network = 0.0  # last read-back of our connection from the daemon

    # -- control, from the client ---------------------------------------------------

    def ensure(self) -> None:
        """Start the thread unless it runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = _native.Thread(self._run, "detrix-keeper")
            self._thread.start()

    def nudge(self) -> None:
        """Look again now (after a state change)."""
        self._event.set()

    def poke(self) -> None:
        """Ask for a look soon (at most once a second); never blocks.

        The look itself is local and free; the daemon is asked over the network
        only every ``liveness_interval``, or at once when the local look cannot
        tell.
        """
        if self._thread is not None and time.monotonic() - self._last_look >= 1.0:
            self._event.set()

    def registered_now(self) -> None:
        """A registration just completed: the daemon was heard from this moment."""
        self._last_network = self._last_look = time.monotonic()

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        client = self._client
        while not client.closed:
            try:
                delay = self._look()
            except Exception as exc:  # noqa: BLE001 - the keeper must outlive any surprise
                _log.debug("keeper: unexpected %s: %s", type(exc).__name__, exc)
                delay = client.settings.liveness_interval
            if delay is None:
                return
            if delay > 0:
                self._event.wait(delay)
            self._event.clear()

    def _may_end(self) -> bool:
        """True (and the thread forgotten) when nothing is left to watch."""
        client = self._client
        with self._lock:
            if client.closed:
                return True
            if (
                client.wants_awake
                or client.cell.current.state is not State.SLEEPING
                or client.links.owed
            ):
                return False
            self._thread = None
            return True

    def _look(self) -> float | None:
        """One look; returns how long to wait before the next, or None to end."""
        client = self._client
        now = time.monotonic()
        self._last_look = now
        if client.links.owed and client.debugger.session() is UNKNOWN:
            self._pay_blind()
        if client.wants_awake and client.cell.current.state is not State.AWAKE:
            wait = self.backoff.wait_left(now)
            if wait > 0:
                return wait
            if self._try_wake():
                self.backoff.reset()
                return client.settings.liveness_interval
            return self.backoff.failed()
        if client.wants_awake:
            return self._check_liveness(now)
        return self._watch_asleep()

    def _try_wake(self) -> bool:
        client = self._client
        if not client.op_lock.acquire(blocking=False):
            return False
        try:
            if not client.wants_awake or client.cell.current.state is State.AWAKE:
                return True
            client.retry_wake()
            _log.info("keeper: awake again as %s", client.name)
            return True
        except DetrixError as exc:
            if client.wants_awake:
                client.cell.update(state=State.WAKING, last_error=str(exc))
            _log.debug("keeper: wake attempt failed: %s", exc)
            return False
        finally:
            client.op_lock.release()

    def _check_liveness(self, now: float) -> float:
        """Awake: is our connection still attached on the daemon's side?

        A daemon that does not answer while its DAP session is still attached
        leaves us awake, with the trouble in ``last_error``.
        """
        client = self._client
        settings = client.settings
        interval = settings.liveness_interval
        registered = client.registered()
        cid = client.cell.current.connection_id
        if registered is None or cid is None:
            return interval
        session = client.debugger.session()
        local_ok = client.sessions.is_current(session)
        lost: str | None = None
        if client.sessions.has_current and session is None:
            lost = (
                "the daemon's debug connection closed (the daemon stopped, restarted or "
                "dropped this connection)"
            )
        elif local_ok and now - self._last_network < interval:
            return max(0.05, self._last_network + interval - now)
        else:
            self._last_network = now
            try:
                row = registered.daemon.connection(
                    cid, registered.token, settings.health_check_timeout
                )
            except DaemonError as exc:
                if local_ok:
                    client.note_awake(
                        registered.generation,
                        f"daemon not answering the liveness check ({exc}); its debug "
                        "connection is still attached",
                    )
                    return interval
                lost = f"daemon lost: {exc}"
            else:
                status = row.get("status") if isinstance(row, dict) else None
                if row is not None and holds_connection(status):
                    if not local_ok:
                        client.sessions.take_over(session)  # the daemon re-attached by itself
                    client.note_awake(registered.generation, None)
                    return interval
                lost = "the daemon no longer holds this connection (restarted or dropped it)"
        if client.lose_registration(registered.generation, lost):
            self.backoff.reset()
            self.backoff.retry_now()
            _log.warn(f"{lost}; re-registering when it answers")
        return 0.0

    def _watch_asleep(self) -> float | None:
        """Asleep: no daemon may stay attached to us. Returns the next delay, None to end."""
        client = self._client
        interval = client.settings.liveness_interval
        session = client.debugger.session()
        if session is UNKNOWN:
            # Cannot see the session: owed unregistrations are retried blind
            # (at the top of _look) and nothing else is watched.
            if client.links.owed:
                return self.backoff.failed()
            return None if self._may_end() else 0.0
        if session is None:
            # Nothing attached: whatever we still owed the daemon is detached.
            if client.links.owed:
                client.links.nothing_owed()
                snap = client.cell.current
                if snap.state is State.SLEEPING and (snap.last_error or "").startswith(
                    "sleep could not unregister"
                ):
                    client.cell.update(last_error=None)  # it is detached now after all
            client.sessions.release_ended()
            client.sessions.unsettle()
            self.backoff.reset()
            if client.debugger.listening:
                return interval  # a restarted daemon may re-attach at any time
            return None if self._may_end() else 0.0
        if client.sessions.is_settled(session):
            return interval
        return self._detach_stray(session)

    def _detach_stray(self, session: object) -> float:
        """A DAP client is attached while we sleep: if it is a daemon we registered
        with (one that restarted and re-attached, or a registration that timed out
        here and completed there), ask it to detach; leave any other debugger be.
        """
        client = self._client
        settings = client.settings
        interval = settings.liveness_interval
        client.sessions.release_ended()
        held = []
        failed = False
        for link in client.links.recent:
            try:
                row = link.daemon.connection(
                    link.connection_id, link.token, settings.health_check_timeout
                )
            except DaemonError:
                failed = True
                continue
            if isinstance(row, dict) and holds_connection(row.get("status")):
                held.append(link)
        detached: list[str] = []
        if held:
            with client.op_lock:
                if client.cell.current.state is not State.SLEEPING or client.wants_awake:
                    return 0.0  # a wake started meanwhile: that session may be its own
                for link in held:
                    try:
                        link.daemon.unregister(
                            link.connection_id, link.token, settings.unregister_timeout
                        )
                    except DaemonError:
                        failed = True
                    else:
                        detached.append(link.connection_id)
                        client.links.paid(link.connection_id, link.daemon)
                if detached:
                    client.cell.update(
                        last_error=(
                            f"asked the daemon to detach {', '.join(detached)}: it was attached "
                            "while this process slept (it restarted and re-attached, a "
                            "registration that timed out here completed there, or an "
                            "unregister had failed)"
                        )
                    )
        if detached:
            _log.info("keeper: detached %s, attached while asleep", ", ".join(detached))
        if failed:
            return self.backoff.failed()
        self.backoff.reset()
        # Briefly if a daemon of ours was asked to close it (it should), ten times
        # longer if none of ours holds it (another debugger; looked at again in
        # case one of ours was only slow to say so).
        grace = max(1.0, interval) * (1 if detached else 10)
        client.sessions.settle(session, ours=bool(detached), grace=grace)
        return interval

    def _pay_blind(self) -> None:
        """Retry owed unregistrations when the DAP session cannot be observed."""
        client = self._client
        if not client.op_lock.acquire(blocking=False):
            return
        try:
            current = client.cell.current.connection_id
            remaining = []
            for link in client.links.owed:
                if link.connection_id == current:
                    continue  # re-registered since: that registration is ours again
                try:
                    link.daemon.unregister(
                        link.connection_id, link.token, client.settings.unregister_timeout
                    )
                except DaemonError:
                    remaining.append(link)
            client.links.still_owed(tuple(remaining))
        finally:
            client.op_lock.release()
