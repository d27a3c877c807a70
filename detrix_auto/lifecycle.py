"""Wake, sleep, keep-awake and shutdown: the client's state machine.

Three locks, each with one job:

* ``StateCell.lock`` guards only the swap of an immutable snapshot; readers
  never take it, so ``status()`` never blocks.
* ``_op_lock`` serialises wake and sleep. Network I/O happens under it, never
  under the state lock. A second wake waits for the first and answers
  ``already_awake`` (concurrent wakes collapse into one registration); a sleep
  that arrives during a wake waits for it and unregisters what it created.
* the debugger's own lock, around debugpy's once-per-process ``listen()``.

A background *keeper* thread runs only while the client is meant to be awake:
it checks that the daemon still holds our connection (re-registering after a
daemon restart), retries a start-up wake with bounded backoff, and cleans up
registrations that timed out on our side.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _log
from .config import DEFAULT_DAEMON_URL, Settings
from .debugger import Debugger
from .errors import DaemonError, DebuggerError, DetrixError
from .state import Snapshot, State, StateCell

__all__ = ["Client", "DaemonFactory", "expected_connection_id", "process_debugger"]

DaemonFactory = Callable[[str, Settings], Any]

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


def expected_connection_id(name: str, workspace_root: str, hostname: str) -> str:
    """The id the daemon derives for a registration (CONTRACT.md section 2)."""
    key = f"{name}|python|{workspace_root}|{hostname}".encode()
    return hashlib.sha256(key).digest()[:16].hex()


def _default_daemon_factory(url: str, settings: Settings) -> Any:
    from .daemon import client_for

    return client_for(url, verify_ssl=settings.verify_ssl, ca_bundle=settings.ca_bundle)


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
        self.cell = StateCell(
            Snapshot(
                daemon_url=settings.daemon_url or DEFAULT_DAEMON_URL,
                debug_port=self.debugger.port,
                debug_port_active=self.debugger.listening,
                warm=self.debugger.imported,
            )
        )
        self._op_lock = threading.Lock()
        # What the current registration was made with, for sleep and liveness.
        self._daemon: Any = None
        self._token: str | None = None
        self._want_awake = False
        self._wake_override: tuple[str, bool] | None = None
        self._pending_cleanup: list[tuple[Any, str, str | None]] = []
        self._keeper: threading.Thread | None = None
        self._keeper_event = threading.Event()
        self._closed = False
        self._generation = 0
        self._last_liveness = 0.0
        self.control: Any = None  # the control server, set by the runtime

    # -- reads ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document of the OpenAPI schema, plus ``warm``. Lock-free."""
        snap = self.cell.current
        control = self.control
        return {
            "state": snap.state.value,
            "name": self.name,
            "control_host": control.host if control is not None else self.settings.control_host,
            "control_port": control.port if control is not None else 0,
            "debug_port": snap.debug_port,
            "debug_port_active": snap.debug_port_active,
            "daemon_url": snap.daemon_url,
            "connection_id": snap.connection_id if snap.state is State.AWAKE else None,
            "warm": snap.warm,
            "last_error": snap.last_error,
        }

    def info(self) -> dict[str, Any]:
        import sys

        return {
            "name": self.name,
            "pid": self.pid,
            "python_version": sys.version.split()[0],
            "python_executable": sys.executable or "",
        }

    # -- transitions ------------------------------------------------------

    def warm(self) -> None:
        """Import debugpy now so that the next wake skips it."""
        try:
            self.debugger.prepare()
        except DebuggerError as exc:
            _log.warn(f"warm start failed: {exc}")
            return
        self.cell.update(warm=True)

    def wake(self, daemon_url: str | None = None, *, send_token: bool = True) -> dict[str, Any]:
        """Start the debug listener and register with the daemon.

        ``daemon_url`` overrides the configured daemon for this wake. The token
        goes only to the configured daemon's origin, or to an override when
        ``send_token`` says the caller was entitled to choose it.
        """
        self._check_open()
        with self._op_lock:
            snap = self.cell.current
            if snap.state is State.AWAKE:
                return self._wake_result("already_awake", snap)
            try:
                result = self._wake_locked(daemon_url, send_token)
            except DetrixError:
                if self._pending_cleanup:
                    self._ensure_keeper()
                raise
            self._want_awake = True
            self._wake_override = (daemon_url, send_token) if daemon_url else None
            self._ensure_keeper()
            return result

    def _resolve_daemon(self, override: str | None, send_token: bool) -> tuple[str, str | None]:
        from .daemon import same_origin

        configured = self.settings.daemon_url
        if configured is None:
            from .daemonfile import discover_daemon_url

            configured = discover_daemon_url()
        url = override.rstrip("/") if override else configured
        token = None
        if same_origin(url, configured) or send_token:
            from .token import load_token

            try:
                token = load_token(self.settings.token, self.settings.token_file)
            except DetrixError as exc:
                _log.warn(str(exc))
        return url, token

    def _wake_locked(self, override: str | None, send_token: bool) -> dict[str, Any]:
        url, token = self._resolve_daemon(override, send_token)
        self.cell.update(state=State.WAKING, daemon_url=url, last_error=None)
        settings = self.settings
        try:
            daemon = self._daemon_factory(url, settings)
            daemon.health(settings.health_check_timeout)
            port = self.debugger.listen(settings.debug_host, settings.debug_port)
            self.cell.update(debug_port=port, debug_port_active=True, warm=True)
            self.debugger.rearm()
            registration = self._registration(port)
            try:
                connection_id = daemon.register(registration, token, settings.register_timeout)
            except DaemonError as exc:
                if exc.status is None:
                    # No answer: the daemon may still finish the attach. Clean it
                    # up once it answers, unless a later wake re-registers.
                    cid = expected_connection_id(
                        registration.name, registration.workspace_root, registration.hostname
                    )
                    self._pending_cleanup.append((daemon, cid, token))
                raise
        except DetrixError as exc:
            self.debugger.disarm()
            self.cell.update(state=State.SLEEPING, connection_id=None, last_error=str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign failure becomes ours
            self.debugger.disarm()
            self.cell.update(state=State.SLEEPING, connection_id=None, last_error=str(exc))
            raise DebuggerError(f"wake failed unexpectedly: {type(exc).__name__}: {exc}") from None
        self._pending_cleanup = [p for p in self._pending_cleanup if p[1] != connection_id]
        self._daemon, self._token = daemon, token
        # The daemon's ids are deterministic, so a re-registration reuses the
        # id: the generation tells one registration from the next.
        self._generation += 1
        snap = self.cell.update(state=State.AWAKE, connection_id=connection_id, last_error=None)
        return self._wake_result("awake", snap)

    def _registration(self, port: int) -> Any:
        from .daemon import Registration

        try:
            cwd = os.getcwd()
        except OSError:
            cwd = "/"
        return Registration(
            host=self.debugger.host or self.settings.debug_host,
            port=port,
            name=self.name,
            workspace_root=cwd or "/",
            hostname=socket.gethostname(),
            pid=self.pid,
            safe_mode=self.settings.safe_mode,
        )

    @staticmethod
    def _wake_result(status: str, snap: Snapshot) -> dict[str, Any]:
        return {
            "status": status,
            "debug_port": snap.debug_port,
            "connection_id": snap.connection_id,
        }

    def sleep(self) -> dict[str, Any]:
        """Unregister (best effort, bounded by the unregister timeout) and sleep."""
        self._check_open()
        with self._op_lock:
            # Under the lock: a wake that finishes while we wait for it must
            # not leave the keeper believing we still want to be awake.
            self._want_awake = False
            return self._sleep_locked()

    def _sleep_locked(self) -> dict[str, Any]:
        snap = self.cell.current
        if snap.state is not State.AWAKE:
            if snap.state is State.WAKING:  # a keeper retry between attempts
                self.cell.update(state=State.SLEEPING)
                return {"status": "sleeping"}
            return {"status": "already_sleeping"}
        daemon, token, cid = self._daemon, self._token, snap.connection_id
        self._daemon = self._token = None
        if daemon is not None and cid:
            try:
                daemon.unregister(cid, token, self.settings.unregister_timeout)
            except DaemonError as exc:
                _log.warn(f"sleep could not unregister {cid}: {exc}; will retry in the background")
                self._pending_cleanup.append((daemon, cid, token))
        self.debugger.disarm()
        self.cell.update(state=State.SLEEPING, connection_id=None)
        self._keeper_event.set()  # let the keeper notice it has nothing to watch
        return {"status": "sleeping"}

    def keep_awake(self) -> None:
        """Wake in the background, retrying with backoff until it works (start_state=awake)."""
        self._want_awake = True
        self.cell.update(state=State.WAKING)
        self._ensure_keeper()

    def poke(self) -> None:
        """Ask the keeper for a liveness check soon (at most once a second); never blocks."""
        if self._keeper is not None and time.monotonic() - self._last_liveness >= 1.0:
            self._keeper_event.set()

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
        acquired = self._op_lock.acquire(timeout=wait)
        try:
            if self.cell.current.state is State.AWAKE:
                self._sleep_locked()
            self._closed = True
        finally:
            if acquired:
                self._op_lock.release()
        self._keeper_event.set()
        control = self.control
        if control is not None:
            control.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DetrixError("this client was shut down; call detrix_auto.init() again")

    # -- the keeper thread -------------------------------------------------

    def _ensure_keeper(self) -> None:
        if self._keeper is not None and self._keeper.is_alive():
            return
        self._keeper = threading.Thread(target=self._keep, name="detrix-keeper", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        backoff = 0.5
        while not self._closed:
            if self._pending_cleanup:
                self._cleanup_once()
            snap = self.cell.current
            delay = self.settings.liveness_interval
            if self._want_awake and snap.state is not State.AWAKE:
                if self._try_wake():
                    backoff = 0.5
                else:
                    delay = backoff
                    backoff = min(backoff * 2, self.settings.wake_retry_max)
            elif self._want_awake:
                self._check_liveness()
            elif not self._pending_cleanup:
                return  # nothing left to watch
            else:
                delay = min(backoff, self.settings.wake_retry_max)
                backoff = min(backoff * 2, self.settings.wake_retry_max)
            self._keeper_event.wait(delay)
            self._keeper_event.clear()

    def _try_wake(self) -> bool:
        override, send_token = self._wake_override or (None, True)
        if not self._op_lock.acquire(blocking=False):
            return False
        try:
            if not self._want_awake or self.cell.current.state is State.AWAKE:
                return True
            self._wake_locked(override, send_token)
            _log.info("keeper: awake again as %s", self.name)
            return True
        except DetrixError as exc:
            if self._want_awake:
                self.cell.update(state=State.WAKING, last_error=str(exc))
            _log.debug("keeper: wake attempt failed: %s", exc)
            return False
        finally:
            self._op_lock.release()

    def _check_liveness(self) -> None:
        """Is our connection still attached on the daemon's side?"""
        self._last_liveness = time.monotonic()
        daemon, token, generation = self._daemon, self._token, self._generation
        cid = self.cell.current.connection_id
        if daemon is None or cid is None:
            return
        try:
            row = daemon.connection(cid, token, self.settings.health_check_timeout)
        except DaemonError as exc:
            lost = f"daemon lost: {exc}"
        else:
            status = row.get("status") if isinstance(row, dict) else None
            if row is not None and status in (2, 3, "connected", "connecting", None):
                return
            lost = "the daemon no longer holds this connection (restarted or dropped it)"
        with self._op_lock:
            snap = self.cell.current
            if generation != self._generation or snap.state is not State.AWAKE:
                return  # slept or re-registered meanwhile: that answer is stale
            if not self._want_awake:
                return
            self._daemon = self._token = None
            self.cell.update(state=State.WAKING, connection_id=None, last_error=lost)
        _log.warn(f"{lost}; re-registering when it answers")

    def _cleanup_once(self) -> None:
        if not self._op_lock.acquire(blocking=False):
            return
        try:
            current = self.cell.current.connection_id
            remaining = []
            for daemon, cid, token in self._pending_cleanup:
                if cid == current:
                    continue  # re-registered since: that registration is ours again
                try:
                    daemon.unregister(cid, token, self.settings.unregister_timeout)
                except DaemonError:
                    remaining.append((daemon, cid, token))
            self._pending_cleanup = remaining
        finally:
            self._op_lock.release()
