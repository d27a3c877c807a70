"""debugpy on demand: one gated listener per process, and tracing only while needed.

This module is policy; every private debugpy/pydevd access it relies on is in
``_pydevd`` (probed once, never raising), and the listening socket with its
gate is ``_debug_gate``.

debugpy is imported only on wake (or on ``warm``). ``debugpy.listen()`` can be
called once per process and its listener cannot be closed, so this module
remembers the one port it opened and reports ``debug_port_active`` from that:
with the in-process adapter the listener lives and dies with this process, so
no probe is needed (and a probe would be mistaken for a DAP client, see
CONTRACT.md section 7). The adapter runs in-process
(``in_process_debug_adapter=True``): it answers the daemon's attach faster
than the separate adapter process, and spawns no child interpreter that would
inherit ``DETRIX_ENABLE``.

Listen
------
We bind the socket ourselves (a taken port or an unusable host is a clear
error at once, never a ``listen()`` that waits forever), hand it to pydevd, and
read the port from our own socket (debugpy before 1.8.22 returns nothing from
``listen()``). ``listen()`` itself runs on a helper thread, waited for a
bounded time.

Disarm and rearm
----------------
``listen()`` installs pydevd's tracer for good: on 3.10/3.11 (``sys.settrace``)
pure-Python code then runs 2-4x slower for the rest of the process's life. And
with the in-process adapter a daemon that just closes its socket (which is
what unregister does) leaves pydevd half-attached: the logpoints stay
installed and keep being evaluated, output stays redirected, and every event
is queued for a writer whose socket is gone.

:meth:`Debugger.disarm` (called by ``sleep()`` and by a failed wake) undoes
all of it once no DAP client is attached (``_pydevd.forget_session``), then
stops tracing (``_pydevd.stop_tracing``). :meth:`Debugger.rearm` (called by
``wake()`` before registering) re-applies tracing the way ``pydevd.settrace``
does on the first listen. If a DAP client attaches while disarmed (only
possible while a wake is under way: the gate refuses everyone else), a
DAP-message listener re-arms on its ``initialize`` and a watcher disarms again
once it leaves, so logpoints always work while a client is attached and
nothing is traced while none is.

Nothing here raises but :meth:`prepare` and :meth:`listen` (with a
:class:`~detrix_auto.errors.DebuggerError`): failures are logged, and the
worst case is the behaviour of debugpy alone (tracing stays on).
"""

from __future__ import annotations

import threading
from typing import Any

from . import _debug_gate, _log, _native, _pydevd
from .errors import DebuggerError

__all__ = ["DETACH_WAIT", "LISTEN_TIMEOUT", "Debugger"]

#: How long ``disarm()`` waits for pydevd to notice that the daemon closed its
#: socket (the daemon closes it before answering the unregister).
DETACH_WAIT = 0.5
#: How long ``debugpy.listen()`` may take once our socket is ready (it takes
#: milliseconds; it is bounded so that a wake can never hang in it).
LISTEN_TIMEOUT = 10.0

#: Oldest and newest debugpy this release was tested with (docs/compatibility).
SUPPORTED_DEBUGPY = "debugpy 1.8.0 to 1.8.x"


