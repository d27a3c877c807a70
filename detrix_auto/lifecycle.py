"""Wake, sleep, keep-awake and shutdown: the client's state machine.

Three locks, each with one job:

* ``StateCell.lock`` guards only the swap of an immutable snapshot; readers
  never take it, so ``status()`` never blocks.
* ``_op_lock`` serialises wake and sleep. Network I/O happens under it, never
  under the state lock. A second wake waits for the first and answers
  ``already_awake`` (concurrent wakes collapse into one registration); a sleep
  that arrives during a wake waits for it and unregisters what it created.
* the debugger's own lock, around debugpy's once-per-process ``listen()``.

Two more are bookkeeping only, never held across I/O: ``_keeper_lock`` (the
keeper's start and end do not race a wake) and ``_past_lock`` (the list of
ended DAP sessions whose sockets we close).

A background *keeper* thread runs once the debug listener is open (or a wake
is wanted). While awake it checks that the daemon still holds our connection:
locally and for free on every look (has the DAP session the daemon attached
ended?), over the network every ``liveness_interval``; when the connection is
gone it says ``waking`` with ``last_error`` and re-registers with bounded
backoff. While asleep it makes sure no daemon stays attached: a registration
that timed out on our side but completed later, or a daemon that restarted and
re-attached to every stored connection (CONTRACT.md section 3.10), is asked to
detach (``DELETE``); the client stays ``sleeping`` and says what happened in
``last_error``. A sleeping client is never silently observed.

Whether a DAP client is attached is read from debugpy's in-process session
(pydevd's reader thread), never by connecting to the debug port (CONTRACT.md
section 7). Where that cannot be read, the keeper falls back to network checks.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import _debug_gate, _log
from ._handoff import quick_handoffs
from .config import DEFAULT_DAEMON_URL, Settings, control_plane_url, same_origin
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


#: ``dap_session`` could not tell (debugpy internals not as expected).
UNKNOWN: Any = object()

#: Daemon row statuses that mean "attached or attaching" (CONTRACT.md section 2);
#: ``None`` for a daemon whose read-back carries no status.
_HELD = (2, 3, "connected", "connecting", None)

#: How many recent (daemon, connection id) pairs the sleeping watch remembers.
_MAX_LINKS = 4


def dap_session(debugger: Debugger) -> Any:
    """The live DAP session on this process's debug listener.

    Returns pydevd's reader thread of the attached client (an object that is
    the same for the whole session and new for every attach), ``None`` when no
    client is attached, or :data:`UNKNOWN` when this cannot be told. Costs a few
    attribute reads: no I/O, no lock, and it never connects to the port.
    """
    if not debugger.listening:
        return None
    pydevd = sys.modules.get("pydevd")
    if pydevd is None:
        return UNKNOWN
    try:
        py_db = pydevd.get_global_debugger()
        if py_db is None:
            return UNKNOWN
        reader = getattr(py_db, "reader", None)
        if reader is None:
            return None
        if reader.is_alive() and not getattr(reader, "_kill_received", False):
            return reader
        return None
    except Exception:  # noqa: BLE001 - pydevd internals moved: fall back to the network
        return UNKNOWN


def release_ended(ref: weakref.ref[Any] | None) -> None:
    """Close the socket of a DAP session that has ended.

    pydevd (debugpy 1.8) shuts an ended session's socket down but leaves it
    open, held by a reference cycle, until the garbage collector runs: one file
    descriptor per wake/sleep cycle in a host that rarely collects. Once the
    session's reader thread is gone nothing reads or writes that socket, so we
    close it. Only sessions a daemon of ours attached are ever passed here.
    """
    session = ref() if ref is not None else None
    if session is None:
        return
    try:
        if session.is_alive():
            return
        sock = getattr(session, "sock", None)
        if sock is not None:
            sock.close()
    except Exception:  # noqa: BLE001, S110 - best effort; the collector does it eventually
        pass


def _still_running(ref: weakref.ref[Any]) -> bool:
    session = ref()
    try:
        return session is not None and bool(session.is_alive())
    except Exception:  # noqa: BLE001 - whatever it is, it is not ours to keep
        return False


def keep_host_visible_to_pydevd() -> None:
    """Stop pydevd from ending every debug session while the host's main thread is in C.

    pydevd ends a session (DAP ``terminated``, ~0.2 s after the attach) when
    ``threading`` lists no live non-daemon thread. When ``threading`` was first
    imported by our control thread while the main thread sat in a long C call
    (see ``_mainthread``), the thread ``threading`` calls "main" is that control
    thread, demoted to a daemon, and the real main thread is not listed at all:
    pydevd concludes the program has ended, though it has not, and every wake
    is undone a moment later. The stand-in is given pydevd's main-thread marker
    for exactly as long as it stands in: once the main thread runs Python again
    and ``_mainthread`` installs the real one, the marker is gone, so pydevd
    still notices the real end of the program (and never holds up exit).
    A no-op in the usual case, where the main thread is the real one.
    """
    main = threading.main_thread()
    if not main.daemon or isinstance(main, _StandInMain):
        return
    try:
        main.__class__ = type("_StandInMain", (_StandInMain, type(main)), {})
    except TypeError:
        pass  # an unusual thread class: pydevd may end sessions early, as before


class _StandInMain:
    """Mixin for the stand-in main thread; see :func:`keep_host_visible_to_pydevd`."""

    def __getattr__(self, name: str) -> Any:
        current: Any = threading.main_thread()
        if name == "__pydevd_main_thread" and current is self:
            return True
        raise AttributeError(name)


def _same(ref: weakref.ref[Any] | None, obj: Any) -> bool:
    return ref is not None and obj is not None and ref() is obj


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


def _default_daemon_factory(url: str, settings: Settings) -> Any:
    try:
        from .daemon import client_for
    except ImportError as exc:  # urllib3 missing or broken in this environment
        raise DaemonError(
            f"cannot load the daemon client ({exc}); install it in this environment: "
            "pip install urllib3"
        ) from None
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
        # Recent registration attempts (daemon, expected id, token), newest first:
        # whom to ask when a DAP client is found attached while we sleep.
        self._links: list[tuple[Any, str, str | None]] = []
        # Unregistrations still owed, for when the DAP session cannot be observed.
        self._pending_cleanup: list[tuple[Any, str, str | None]] = []
        self._keeper: threading.Thread | None = None
        self._keeper_lock = threading.Lock()
        self._keeper_event = threading.Event()
        self._closed = False
        self._generation = 0
        self._last_liveness = 0.0  # last look of any kind (rate-limits pokes)
        self._last_network = 0.0  # last read-back of our connection from the daemon
        self._next_retry = 0.0  # earliest next keeper wake attempt
        self._backoff = 0.5
        # The DAP session the daemon attached for the current registration.
        self._session: weakref.ref[Any] | None = None
        # A session already dealt with while asleep (we released it, or it is no daemon
        # of ours), and until when it is left alone: a session that outlives the
        # unregister that should have ended it is looked at again.
        self._settled: weakref.ref[Any] | None = None
        self._settled_until = 0.0
        # Sessions daemons of ours attached, whose sockets are closed once they end.
        self._past: list[weakref.ref[Any]] = []
        self._past_lock = threading.Lock()  # keeper and wake both touch it; no I/O under it
        self.control: Any = None  # the control server, set by the runtime
        #: The daemon's advertised URL, learnt at the last registration (None if it
        #: sent none): the wake result's and ``/detrix/discover``'s ``daemon_url``.
        self.daemon_advertise_url: str | None = None
        _debug_gate.set_policy(self._attach_expected)
        _debug_gate.set_daemon_url(lambda: self.cell.current.daemon_url)

    # -- reads ------------------------------------------------------------

    def _attach_expected(self) -> bool:
        """May a DAP client attach now? Only while we wake or are awake."""
        return not self._closed and self.cell.current.state is not State.SLEEPING

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
            "advertise_host": self.settings.advertise_host,
        }

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "python_version": sys.version.split()[0],
            "python_executable": sys.executable or "",
        }

    # -- transitions ------------------------------------------------------

    def warm(self) -> None:
        """Import what a wake needs now, so that the next wake skips it.

        That is debugpy (most of the cost) and the daemon client: urllib3 and
        ssl are a third of the rest of a wake after ``warm`` (measured in
        docs/performance.md). Nothing listens and nothing is traced.
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
        with self._op_lock:
            snap = self.cell.current
            if snap.state is State.AWAKE:
                return self._wake_result("already_awake", snap)
            try:
                result = self._wake_locked(daemon_url, send_token)
            except DetrixError:
                if self._pending_cleanup or self.debugger.listening:
                    self._ensure_keeper()  # watch for a registration that completes late
                raise
            self._want_awake = True
            self._wake_override = (daemon_url, send_token) if daemon_url else None
            self._ensure_keeper()
            return result

    def _resolve_daemon(self, override: str | None, send_token: bool) -> tuple[str, str | None]:
        configured = self.settings.daemon_url
        if configured is None:
            from .daemonfile import discover_daemon_url

            configured = discover_daemon_url()
        url = override.rstrip("/") if override else configured
        token = None
        if same_origin(url, configured) or send_token:
            from .token import load_token

            try:
                token = load_token(self.settings.token, self.settings.token_files)
            except DetrixError as exc:
                _log.warn(str(exc))
        return url, token

    def _wake_locked(
        self, override: str | None, send_token: bool, *, retry: bool = False
    ) -> dict[str, Any]:
        with quick_handoffs():
            return self._wake_with_handoffs(override, send_token, retry)

    def _wake_with_handoffs(
        self, override: str | None, send_token: bool, retry: bool
    ) -> dict[str, Any]:
        url, token = self._resolve_daemon(override, send_token)
        if retry:
            # A keeper retry: what went wrong stays said until it works.
            self.cell.update(state=State.WAKING, daemon_url=url)
        else:
            self.cell.update(state=State.WAKING, daemon_url=url, last_error=None)
        settings = self.settings
        try:
            daemon = self._daemon_factory(url, settings)
            daemon.health(settings.health_check_timeout)
            keep_host_visible_to_pydevd()
            port = self.debugger.listen(settings.debug_host, settings.debug_port)
            # From now on only a same-user peer, and only while we wake or are
            # awake, may attach to the debugger (see _debug_gate).
            _debug_gate.install()
            self.cell.update(debug_port=port, debug_port_active=True, warm=True)
            self.debugger.rearm()
            registration = self._registration(port)
            expected = expected_connection_id(
                registration.name, registration.workspace_root, registration.hostname
            )
            # Remembered before the call: a registration that times out here
            # may still complete on the daemon's side.
            self._remember_link(daemon, expected, token)
            try:
                connection_id = daemon.register(registration, token, settings.register_timeout)
            except DaemonError as exc:
                if exc.status is None:
                    # No answer: the daemon may still finish the attach. Clean it
                    # up once it answers, unless a later wake re-registers.
                    self._add_pending(daemon, expected, token)
                raise
        except DetrixError as exc:
            self._wake_failed(str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign failure becomes ours
            self._wake_failed(str(exc))
            raise DebuggerError(f"wake failed unexpectedly: {type(exc).__name__}: {exc}") from None
        self._pending_cleanup = [p for p in self._pending_cleanup if p[1] != connection_id]
        if connection_id != expected:
            self._remember_link(daemon, connection_id, token)
        self._daemon, self._token = daemon, token
        self.daemon_advertise_url = getattr(daemon, "advertise_url", None)
        # The daemon's ids are deterministic, so a re-registration reuses the
        # id: the generation tells one registration from the next.
        self._generation += 1
        session = dap_session(self.debugger)
        self._release_past()
        self._session = None if session is None or session is UNKNOWN else _weak(session)
        if self._session is not None:
            with self._past_lock:
                self._past.append(self._session)
        self._settled = None
        self._last_network = self._last_liveness = time.monotonic()
        snap = self.cell.update(state=State.AWAKE, connection_id=connection_id, last_error=None)
        return self._wake_result("awake", snap)

    def _wake_failed(self, message: str) -> None:
        self.debugger.disarm()
        # Still wanted awake (start_state=awake, or after a daemon restart): the
        # keeper retries, so "waking" is the truth.
        state = State.WAKING if self._want_awake else State.SLEEPING
        self.cell.update(state=state, connection_id=None, last_error=message)

    def _remember_link(self, daemon: Any, cid: str, token: str | None) -> None:
        key = (getattr(daemon, "url", None), cid)
        links = [link for link in self._links if (getattr(link[0], "url", None), link[1]) != key]
        links.insert(0, (daemon, cid, token))
        self._links = links[:_MAX_LINKS]

    def _add_pending(self, daemon: Any, cid: str, token: str | None) -> None:
        if not any(p[0] is daemon and p[1] == cid for p in self._pending_cleanup):
            self._pending_cleanup = [*self._pending_cleanup, (daemon, cid, token)][-_MAX_LINKS:]

    def _registration(self, port: int) -> Any:
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
        with self._op_lock:
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
        daemon, token, cid = self._daemon, self._token, snap.connection_id
        self._daemon = self._token = None
        session = dap_session(self.debugger)
        unregister_error: str | None = None
        if daemon is not None and cid:
            try:
                daemon.unregister(cid, token, self.settings.unregister_timeout)
            except DaemonError as exc:
                unregister_error = (
                    f"sleep could not unregister {cid} ({exc}); retrying in the background"
                )
                _log.warn(unregister_error)
                self._add_pending(daemon, cid, token)
            else:
                if session is not None and session is not UNKNOWN:
                    self._settle(session, foreign=False)  # ending: the daemon closes it
        self._session = None
        self.debugger.disarm()
        self.cell.update(state=State.SLEEPING, connection_id=None, last_error=unregister_error)
        self._keeper_event.set()  # let the keeper switch to the sleeping watch
        return {"status": "sleeping"}

    def keep_awake(self) -> None:
        """Wake in the background, retrying with backoff until it works (start_state=awake)."""
        self._want_awake = True
        self._next_retry = 0.0
        self.cell.update(state=State.WAKING)
        self._ensure_keeper()

    def poke(self) -> None:
        """Ask the keeper for a look soon (at most once a second); never blocks.

        The look itself is local and free (is the daemon's DAP session still
        there?); the daemon is asked over the network only every
        ``liveness_interval``, or at once when the local look cannot tell.
        """
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
        with self._keeper_lock:
            if self._keeper is not None and self._keeper.is_alive():
                return
            self._keeper = threading.Thread(target=self._keep, name="detrix-keeper", daemon=True)
            self._keeper.start()

    def _keeper_may_end(self) -> bool:
        """True (and the keeper forgotten) when nothing is left to watch."""
        with self._keeper_lock:
            if self._closed:
                return True
            if (
                self._want_awake
                or self.cell.current.state is not State.SLEEPING
                or self._pending_cleanup
            ):
                return False
            self._keeper = None
            return True

    def _keep(self) -> None:
        while not self._closed:
            try:
                delay = self._keep_once()
            except Exception as exc:  # noqa: BLE001 - the keeper must outlive any surprise
                _log.debug("keeper: unexpected %s: %s", type(exc).__name__, exc)
                delay = self.settings.liveness_interval
            if delay is None:
                return
            if delay > 0:
                self._keeper_event.wait(delay)
            self._keeper_event.clear()

    def _keep_once(self) -> float | None:
        """One look; returns how long to wait before the next, or None to end."""
        now = time.monotonic()
        self._last_liveness = now
        if self._pending_cleanup and dap_session(self.debugger) is UNKNOWN:
            self._cleanup_blind()
        if self._want_awake and self.cell.current.state is not State.AWAKE:
            if now < self._next_retry:
                return self._next_retry - now
            if self._try_wake():
                self._backoff = 0.5
                return self.settings.liveness_interval
            return self._back_off()
        if self._want_awake:
            return self._check_liveness(now)
        return self._watch_asleep()

    def _back_off(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.settings.wake_retry_max)
        self._next_retry = time.monotonic() + delay
        return delay

    def _try_wake(self) -> bool:
        override, send_token = self._wake_override or (None, True)
        if not self._op_lock.acquire(blocking=False):
            return False
        try:
            if not self._want_awake or self.cell.current.state is State.AWAKE:
                return True
            self._wake_locked(override, send_token, retry=True)
            _log.info("keeper: awake again as %s", self.name)
            return True
        except DetrixError as exc:
            if self._want_awake:
                self.cell.update(state=State.WAKING, last_error=str(exc))
            _log.debug("keeper: wake attempt failed: %s", exc)
            return False
        finally:
            self._op_lock.release()

    def _check_liveness(self, now: float) -> float:
        """Awake: is our connection still attached on the daemon's side?

        Locally first, for free: the DAP session the daemon attached when we
        registered has ended, so the daemon stopped, restarted or dropped us.
        Over the network every ``liveness_interval`` (or at once when the local
        look cannot tell): the daemon's read-back of our connection. A daemon
        that does not answer while its DAP session is still attached leaves us
        awake, with the trouble in ``last_error``.
        """
        interval = self.settings.liveness_interval
        daemon, token, generation = self._daemon, self._token, self._generation
        cid = self.cell.current.connection_id
        if daemon is None or cid is None:
            return interval
        ours = self._session
        session = dap_session(self.debugger)
        local_ok = _same(ours, session)
        lost: str | None = None
        if ours is not None and session is None:
            lost = (
                "the daemon's debug connection closed (the daemon stopped, restarted or "
                "dropped this connection)"
            )
        elif local_ok and now - self._last_network < interval:
            return max(0.05, self._last_network + interval - now)
        else:
            self._last_network = now
            try:
                row = daemon.connection(cid, token, self.settings.health_check_timeout)
            except DaemonError as exc:
                if local_ok:
                    self._note_awake(
                        generation,
                        f"daemon not answering the liveness check ({exc}); its debug "
                        "connection is still attached",
                    )
                    return interval
                lost = f"daemon lost: {exc}"
            else:
                status = row.get("status") if isinstance(row, dict) else None
                if row is not None and status in _HELD:
                    if not local_ok and session is not None and session is not UNKNOWN:
                        self._session = _weak(session)  # the daemon re-attached by itself
                    self._note_awake(generation, None)
                    return interval
                lost = "the daemon no longer holds this connection (restarted or dropped it)"
        with self._op_lock:
            snap = self.cell.current
            if generation != self._generation or snap.state is not State.AWAKE:
                return 0.0  # slept or re-registered meanwhile: that answer is stale
            if not self._want_awake:
                return 0.0
            self._daemon = self._token = None
            self._release_past()
            self._session = None
            self._backoff = 0.5
            self._next_retry = 0.0
            self.cell.update(state=State.WAKING, connection_id=None, last_error=lost)
        _log.warn(f"{lost}; re-registering when it answers")
        return 0.0

    def _note_awake(self, generation: int, message: str | None) -> None:
        snap = self.cell.current
        stale = generation != self._generation or snap.state is not State.AWAKE
        if not stale and snap.last_error != message:
            self.cell.update(last_error=message)

    def _watch_asleep(self) -> float | None:
        """Asleep: no daemon may stay attached to us. Returns the next delay, None to end."""
        interval = self.settings.liveness_interval
        session = dap_session(self.debugger)
        if session is UNKNOWN:
            # Cannot see the session: owed unregistrations are retried blind
            # (at the top of _keep_once) and nothing else is watched.
            if self._pending_cleanup:
                return self._back_off()
            return None if self._keeper_may_end() else 0.0
        if session is None:
            # Nothing attached: whatever we still owed the daemon is detached.
            if self._pending_cleanup:
                self._pending_cleanup = []
                snap = self.cell.current
                if snap.state is State.SLEEPING and (snap.last_error or "").startswith(
                    "sleep could not unregister"
                ):
                    self.cell.update(last_error=None)  # it is detached now after all
            self._release_past()
            self._settled = None
            self._backoff = 0.5
            if self.debugger.listening:
                return interval  # a restarted daemon may re-attach at any time
            return None if self._keeper_may_end() else 0.0
        if _same(self._settled, session) and time.monotonic() < self._settled_until:
            return interval
        return self._detach_stray(session)

    def _detach_stray(self, session: Any) -> float:
        """A DAP client is attached while we sleep: if it is a daemon we registered
        with (one that restarted and re-attached, or a registration that timed out
        here and completed there), ask it to detach; leave any other debugger be.
        """
        interval = self.settings.liveness_interval
        self._release_past()
        held: list[tuple[Any, str, str | None]] = []
        failed = False
        for daemon, cid, token in list(self._links):
            try:
                row = daemon.connection(cid, token, self.settings.health_check_timeout)
            except DaemonError:
                failed = True
                continue
            if isinstance(row, dict) and row.get("status") in _HELD:
                held.append((daemon, cid, token))
        detached: list[str] = []
        if held:
            with self._op_lock:
                if self.cell.current.state is not State.SLEEPING or self._want_awake:
                    return 0.0  # a wake started meanwhile: that session may be its own
                for daemon, cid, token in held:
                    try:
                        daemon.unregister(cid, token, self.settings.unregister_timeout)
                    except DaemonError:
                        failed = True
                    else:
                        detached.append(cid)
                        self._pending_cleanup = [
                            p for p in self._pending_cleanup if p[1] != cid or p[0] is not daemon
                        ]
                if detached:
                    self.cell.update(
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
            return self._back_off()
        self._backoff = 0.5
        self._settle(session, foreign=not detached)
        return interval

    def _release_past(self) -> None:
        """Close the sockets of ended sessions of ours (see :func:`release_ended`)."""
        with self._past_lock:
            ended = [ref for ref in self._past if not _still_running(ref)]
            self._past = [ref for ref in self._past if ref not in ended][-_MAX_LINKS:]
        for ref in ended:
            release_ended(ref)

    def _settle(self, session: Any, *, foreign: bool) -> None:
        """Leave ``session`` alone for a while: briefly if a daemon of ours was asked
        to close it (it should), ten times longer if none of ours holds it (another
        debugger; looked at again in case one of ours was only slow to say so)."""
        self._settled = ref = _weak(session)
        if not foreign and ref is not None:
            with self._past_lock:
                if not any(r() is session for r in self._past):
                    self._past.append(ref)
        grace = max(1.0, self.settings.liveness_interval) * (10 if foreign else 1)
        self._settled_until = time.monotonic() + grace

    def _cleanup_blind(self) -> None:
        """Retry owed unregistrations when the DAP session cannot be observed."""
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
