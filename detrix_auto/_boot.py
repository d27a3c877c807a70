"""The start-up gate, run from site-packages by ``detrix_auto.pth``.

Rules, in order of importance:

1. Never harm the host: nothing escapes (``BaseException`` included, since a
   ``SystemExit`` from a ``.pth`` line would end the interpreter), nothing is
   written to stdout, and any failure is one ``detrix-auto:`` line on stderr.
   ``DETRIX_STRICT=1`` is the one exception: configuration errors then end
   the process with exit status 2, for CI.
2. Run once: a venv's site-packages can be processed twice (CPython gh-75723).
3. Cost almost nothing: only modules the interpreter already has, plus
   ``_socket`` and ``_thread``.

Why a ``.pth`` import line and no PEP 829 ``.start`` file: the line checks
``DETRIX_ENABLE`` itself and imports nothing while disabled, and Python 3.15
still runs it. A ``.start`` file would make 3.15 skip that line and resolve the
entry with ``pkgutil`` and ``re`` in every interpreter of the environment, then
import this package: about 10 ms per start even when disabled (measured in
``bench/performance.py``). Python 3.18 is to ignore ``.pth`` import lines; a
``.start`` file is needed from then on, and ``doctor`` says so.
"""

from __future__ import annotations

import os
import sys

__all__ = ["start_from_site"]

_ran = False

#: Interpreters that must never activate: debugpy's adapter and launcher (run as
#: a directory or as a module), and pydevd run as a program (its own helpers).
_HELPER_MODULES = ("debugpy.adapter", "debugpy.launcher")
_HELPER_DIRS = (("debugpy", "adapter"), ("debugpy", "launcher"))
_HELPER_SCRIPT = "pydevd.py"


def start_from_site() -> None:
    """Entry point of the ``.pth`` line (and of the sitecustomize shim)."""
    global _ran
    if _ran:
        return
    _ran = True
    try:
        _start()
    except SystemExit:
        raise  # only ever raised on purpose, in strict mode
    except BaseException as exc:  # noqa: BLE001 - the host must run on
        _warn(f"start-up failed ({type(exc).__name__}: {exc}); the application runs without it")


def _warn(message: str) -> None:
    from . import _log

    _log.warn(message)


def _strict() -> bool:
    return os.environ.get("DETRIX_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


def _start() -> None:
    from .config import parse_enable

    raw = os.environ.get("DETRIX_ENABLE")
    enabled = parse_enable(raw)
    if enabled is None:
        _fail_config(
            f"DETRIX_ENABLE={raw!r} is not understood: use 1/true/yes/on to enable or "
            "0/false/no/off to disable; staying off"
        )
        return
    if not enabled or _is_helper_interpreter():
        return
    only = os.environ.get("DETRIX_ONLY_PID")
    if only and only != str(os.getpid()):
        return  # a child of a process started with DETRIX_CHILDREN=0
    children = os.environ.get("DETRIX_CHILDREN", "").strip().lower()
    if children in ("0", "false", "no", "off"):
        os.environ["DETRIX_ONLY_PID"] = str(os.getpid())
    from .config import resolve
    from .errors import ConfigError, DetrixError

    try:
        settings = resolve()
    except ConfigError as exc:
        _fail_config(f"{exc}; the application runs without detrix-auto")
        return
    for note in settings.notes:
        _warn(note)
    from . import _runtime

    try:
        _runtime.start(settings)
    except DetrixError as exc:
        _fail_config(f"{exc}; the application runs without detrix-auto")


def _fail_config(message: str) -> None:
    if _strict():
        _warn(
            message.replace("; the application runs without detrix-auto", "").replace(
                "; staying off", ""
            )
            + " (DETRIX_STRICT=1: exiting)"
        )
        try:
            sys.stdout.flush()
        finally:
            os._exit(2)
    _warn(message)


def _is_helper_interpreter() -> bool:
    """Whether this interpreter runs one of debugpy's helpers, judged by whole
    arguments: a program whose path merely contains "pydevd" or "debugpy"
    (``~/pydevd-notes/app.py``) is the user's and activates."""
    argv = getattr(sys, "orig_argv", None) or sys.argv
    for arg in argv[1:]:
        if arg in _HELPER_MODULES:
            return True
        parts = tuple(part for part in arg.replace("\\", "/").split("/") if part)
        if parts[-1:] == (_HELPER_SCRIPT,) or parts[-2:] in _HELPER_DIRS:
            return True
    return False
