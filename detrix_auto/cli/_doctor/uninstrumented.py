"""A process with neither discovery record nor control plane: why did it not activate?

Walked in the order the start-up hook itself decides: ``DETRIX_ENABLE``,
``-S``, ``DETRIX_CHILDREN``, its settings, then its interpreter's hook files,
asked by running :data:`~.findings.PROBE` in that interpreter with the
process's environment and flags. Apart from ``process`` because it is the
longest path, and the only one that runs another interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from ...config import parse_enable, resolve
from ...errors import ConfigError
from .._common import shell_join
from .._procfs import _proc_read, interpreter_flags
from .._run import shim_dir
from .findings import PROBE, Finding


def _check_uninstrumented(
    pid: int, env: dict[str, str] | None, unsearched: str = ""
) -> list[Finding]:
    """Why a process with neither record nor control plane did not activate.

    ``unsearched`` says why its sockets could not be searched; then nothing
    is claimed about them.
    """
    found: list[Finding] = []
    raw_cmd = _proc_read(pid, "cmdline")
    argv = [a.decode("utf-8", "replace") for a in (raw_cmd or b"").split(b"\0") if a]
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    if env is None:
        return [
            Finding(
                "process",
                "error",
                f"process {pid} has no discovery record, and its environment and sockets cannot "
                "be read (another user's process?)",
                "run doctor as the user who owns it; only your own processes can be observed",
            )
        ]
    label = f"process {pid} ({shell_join(argv)[:80] or exe or '?'})"
    names = [os.path.basename(exe), os.path.basename(argv[0]) if argv else ""]
    if not any("python" in n or "pypy" in n for n in names):
        return [
            Finding(
                "process",
                "error",
                f"{label} has no discovery record and does not look like a Python "
                f"interpreter ({exe or 'unknown executable'})",
                "give the pid of the Python process itself",
            )
        ]
    if unsearched:
        found.append(
            Finding(
                "process",
                "warn",
                f"{label} has no discovery record, and its sockets could not be searched for a "
                f"control plane ({unsearched}); if it is not instrumented, the findings below "
                "say why",
                "run doctor where the process runs (its namespace), or reach it by its control URL",
            )
        )
    else:
        found.append(
            Finding(
                "process",
                "error",
                f"{label} has no discovery record and no detrix-auto control plane among its "
                "listening sockets: it is not instrumented",
                "see the findings below for why",
            )
        )
    enabled = parse_enable(env.get("DETRIX_ENABLE"))
    if not enabled:
        why = (
            "without DETRIX_ENABLE"
            if env.get("DETRIX_ENABLE") is None
            else (f"with DETRIX_ENABLE={env.get('DETRIX_ENABLE')!r}")
        )
        found.append(
            Finding(
                "process-enable",
                "error",
                f"it was started {why}",
                "restart it with DETRIX_ENABLE=1 (or `detrix-auto run -- ...`)",
            )
        )
        return found
    flags = interpreter_flags(argv)
    if "S" in flags:
        found.append(
            Finding(
                "process-site",
                "error",
                "it was started with -S, so no site-packages hook runs",
                "restart it without -S",
            )
        )
        return found
    only = env.get("DETRIX_ONLY_PID")
    if only and only != str(pid):
        found.append(
            Finding(
                "process-children",
                "error",
                f"it is a child of pid {only}, started with DETRIX_CHILDREN=0",
                "unset DETRIX_CHILDREN for the parent to observe its children",
            )
        )
        return found
    try:
        resolve({}, env)
    except ConfigError as exc:
        found.append(
            Finding(
                "process-config",
                "error",
                f"its settings are invalid: {exc}",
                "fix that variable and restart it",
            )
        )
        return found
    python = _interpreter_path(pid, argv, exe, env)
    facts = _remote_facts(python, env, flags) if python else None
    if facts is None:
        found.append(
            Finding(
                "process-python",
                "warn",
                f"could not ask its interpreter {python or '?'} about its hooks",
                "run `python -m detrix_auto doctor` with that interpreter",
            )
        )
        return found
    hook = _hook_finding(python, facts, flags, env)
    if hook is not None:
        found.append(hook)
        return found
    if unsearched:
        found.append(
            Finding(
                "process-start",
                "warn",
                "everything needed looks present: it is instrumented with a control plane that "
                "cannot be searched from here, or its start-up failed, and then its stderr has a "
                "line starting with `detrix-auto:`",
                "look at its stderr; if it is instrumented, reach it by its control URL",
            )
        )
        return found
    found.append(
        Finding(
            "process-start",
            "warn",
            "everything needed looks present, so start-up failed inside it: look at its stderr "
            "for a line starting with `detrix-auto:` (an unusable setting, a port in use...)",
            "fix what that line names, then restart it",
        )
    )
    return found


def _hook_finding(
    python: str, facts: dict[str, Any], flags: set[str], env: Mapping[str, str]
) -> Finding | None:
    """Why the start-up hook did not run in that interpreter, with those flags; or None.

    ``facts`` were taken by running the process's interpreter with the flags
    that decide which hooks run (-s, -E, -I), so they describe what it saw.
    """
    shim = shim_dir()
    shim_listed = bool(shim) and shim in env.get("PYTHONPATH", "").split(os.pathsep)
    via_shim = (
        bool(facts.get("sitecustomize"))
        and bool(shim)
        and (
            os.path.dirname(os.path.realpath(str(facts["sitecustomize"])))
            == os.path.realpath(str(shim))
        )
    )
    pth_dirs = [str(d) for d in facts.get("pth") or []]
    user_site = facts.get("user_site")
    if pth_dirs and all(d == user_site for d in pth_dirs) and not facts.get("user_site_enabled"):
        if "I" in flags:
            why = "it was started with -I, which skips the user site-packages"
        elif "s" in flags:
            why = "it was started with -s, which skips the user site-packages"
        elif env.get("PYTHONNOUSERSITE") and "E" not in flags:
            why = "PYTHONNOUSERSITE is set in its environment"
        else:
            why = "its interpreter does not use a user site-packages (a virtual environment?)"
        return Finding(
            "process-hook",
            "error",
            f"its detrix_auto.pth is only in the user site-packages {user_site}, which that "
            f"process skipped: {why}",
            f"install detrix-auto where the interpreter always looks ({python} -m pip install "
            "detrix-auto in a virtual environment), or restart it without the flag",
        )
    if pth_dirs or via_shim:
        return None
    if shim_listed and flags & {"E", "I"}:
        flag = "-I" if "I" in flags else "-E"
        return Finding(
            "process-hook",
            "error",
            f"its PYTHONPATH names detrix-auto's sitecustomize shim (`detrix-auto run` mode), "
            f"but it was started with {flag}, which ignores PYTHONPATH",
            f"restart it without {flag}, or install detrix-auto into its environment: "
            f"{python} -m pip install detrix-auto",
        )
    return Finding(
        "process-hook",
        "error",
        f"its interpreter {python} (Python {facts.get('version')}) has no detrix_auto.pth "
        "and no detrix-auto sitecustomize on its PYTHONPATH",
        f"{python} -m pip install detrix-auto, or restart it with `detrix-auto run -- ...`",
    )


def _interpreter_path(pid: int, argv: list[str], exe: str, env: Mapping[str, str]) -> str:
    """The path the process was started as: a venv's ``bin/python``, not its target.

    ``/proc/PID/exe`` resolves the venv's symlink to the base interpreter, which
    does not know the venv's site-packages; ``argv[0]`` still names the venv.
    """
    first = argv[0] if argv else ""
    candidates: list[str] = []
    if os.sep in first:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        candidates.append(first if os.path.isabs(first) else os.path.join(cwd, first))
    elif first:
        found = shutil.which(first, path=env.get("PATH", os.defpath))
        if found:
            candidates.append(found)
    for candidate in candidates:
        try:
            if exe and os.path.realpath(candidate) == os.path.realpath(exe):
                return candidate
        except OSError:
            continue
    return exe


def _remote_facts(
    exe: str,
    env: Mapping[str, str],
    flags: AbstractSet[str] = frozenset(),
) -> dict[str, Any] | None:
    """Run :data:`PROBE` in ``exe`` with the process's environment and site flags."""
    clean = {k: v for k, v in env.items() if not k.startswith("DETRIX_")}
    options = [f"-{flag}" for flag in sorted(flags & {"s", "E", "I"})]
    try:
        done = subprocess.run(
            [exe, *options, "-c", PROBE + "\nprint(json.dumps(_facts()))"],
            env=clean,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return data if isinstance(data, dict) else None
