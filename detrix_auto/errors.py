"""The library's own error types.

Only these escape the public API: every ``OSError``, ``ssl.SSLError``,
``json.JSONDecodeError`` and the like is caught at the edge where it happens
and re-raised as one of these, with a message that says what to fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ControlPlaneError",
    "DaemonConnectionError",
    "DaemonError",
    "DebuggerError",
    "DetrixError",
]


class DetrixError(Exception):
    """Base of every error detrix-auto raises on purpose."""


class ConfigError(DetrixError):
    """A setting (argument or ``DETRIX_*`` variable) has a value we cannot use."""


class DaemonError(DetrixError):
    """The Detrix daemon could not be reached, refused us, or answered nonsense.

    ``status`` is the HTTP status the daemon answered with, when it answered.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DebuggerError(DetrixError):
    """debugpy could not be imported or could not open its listener."""


class ControlPlaneError(DetrixError):
    """The control plane could not bind or serve."""


#: Kept for code written against the original client.
DaemonConnectionError = DaemonError