class Debugger:
    """The process's single debug listener."""

    def __init__(self) -> None:
        self._lock = _native.RLock()
        self._module: Any = None
        self.host = ""
        self.port = 0
        #: Set in a forked child whose parent had already opened the listener.
        self.forked_after_listen = False
        #: Why no listener can ever be opened in this process (a listen that timed out).
        self.broken: str | None = None
        #: Is pydevd's tracer in place (it is right after ``listen()``)?
        self.armed = False
        #: What the client wants: traced while awake, not while asleep.
        self._want_armed = True
        self._watching: Any = None  # the session a watcher thread waits for

    @property
    def imported(self) -> bool:
        return self._module is not None

    @property
    def listening(self) -> bool:
        return self.port != 0

    def capabilities(self) -> _pydevd.Capabilities | None:
        """What this debugpy offers, once imported (for ``status`` and ``doctor``)."""
        return _pydevd.capabilities() if self._module is not None else None

    def session(self) -> Any:
        """The attached DAP session, ``None``, or ``_pydevd.UNKNOWN`` (see there)."""
        if not self.listening:
            return None
        return _pydevd.current_session()

    def prepare(self) -> Any:
        """Import debugpy and the debugger core it loads on listen (the warm state)."""
        with self._lock:
            return self._prepare_locked()

    def _prepare_locked(self) -> Any:
        if self._module is not None:
            return self._module
        _native.settle_platform()  # before debugpy's import asks for it, under gevent
        try:
            debugpy = _pydevd.import_debugpy()
        except ModuleNotFoundError as exc:
            if not _pydevd.is_debugpy_missing(exc):
                raise _import_failed(exc) from None
            raise DebuggerError(
                "cannot import debugpy: it is not installed for this interpreter; install it "
                "in the same environment as detrix-auto: pip install debugpy"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any import failure means "no debugger"
            raise _import_failed(exc) from None
        self._module = debugpy
        _pydevd.capabilities()  # probe once, now, before anything relies on it
        return debugpy

    def listen(self, host: str, port: int) -> int:
        """Open the gated listener once; later calls return the port already open."""
        with self._lock:
            if self.port:
                return self.port
            if self.forked_after_listen:
                raise DebuggerError(
                    "this process was forked after its parent opened the debugger, and debugpy "
                    "cannot listen again in a fork; wake the parent, or wake workers before "
                    "the parent is ever woken"
                )
            if self.broken:
                raise DebuggerError(self.broken)
            debugpy = self._prepare_locked()
            caps = _pydevd.capabilities()
            if not caps.has("gate"):
                raise DebuggerError(
                    f"debugpy {caps.debugpy_version} is not supported: {caps.missing['gate']}; "
                    f"detrix-auto opens no debugger it cannot restrict to this user "
                    f"(supported: {SUPPORTED_DEBUGPY})"
                )
            listener = _debug_gate.open_listener(host, port)
            taken = _pydevd.hand_listener(listener)
            if taken is None:  # the probe said yes a moment ago: only if pydevd changed under us
                listener.close()
                raise DebuggerError("debugpy's listener cannot be gated; not listening")
            _pydevd.quiet_first_listen()
            _pydevd.guard_thread_tracing()
            try:
                self._listen_bounded(debugpy, listener, taken)
            finally:
                _pydevd.listener_taken_back(taken)
            self.host, self.port = listener.host, listener.port
            self.armed = True
            self._want_armed = True
            _pydevd.install_hooks(self._on_client_initialize)
            self._register_exit_hook()
            _pydevd.trace_main_thread_itself()
            return self.port

    def _listen_bounded(self, debugpy: Any, listener: Any, taken: _native.Event) -> None:
        """``debugpy.listen()`` on a helper thread, waited for at most ``LISTEN_TIMEOUT``."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                debugpy.listen((listener.host, listener.port), in_process_debug_adapter=True)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
                outcome.append(exc)

        thread = _native.Thread(run, "detrix-listen")
        _pydevd.not_traced(thread)
        thread.start()
        thread.join(LISTEN_TIMEOUT)
        if not outcome:
            self.broken = (
                f"debugpy.listen() did not finish within {LISTEN_TIMEOUT:g} s; the debugger of "
                "this process is unusable until it restarts"
            )
            raise DebuggerError(self.broken)
        error = outcome[0]
        if error is not None:
            if not taken.is_set():
                listener.close()  # never handed over: still only ours
            raise DebuggerError(
                f"debugpy could not listen on {listener.host}:{listener.port} "
                f"({type(error).__name__}: {error})"
            )
        if not taken.wait(LISTEN_TIMEOUT):
            self.broken = "pydevd never took the debug listener handed to it"
            raise DebuggerError(self.broken)

    def _register_exit_hook(self) -> None:
        """Unblock pydevd's non-daemon CheckAliveThread before threading joins it."""
        register = getattr(threading, "_register_atexit", None)
        if register is None:
            return
        try:
            register(self._before_exit)
        except Exception as exc:  # noqa: BLE001 - at worst exit waits for pydevd
            _log.debug("could not register the exit hook: %s", exc)

    def _before_exit(self) -> None:
        _pydevd.release_at_exit()

    # -- disarm / rearm ---------------------------------------------------------

    def disarm(self) -> None:
        """Stop tracing the host while no DAP client is attached. Never raises.

        Idempotent. If a client is still attached (after waiting briefly for the
        daemon's socket close to reach pydevd), a watcher thread disarms once it
        leaves, unless a wake wants tracing back first.
        """
        try:
            with self._lock:
                self._want_armed = False
                if not self.port or self._module is None:
                    return
                if not self.armed and self.session() is None:
                    # Already disarmed; still drop anything a late event queued.
                    _pydevd.drop_dead_writer()
                    return
            session = _pydevd.wait_detached(DETACH_WAIT)
            if session is not None:
                _log.debug("disarm: a DAP client is still attached; disarming when it leaves")
                self._watch(session)
                return
            with self._lock:
                if self._want_armed:
                    return  # a wake came in meanwhile
                self._disarm_locked()
        except Exception as exc:  # noqa: BLE001 - must never fail sleep()
            _log.warn(
                f"could not stop debugpy's tracing after sleep ({type(exc).__name__}: "
                f"{exc}); the application runs on, possibly slower"
            )

    def rearm(self) -> None:
        """Undo :meth:`disarm` before the daemon attaches again. Never raises."""
        with self._lock:
            self._want_armed = True
            if not self.port or self.armed:
                return
            self._arm_locked()

    def _watch(self, session: Any) -> None:
        with self._lock:
            if self._watching is session:
                return
            self._watching = session
        thread = _native.Thread(self._disarm_after, "detrix-disarm", (session,))
        _pydevd.not_traced(thread)
        thread.start()

    def _disarm_after(self, session: Any) -> None:
        try:
            session.join()
            with self._lock:
                if self._watching is session:
                    self._watching = None
                if self._want_armed or self.session() not in (None, _pydevd.UNKNOWN):
                    return
                self._disarm_locked()
        except Exception as exc:  # noqa: BLE001 - a background thread must stay quiet
            _log.debug("disarm watcher failed: %s", exc)

    def _disarm_locked(self) -> None:
        _pydevd.forget_session()
        if not self.armed:
            return
        if _pydevd.stop_tracing():
            self.armed = False
            _log.debug("disarm: debugpy's tracing stopped")

    def _arm_locked(self) -> None:
        if _pydevd.start_tracing():
            self.armed = True
            _log.debug("rearm: debugpy's tracing re-applied")
        else:
            _log.warn(
                "could not re-enable debugpy's tracing; logpoints may not report until the "
                "process restarts"
            )

    def _on_client_initialize(self) -> None:
        """A DAP client started a session (runs on pydevd's reader thread)."""
        try:
            with self._lock:
                if self.armed:
                    return
                self._arm_locked()
                stray = not self._want_armed
            if stray:
                # Attached without a wake: trace while it stays, stop when it goes.
                self._watch(threading.current_thread())
        except Exception as exc:  # noqa: BLE001 - never break pydevd's reader
            _log.debug("rearm on attach failed: %s", exc)


def _import_failed(exc: BaseException) -> DebuggerError:
    """debugpy is installed but its import failed: say what failed, not "install it"."""
    hint = ""
    if _native.gevent_patched():
        hint = (
            "; gevent has monkey-patched this process, and debugpy was imported in pydevd's "
            "gevent mode (GEVENT_SUPPORT=True): report this with your gevent and debugpy "
            "versions, or import debugpy in the main thread before the first wake"
        )
    return DebuggerError(
        f"debugpy is installed but failed to import ({type(exc).__name__}: {exc}); the "
        f"debugger cannot start in this process{hint}"
    )
