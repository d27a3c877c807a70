"""This interpreter: is detrix-auto installed so that its start-up hook runs?

The ``.pth`` hook, PEP 829's ``.start`` files (which file runs on which Python
version, and what it costs), a shadowing copy of the package, the
``sitecustomize`` shim of ``detrix-auto run``, and the two dependencies a wake
needs. Apart because these are facts of the installation, not of settings or
of a running process.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .._run import shim_dir
from .findings import Finding


def _is_hook_file(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "detrix_auto._boot" in handle.read(8192)
    except OSError:
        return False


def check_interpreter(facts: dict[str, Any], *, hook_ran_here: bool) -> list[Finding]:
    found: list[Finding] = []
    python = facts["executable"]
    reinstall = (
        f"install detrix-auto into this environment ({python} -m pip install detrix-auto), "
        "or start programs with `detrix-auto run -- python app.py`"
    )
    pth = [d for d in facts["pth"] if _is_hook_file(os.path.join(d, "detrix_auto.pth"))]
    foreign = [d for d in facts["pth"] if d not in pth]
    if foreign:
        found.append(
            Finding(
                "hook",
                "error",
                f"{os.path.join(foreign[0], 'detrix_auto.pth')} is not detrix-auto's start-up hook "
                "(damaged or replaced)",
                f"reinstall: {python} -m pip install --force-reinstall detrix-auto",
            )
        )
    if pth:
        where = pth[0]
        if facts["user_site"] == where and not facts["user_site_enabled"]:
            found.append(
                Finding(
                    "hook",
                    "error",
                    f"detrix_auto.pth is in the user site-packages {where}, which this interpreter "
                    "skips (PYTHONNOUSERSITE or -s)",
                    f"install it into the environment itself: {python} -m pip install detrix-auto",
                )
            )
        elif facts["user_site"] == where:
            found.append(
                Finding(
                    "hook",
                    "ok",
                    f"detrix_auto.pth is installed in the user site-packages {where}; programs "
                    "started with -I or -s, or with PYTHONNOUSERSITE=1, skip it",
                )
            )
        else:
            found.append(Finding("hook", "ok", f"detrix_auto.pth is installed in {where}"))
    elif not foreign and not (
        facts["start"] and _version_tuple(facts["version"]) >= START_FILES_FROM
    ):
        found.append(
            Finding(
                "hook",
                "error",
                f"detrix_auto.pth is not in any site-packages of {python}: DETRIX_ENABLE=1 has no "
                "effect on programs run by this interpreter",
                reinstall,
            )
        )
    if facts["no_site"]:
        found.append(
            Finding(
                "site",
                "error",
                "this interpreter was started with -S: site-packages, and so every .pth hook, "
                "are skipped",
                "drop -S (with -S only an explicit detrix_auto.init() works)",
            )
        )
    found.extend(check_start_files(_version_tuple(facts["version"]), pth, list(facts["start"])))
    package = facts["package"]
    installed = os.path.join(pth[0], "detrix_auto", "__init__.py") if pth else ""
    if (
        installed
        and os.path.isfile(installed)
        and package
        and (os.path.realpath(package) != os.path.realpath(installed))
    ):
        found.append(
            Finding(
                "package",
                "warn",
                f"detrix_auto is imported from {os.path.dirname(package)}, not from {pth[0]} where "
                "the hook is installed (the current directory or PYTHONPATH shadows it)",
                "remove the other copy from the path, or run from another directory",
            )
        )
    found.extend(_check_customize(facts))
    for module, level, why in (
        ("debugpy", "error", "wake cannot open a debugger"),
        # Only an https:// daemon is spoken to through urllib3 (daemon.py).
        ("urllib3", "warn", "a wake cannot reach an https:// daemon (http:// needs none)"),
    ):
        if facts[module]:
            found.append(Finding(module, "ok", f"{module} is importable"))
        else:
            found.append(
                Finding(
                    module,
                    level,
                    f"{module} is not installed in {python}: {why}",
                    f"{python} -m pip install {module}",
                )
            )
    if hook_ran_here:
        found.append(
            Finding(
                "activation",
                "ok",
                "DETRIX_ENABLE activated detrix-auto in this very doctor process: the hook works",
            )
        )
    return found


#: PEP 829, as Python 3.15's ``site`` implements it: ``.start`` entry points are
#: read from 3.15 on, and the *presence* of ``NAME.start`` suppresses the import
#: lines of ``NAME.pth``; import lines in ``.pth`` files are ignored from 3.18 on.
START_FILES_FROM = (3, 15)
PTH_IMPORTS_IGNORED_FROM = (3, 18)
#: What a ``.start`` entry costs every interpreter start of the environment on
#: 3.15, measured (``bench/performance.py``): CPython imports ``pkgutil`` and
#: ``re`` to resolve it, and the entry imports ``detrix_auto`` even when disabled.
START_FILE_COST = "about 10 ms"


def _version_tuple(version: str) -> tuple[int, int]:
    major, _, rest = version.partition(".")
    minor = rest.split(".")[0]
    try:
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return sys.version_info[0], sys.version_info[1]


def check_start_files(
    version: tuple[int, int], pth_dirs: list[str], start_dirs: list[str]
) -> list[Finding]:
    """Which of ``detrix_auto.pth`` and ``detrix_auto.start`` runs on this Python version.

    detrix-auto ships only the ``.pth`` hook: its import line runs on every
    version up to 3.17 and costs nothing while disabled, whereas any ``.start``
    file costs every interpreter start (see ``START_FILE_COST``). A
    ``detrix_auto.start`` found here was left by an older detrix-auto or put
    there by hand.
    """
    shown = f"Python {version[0]}.{version[1]}"
    start = os.path.join(start_dirs[0], "detrix_auto.start") if start_dirs else ""
    if version < START_FILES_FROM:
        if start:
            return [
                Finding(
                    "pep829",
                    "ok",
                    f"{start} is not read by {shown} (only 3.15+ read .start files); "
                    "detrix_auto.pth is the hook here",
                )
            ]
        return []
    if version >= PTH_IMPORTS_IGNORED_FROM:
        if start:
            return [Finding("pep829", "ok", f"{shown} runs the hook through {start} (PEP 829)")]
        if not pth_dirs:
            return []  # reported by the "hook" check
        return [
            Finding(
                "pep829",
                "error",
                f"{shown} ignores import lines in .pth files (PEP 829), so detrix_auto.pth "
                "does nothing here and DETRIX_ENABLE=1 has no effect",
                "start programs with `detrix-auto run -- python app.py` (its sitecustomize "
                "shim works on every version)",
            )
        ]
    if start and pth_dirs:
        return [
            Finding(
                "pep829",
                "warn",
                f"{start} makes {shown} skip detrix_auto.pth's import line and call the .start "
                "entry in every interpreter of this environment, even with DETRIX_ENABLE unset: "
                f"{START_FILE_COST} added to each start (the hook works either way)",
                f"delete it (rm {start}); detrix_auto.pth alone runs the hook on {shown}",
            )
        ]
    if start:
        return [
            Finding(
                "pep829",
                "warn",
                f"{shown} runs the hook through {start}, which adds {START_FILE_COST} to every "
                "interpreter start of this environment, even with DETRIX_ENABLE unset",
                "reinstall detrix-auto, whose detrix_auto.pth costs nothing while disabled",
            )
        ]
    if pth_dirs:
        return [
            Finding(
                "pep829",
                "ok",
                f"{shown} runs detrix_auto.pth's import line (PEP 829 deprecates such lines; "
                "they run until 3.18); no detrix_auto.start, so start-up stays free while disabled",
            )
        ]
    return []


def _check_customize(facts: dict[str, Any]) -> list[Finding]:
    found: list[Finding] = []
    shim = shim_dir()
    ours = os.path.join(shim, "sitecustomize.py") if shim else None
    on_path = bool(shim) and shim in os.environ.get("PYTHONPATH", "").split(os.pathsep)
    origin = facts["sitecustomize"]
    same = bool(origin and ours and os.path.realpath(origin) == os.path.realpath(ours))
    if on_path and same:
        found.append(
            Finding(
                "sitecustomize",
                "ok",
                "detrix-auto's sitecustomize shim is first on PYTHONPATH (`detrix-auto run` mode); "
                "it chain-loads any other sitecustomize",
            )
        )
    elif on_path:
        found.append(
            Finding(
                "sitecustomize",
                "warn" if facts["pth"] else "error",
                f"a sitecustomize at {origin} comes before detrix-auto's shim on sys.path and "
                "shadows it, so PYTHONPATH activation does not happen",
                f"put {shim} first on PYTHONPATH (as `detrix-auto run` does), or remove the other "
                "sitecustomize",
            )
        )
    elif origin:
        found.append(
            Finding(
                "sitecustomize",
                "ok",
                f"sitecustomize at {origin} runs at start-up; the .pth hook does not depend on it, "
                "and detrix-auto's shim chain-loads it",
            )
        )
    user = facts["usercustomize"]
    if user and facts["user_site_enabled"]:
        found.append(
            Finding(
                "usercustomize",
                "ok",
                f"usercustomize at {user} runs after site-packages hooks and cannot hide them",
            )
        )
    return found
