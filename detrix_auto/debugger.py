"""debugpy on demand, and the truth about its listener.

debugpy is imported only on wake (or on ``warm``). ``debugpy.listen()`` can be
called once per process and its listener cannot be closed, so this module
remembers the one port it opened and reports ``debug_port_active`` from that:
with the in-process adapter the listener lives and dies with this process, so
no probe is needed (and a probe would be mistaken for a DAP client, see
CONTRACT.md section 7).

The adapter runs in-process (``in_process_debug_adapter=True``): it answers the
daemon's attach faster than the separate adapter process, and it spawns no
child interpreter that would inherit ``DETRIX_ENABLE``. See docs/performance.md.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from .errors import DebuggerError

__all__ = ["Debugger"]


class Debugger:
    """The process's single debug listener."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self.host = ""
        self.port = 0
        #: Set in a forked child whose parent had already opened the listener.
        self.forked_after_listen = False

    @property
    def imported(self) -> bool:
        return self._module is not None

    @property
    def listening(self) -> bool:
        return self.port != 0

    def prepare(self) -> Any:
        """Import debugpy and the debugger core it loads on listen (the warm state)."""
        with self._lock:
            return self._prepare_locked()

    def _prepare_locked(self) -> Any:
        if self._module is not None:
            return self._module
        # pydevd otherwise prints a frozen-modules warning on the host's stderr.
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        try:
            import debugpy

            # Loading the server side now is what makes a later listen() fast.
            import debugpy.server.api
        except Exception as exc:  # noqa: BLE001 - any import failure means "no debugger"
            raise DebuggerError(
                f"cannot import debugpy ({type(exc).__name__}: {exc}); "
                "install it in this environment: pip install debugpy"
            ) from None
        self._module = debugpy
        return debugpy

    def listen(self, host: str, port: int) -> int:
        """Open the listener once; later calls return the port already open."""
        with self._lock:
            if self.port:
                return self.port
            if self.forked_after_listen:
                raise DebuggerError(
                    "this process was forked after its parent opened the debugger, and debugpy "
                    "cannot listen again in a fork; wake the parent, or wake workers before "
                    "the parent is ever woken"
                )
            debugpy = self._prepare_locked()
            try:
                bound = debugpy.listen((host, port), in_process_debug_adapter=True)
            except Exception as exc:  # noqa: BLE001 - debugpy raises RuntimeError, OSError, ...
                raise DebuggerError(
                    f"debugpy could not listen on {host}:{port} ({type(exc).__name__}: {exc}); "
                    "choose another DETRIX_DEBUG_PORT or leave it at 0"
                ) from None
            try:
                self.host, self.port = str(bound[0]), int(bound[1])
            except (TypeError, ValueError, IndexError):
                raise DebuggerError(f"debugpy.listen returned {bound!r}, not a port") from None
            return self.port

    def disarm(self) -> None:
        """Best effort: stop tracing the host while nobody is attached.

        Filled in by the runtime-overhead work (docs/performance.md); until then
        the tracer debugpy installs stays, as with the original client.
        """

    def rearm(self) -> None:
        """Undo :meth:`disarm` before the daemon attaches again."""


def pydevd_loaded() -> bool:
    return "pydevd" in sys.modules
