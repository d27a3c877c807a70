"""The ``DETRIX_*`` variables of this shell: is each understood, and do they fit together?

Apart because it only reads the environment and ``config``: no file, socket or
process is looked at.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Mapping

from ...config import ENV_NAMES, parse_bool, parse_enable, resolve
from ...errors import ConfigError
from .findings import Finding

#: Variables detrix-auto reads besides the options of ``config``.
EXTRA_VARS = {
    "DETRIX_ENABLE": "switches the start-up hook on",
    "DETRIX_STRICT": "configuration errors end the process (for CI)",
    "DETRIX_CHILDREN": "0 keeps child processes from activating",
    "DETRIX_ONLY_PID": "set by detrix-auto itself for DETRIX_CHILDREN=0",
    "DETRIX_AUTO_PATH": "set by `detrix-auto run` for the sitecustomize shim",
}


def check_settings(
    env: Mapping[str, str], *, python: str = "python", pid: int | None = None
) -> list[Finding]:
    """``DETRIX_*`` of this shell; ``python`` is the interpreter to name in advice.

    With ``pid``, a process that runs already is examined: its own environment
    counts, so an unset ``DETRIX_ENABLE`` here is a fact, not a problem.
    """
    found: list[Finding] = []
    bad = 0
    raw = env.get("DETRIX_ENABLE")
    enabled = parse_enable(raw)
    command = f"DETRIX_ENABLE=1 {shlex.quote(python)} app.py"
    if enabled is None:
        bad += 1
        found.append(
            Finding(
                "enable",
                "error",
                f"DETRIX_ENABLE={raw!r} is not understood, so the hook stays off",
                "use DETRIX_ENABLE=1 (or true/yes/on) to enable, 0 (or false/no/off) to disable",
            )
        )
    elif enabled:
        found.append(
            Finding("enable", "ok", f"DETRIX_ENABLE={raw}: programs started from here activate")
        )
    elif pid is not None:
        shown = "is not set" if raw is None else f"is {raw!r}"
        found.append(
            Finding(
                "enable",
                "ok",
                f"DETRIX_ENABLE {shown} in this shell; process {pid} runs with its own "
                "environment (see below)",
            )
        )
    else:
        shown = "is not set" if raw is None else f"={raw!r} switches it off"
        found.append(
            Finding(
                "enable",
                "warn",
                f"DETRIX_ENABLE {shown} here: programs started from this shell do not activate",
                f"start the program with {command}, or `detrix-auto run -- "
                f"{shlex.quote(python)} app.py`",
            )
        )
    for name in sorted(ENV_NAMES.values()):
        value = env.get(name)
        if value is None or not value.strip():
            continue
        try:
            notes = resolve({}, {name: value}).notes
        except ConfigError as exc:
            bad += 1
            found.append(
                Finding(f"config:{name}", "error", str(exc), f"correct {name} or unset it")
            )
        else:
            found.extend(
                Finding(f"config:{name}", "warn", note, f"correct {name} or unset it")
                for note in notes
            )
    for name in ("DETRIX_STRICT", "DETRIX_CHILDREN"):
        value = env.get(name)
        if value is not None and value.strip():
            try:
                parse_bool(value, name)
            except ConfigError as exc:
                bad += 1
                found.append(
                    Finding(f"config:{name}", "error", str(exc), f"correct {name} or unset it")
                )
    known = set(ENV_NAMES.values()) | set(EXTRA_VARS)
    for name in sorted(k for k in env if k.startswith("DETRIX_") and k not in known):
        if name.startswith("DETRIX_TEST_"):
            continue
        guess = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean {guess[0]}?" if guess else "detrix-auto does not read it"
        found.append(
            Finding(
                f"config:{name}",
                "warn",
                f"{name} is not a detrix-auto variable",
                f"{hint} (unset it if it is not meant for another program)",
            )
        )
    if not bad:
        try:
            combined = resolve({}, env)
        except ConfigError as exc:
            found.append(Finding("config", "error", str(exc), "change one of the two settings"))
        else:
            single = {n for n in ENV_NAMES.values() if env.get(n, "").strip()}
            found.extend(
                Finding("config", "warn", note, "change one of the two settings")
                for note in combined.notes
                if not any(note.startswith(f"{n}=") for n in single)
            )
            used = sorted(name for name in ENV_NAMES.values() if env.get(name, "").strip())
            listed = ", ".join(used) if used else "none set; defaults apply"
            found.append(Finding("config", "ok", f"DETRIX_* settings are valid ({listed})"))
    return found
