"""Wake, sleep, keep-awake and shutdown: the client's state machine.

Three locks, each with one job:

* ``StateCell.lock`` guards only the swap of an immutable snapshot; readers
  never take it, so ``status()`` never blocks.
* ``op_lock`` serialises wake and sleep. Network I/O happens under it, never
  under the state lock. A second wake waits for the first and answers
  ``already_awake`` (concurrent wakes collapse into one registration); a sleep
  that arrives during a wake waits for it and unregisters what it created.
* the debugger's own lock, around debugpy's once-per-process ``listen()``.

The rest lives in rooms of its own, each readable alone: the keeper thread
(``keeper``: liveness, retries, strays while asleep), which DAP session is
ours (``sessions``), whom we registered with and still owe an unregister
(``links``), and the debugger (``debugger``, with ``_pydevd`` and the gate).
Imports run one way: lifecycle -> keeper -> {sessions, links} -> {_pydevd,
daemon, state}.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import _debug_gate, _log, _native, _pydevd
from ._handoff import quick_handoffs
from ._status import daemon_at_rest, status_document
from .config import DEFAULT_DAEMON_URL, Settings, control_plane_url, same_origin
from .contract import connection_id as expected_connection_id
from .debugger import Debugger
from .errors import DaemonError, DebuggerError, DetrixError
from .keeper import Keeper, Registered
from .links import Link, Links
from .sessions import Sessions
from .state import Snapshot, State, StateCell

if TYPE_CHECKING:
    from .daemon import DaemonClient, Registration

__all__ = ["Client", "DaemonFactory", "expected_connection_id", "process_debugger"]

DaemonFactory = Callable[[str, Settings], "DaemonClient"]

_PROCESS_DEBUGGER: Debugger | None = None
_PROCESS_DEBUGGER_PID = 0


def process_debugger() -> Debugger:
    """The one debugger of this process (debugpy listens once per process)."""
    global _PROCESS_DEBUGGER, _PROCESS_DEBUGGER_PID
    if _PROCESS_DEBUGGER is None or os.getpid() != _PROCESS_DEBUGGER_PID:
        inherited = _PROCESS_DEBUGGER
        _PROCESS_DEBUGGER = Debugger()
        if inherited is not None and inherited.listening:
            # The listener and its threads stayed with the parent.
            _PROCESS_DEBUGGER.forked_after_listen = True
        _PROCESS_DEBUGGER_PID = os.getpid()
    return _PROCESS_DEBUGGER


def _default_daemon_factory(url: str, settings: Settings) -> DaemonClient:
    try:
        from .daemon import client_for
    except ImportError as exc:  # detrix-auto's own files missing or broken here
        raise DaemonError(
            f"cannot load the daemon client ({exc}); reinstall detrix-auto in this environment"
        ) from None
    return client_for(
        url,
        verify_ssl=settings.verify_ssl,
        ca_bundle=settings.ca_bundle,
        daemon_uid=settings.daemon_uid,
    )


class ControlEndpoint(Protocol):
    """What the client needs of the control plane the runtime started for it:
    where it listens (for status and the registration) and how to close it."""

    host: str
    port: int

    def close(self) -> None: ...


class Client:
    """One process's Detrix client: settings, state, debugger, daemon link."""

    def __init__(
        self,
        settings: Settings,
        *,
        daemon_factory: DaemonFactory | None = None,
    ) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.name = settings.connection_name(self.pid)
        self.started_at = time.time()
        self.debugger = process_debugger()
        self._daemon_factory = daemon_factory or _default_daemon_factory
        url, source = daemon_at_rest(settings.daemon_url, DEFAULT_DAEMON_URL)
        self.cell = StateCell(
            Snapshot(
                daemon_url=url,
                daemon_url_source=source,
                debug_port=self.debugger.port,
                debug_port_active=self.debugger.listening,
                warm=self.debugger.imported,
            )
        )
        self.op_lock = _native.Lock()
        self.links = Links()
        self.sessions = Sessions()
        self.keeper = Keeper(self)
        self._registered: Registered | None = None
        self._generation = 0
        self._want_awake = False
        # The override of the last wake, for the keeper's retries while wanted awake.
        self._wake_override: tuple[str, bool] | None = None
        self._closed = False
        self.control: ControlEndpoint | None = None  # set by the runtime
        #: The daemon's advertised URL, learnt at the last registration (None if it
        #: sent none): the wake result's and ``/detrix/discover``'s ``daemon_url``.
        self.daemon_advertise_url: str | None = None
        # The daemon's DAP attach comes from our own user, root, or the daemon
        # account the user named (DETRIX_DAEMON_USER).
        daemon_uid = settings.daemon_uid
        _debug_gate.set_policy(
            _debug_gate.AttachPolicy(
                self._attach_expected,
                extra_uids=frozenset() if daemon_uid is None else frozenset({daemon_uid}),
                # A debugger opened beyond loopback (containers): only the current
                # wake's daemon may attach from another host.
                remote_daemon=lambda: _debug_gate.addresses_of(self.cell.current.daemon_url),
            )
        )

    # -- what the keeper sees (keeper.Kept) --------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def wants_awake(self) -> bool:
        return self._want_awake

    def registered(self) -> Registered | None:
        return self._registered

    def retry_wake(self) -> None:
        override, send_token = self._wake_override or (None, True)
        self._wake_locked(override, send_token, retry=True)

    def note_awake(self, generation: int, problem: str | None) -> None:
        snap = self.cell.current
        stale = generation != self._generation or snap.state is not State.AWAKE
        if not stale and snap.last_error != problem:
            self.cell.update(last_error=problem)

    def lose_registration(self, generation: int, reason: str) -> bool:
        with self.op_lock:
            snap = self.cell.current
            if generation != self._generation or snap.state is not State.AWAKE:
                return False  # slept or re-registered meanwhile: that answer is stale
            if not self._want_awake:
                return False
            self._registered = None
            self.sessions.release_ended()
            self.sessions.drop_current()
            self.cell.update(state=State.WAKING, connection_id=None, last_error=reason)
            return True

    # -- reads ------------------------------------------------------------

    def _attach_expected(self) -> bool:
        """May a DAP client attach now? Only while we wake or are awake."""
        return not self._closed and self.cell.current.state is not State.SLEEPING

    def status(self) -> dict[str, Any]:
        """The status document of the OpenAPI schema, plus our extra keys. Lock-free."""
        snap = self.cell.current
        control = self.control
        return status_document(
            state=snap.state.value,
            name=self.name,
            control_host=control.host if control is not None else self.settings.control_host,
            control_port=control.port if control is not None else 0,
            debug_port=snap.debug_port,
            debug_port_active=snap.debug_port_active,
            daemon_url=snap.daemon_url,
            daemon_url_source=snap.daemon_url_source,
            connection_id=snap.connection_id if snap.state is State.AWAKE else None,
            warm=snap.warm,
            last_error=snap.last_error,
            advertise_host=self.settings.advertise_host,
        )

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "python_version": sys.version.split()[0],
            "python_executable": sys.executable or "",
        }

    def poke(self) -> None:
        """Ask the keeper for a look soon (at most once a second); never blocks."""
        self.keeper.poke()

    # -- transitions ------------------------------------------------------

    def warm(self) -> None:
        """Import what a wake needs now, so that the next wake skips it.

        That is debugpy (most of the cost) and the daemon client (for an
        ``https://`` daemon, urllib3 too, loaded on the first call). Nothing
        listens and nothing is traced.
        """
        with quick_handoffs():
            try:
                self.debugger.prepare()
            except DebuggerError as exc:
                _log.warn(f"warm start failed: {exc}")
                return
            try:
                from . import daemon  # noqa: F401 - imported for its side effect: loaded
            except Exception as exc:  # noqa: BLE001 - the wake will say it properly
                _log.debug("warm: the daemon client could not be loaded: %s", exc)
        self.cell.update(warm=True)

    def wake(self, daemon_url: str | None = None, *, send_token: bool = True) -> dict[str, Any]:
        """Start the debug listener and register with the daemon.

        ``daemon_url`` overrides the configured daemon for this wake. The token
        goes only to the configured daemon's origin, or to an override when
        ``send_token`` says the caller was entitled to choose it.
        """
        self._check_open()
        with self.op_lock:
            snap = self.cell.current
            if snap.state is State.AWAKE:
                return self._wake_result("already_awake", snap)
            try:
                result = self._wake_locked(daemon_url, send_token)
            except DetrixError:
                if self.links.owed or self.debugger.listening:
                    self.keeper.ensure()  # watch for a registration that completes late
                raise
            self._want_awake = True
            self._wake_override = (daemon_url, send_token) if daemon_url else None
            self.keeper.ensure()
            return result

    def _resolve_daemon(
        self, override: str | None, send_token: bool
    ) -> tuple[str, str, str | None]:
        """(url, how it was chosen, token to send)."""
        configured = self.settings.daemon_url
        source = "configured"
        if configured is None:
            from .daemonfile import discover_daemon_url

            configured = discover_daemon_url()
            source = "default" if configured == DEFAULT_DAEMON_URL else "daemon.pid"
        url = override.rstrip("/") if override else configured
        if override:
            source = "override"  # this wake's only: the next one goes to `configured`
        token = None
        if same_origin(url, configured) or send_token:
            from .token import load_token

            try:
                token = load_token(self.settings.token, self.settings.token_files)
            except DetrixError as exc:
                _log.warn(str(exc))
        return url, source, token

    def _wake_locked(
        self, override: str | None, send_token: bool, *, retry: bool = False
    ) -> dict[str, Any]:
        with quick_handoffs():
            return self._wake_with_handoffs(override, send_token, retry)

    def _wake_with_handoffs(
        self, override: str | None, send_token: bool, retry: bool
    ) -> dict[str, Any]:
        if "debugpy" not in sys.modules:  # a first wake imports hundreds of modules
            from . import _import_races

            _import_races.wait_for_main_imports()
        url, source, token = self._resolve_daemon(override, send_token)
        changes: dict[str, Any] = {"daemon_url": url, "daemon_url_source": source}
        if not retry:  # a keeper retry: what went wrong stays said until it works
            changes["last_error"] = None
        self.cell.update(state=State.WAKING, **changes)
        settings = self.settings
        patched_before = _native.gevent_patched_modules()
        try:
            daemon = self._daemon_factory(url, settings)
            daemon.health(settings.health_check_timeout)
            _pydevd.stand_in_main_thread()
            # Only a same-user peer, and only while we wake or are awake, may
            # attach to the debugger, from its first connection (see _debug_gate).
            port = self.debugger.listen(settings.debug_host, settings.debug_port)
            self.cell.update(debug_port=port, debug_port_active=True, warm=True)
            self.debugger.rearm()
            registration = self._registration(port)
            expected = expected_connection_id(
                registration.name, registration.workspace_root, registration.hostname
            )
            # Remembered before the call: a registration that times out here
            # may still complete on the daemon's side.
            self.links.remember(Link(daemon, expected, token))
            try:
                connection_id = daemon.register(registration, token, settings.register_timeout)
            except DaemonError as exc:
                if exc.status is None:
                    # No answer: the daemon may still finish the attach. Clean it
                    # up once it answers, unless a later wake re-registers.
                    self.links.owe(Link(daemon, expected, token))
                raise
        except DetrixError as exc:
            self._wake_failed(str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign failure becomes ours
            message = f"wake failed unexpectedly: {type(exc).__name__}: {exc}"
            if _native.gevent_patched_modules() != patched_before:
                # Locks and imports held across patch_all() by this wake's thread break
                # (patch_all() may have begun before the wake and ended during it).
                message = (
                    "gevent monkey-patched this process while this wake ran "
                    f"({type(exc).__name__}: {exc}); wake again now that it has, or wake only "
                    "after the application has called patch_all()"
                )
            self._wake_failed(message)
            raise DebuggerError(message) from None
        self.links.paid(connection_id)
        if connection_id != expected:
            self.links.remember(Link(daemon, connection_id, token))
        self._generation += 1
        self._registered = Registered(daemon, token, self._generation)
        self.daemon_advertise_url = getattr(daemon, "advertise_url", None)
        self.sessions.adopt(self.debugger.session())
        self.keeper.registered_now()
        snap = self.cell.update(state=State.AWAKE, connection_id=connection_id, last_error=None)
        return self._wake_result("awake", snap)

    def _wake_failed(self, message: str) -> None:
        self.debugger.disarm()
        # Still wanted awake (start_state=awake, or after a daemon restart): the
        # keeper retries, so "waking" is the truth.
        state = State.WAKING if self._want_awake else State.SLEEPING
        self.cell.update(state=state, connection_id=None, last_error=message)

    def _registration(self, port: int) -> Registration:
        from .daemon import Registration

        try:
            cwd = os.getcwd()
        except OSError:
            cwd = "/"
        settings, control = self.settings, self.control
        return Registration(
            # The advertised host (DETRIX_HOST) when the daemon reaches us by another
            # name than our bind address (containers); else where debugpy listens.
            host=settings.advertise_host or self.debugger.host or settings.debug_host,
            port=port,
            name=self.name,
            workspace_root=cwd or "/",
            hostname=socket.gethostname(),
            pid=self.pid,
            safe_mode=settings.safe_mode,
            control_plane_url=(
                control_plane_url(settings.advertise_host, control.host, control.port)
                if control is not None
                else None
            ),
        )

    def _wake_result(self, status: str, snap: Snapshot) -> dict[str, Any]:
        return {
            "status": status,
            "debug_port": snap.debug_port,
            "connection_id": snap.connection_id,
            "daemon_url": self.daemon_advertise_url,
        }

    def sleep(self) -> dict[str, Any]:
        """Unregister (best effort, bounded by the unregister timeout) and sleep."""
        self._check_open()
        with self.op_lock:
            # Under the lock: a wake that finishes while we wait for it must
            # not leave the keeper believing we still want to be awake.
            self._want_awake = False
            with quick_handoffs():  # the daemon's goodbye reaches pydevd's threads sooner
                return self._sleep_locked()

    def _sleep_locked(self) -> dict[str, Any]:
        snap = self.cell.current
        if snap.state is not State.AWAKE:
            if snap.state is State.WAKING:  # a keeper retry between attempts
                self.cell.update(state=State.SLEEPING)
                return {"status": "sleeping"}
            return {"status": "already_sleeping"}
        registered, cid = self._registered, snap.connection_id
        self._registered = None
        session = self.debugger.session()
        unregister_error: str | None = None
        if registered is not None and cid:
            try:
                registered.daemon.unregister(
                    cid, registered.token, self.settings.unregister_timeout
                )
            except DaemonError as exc:
                unregister_error = (
                    f"sleep could not unregister {cid} ({exc}); retrying in the background"
                )
                _log.warn(unregister_error)
                self.links.owe(Link(registered.daemon, cid, registered.token))
            else:
                if session is not None and session is not _pydevd.UNKNOWN:
                    # Ending: the daemon closes it.
                    self.sessions.settle(session, ours=True, grace=self._settle_grace())
        self.sessions.drop_current()
        self.debugger.disarm()
        self.cell.update(state=State.SLEEPING, connection_id=None, last_error=unregister_error)
        self.keeper.nudge()  # let the keeper switch to the sleeping watch
        return {"status": "sleeping"}

    def _settle_grace(self) -> float:
        return max(1.0, self.settings.liveness_interval)

    def keep_awake(self) -> None:
        """Wake in the background, retrying with backoff until it works (start_state=awake)."""
        self._want_awake = True
        self.keeper.backoff.retry_now()
        self.cell.update(state=State.WAKING)
        self.keeper.ensure()

    def shutdown(self, *, at_exit: bool = False) -> None:
        """Stop everything this client started; unregister if awake. Idempotent.

        At interpreter exit a wake still in progress is not waited for long:
        exit is delayed at most by about the unregister timeout.
        """
        if self._closed:
            return
        self._want_awake = False
        settings = self.settings
        wait = min(0.5, settings.unregister_timeout) if at_exit else settings.register_timeout + 1
        acquired = self.op_lock.acquire(timeout=wait)
        try:
            if self.cell.current.state is State.AWAKE:
                self._sleep_locked()
            self._closed = True
        finally:
            if acquired:
                self.op_lock.release()
        self.keeper.nudge()
        control = self.control
        if control is not None:
            control.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DetrixError("this client was shut down; call detrix_auto.init() again")
