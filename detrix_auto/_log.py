"""detrix-auto's own voice: one-line warnings, and a logger loaded only when used.

``logging`` costs milliseconds to import, so nothing on the start-up path
touches it. Warnings are single lines on stderr starting with ``detrix-auto:``
(principle 1: the host sees one clear line and nothing else). Everything else
goes to the ``detrix_auto`` logger, which prints only when ``DETRIX_LOG_LEVEL``
asks for it or the host configured logging itself.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["audit", "configure", "debug", "info", "warn"]

_LEVEL = "off"


def warn(message: str) -> None:
    """One line on stderr; never raises, even with a closed or broken stderr."""
    line = "detrix-auto: " + " ".join(str(message).split()) + "\n"
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(line)
            stream.flush()
    except Exception:  # noqa: BLE001, S110 - a broken stderr must not break the host
        pass
    if _LEVEL not in ("off",):
        _logger("detrix_auto").warning("%s", message)


def configure(level: str) -> None:
    """Attach a stderr handler to the ``detrix_auto`` logger for ``DETRIX_LOG_LEVEL``."""
    global _LEVEL
    _LEVEL = level
    if level == "off":
        return
    import logging

    logger = logging.getLogger("detrix_auto")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_detrix_auto", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("detrix-auto: %(levelname)s %(name)s: %(message)s"))
        handler._detrix_auto = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def _logger(name: str) -> Any:
    import logging

    return logging.getLogger(name)


def debug(message: str, *args: object) -> None:
    if _LEVEL == "debug" or "logging" in sys.modules:
        _logger("detrix_auto").debug(message, *args)


def info(message: str, *args: object) -> None:
    if _LEVEL in ("info", "debug") or "logging" in sys.modules:
        _logger("detrix_auto").info(message, *args)


def audit(message: str, *args: object) -> None:
    """Who woke or put to sleep the debugger, or attached to it: ``detrix_auto.audit``.

    Like :func:`info`, it loads ``logging`` only when something could print the
    record: ``DETRIX_LOG_LEVEL``, or a host that imported ``logging`` (to configure
    it). Otherwise the record would be dropped all the same (no handler, and the
    root logger's level is WARNING), and importing ``logging`` inside the debug
    listener's ``accept`` added 5-20 ms to every cold wake's attach.
    """
    if _LEVEL != "off" or "logging" in sys.modules:
        _logger("detrix_auto.audit").info(message, *args)
