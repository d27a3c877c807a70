"""The library's own error types.

Only these escape the public API: every ``OSError``, ``ssl.SSLError``,
``json.JSONDecodeError`` and the like is caught at the edge where it happens
and re-raised as one of these, with a message that says what to fix.
"""

from __future__ import annotations

__all__ = [
    "AlreadyInitializedError",
    "ConfigError",
    "ControlPlaneError",
    "DaemonConnectionError",
    "DaemonError",
    "DebuggerError",
    "DetrixError",
    "NotInitializedError",
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


class AlreadyInitializedError(ConfigError):
    """``init()`` while a client already runs in this process.

    A :class:`ConfigError`, as in the original client, so code that catches
    that keeps working.
    """


class NotInitializedError(DaemonError):
    """``wake()`` before ``init()`` (and without ``DETRIX_ENABLE``): no daemon is configured.

    A :class:`DaemonError` because code written for the original client guards
    ``wake()`` with ``except DaemonError`` (its own example does), and there a
    wake without a configured daemon failed with that type.
    """


class DebuggerError(DetrixError):
    """debugpy could not be imported or could not open its listener."""


class ControlPlaneError(DetrixError):
    """The control plane could not bind or serve."""


#: Kept for code written against the original client.
DaemonConnectionError = DaemonError
