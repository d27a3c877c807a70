"""``detrix-auto run``: start a command with activation switched on.

The command replaces this process (``os.execvpe``), so its signals, exit code
and process id are its own. Activation reaches interpreters whose
site-packages lack ``detrix_auto.pth`` through the ``sitecustomize`` shim put
first on ``PYTHONPATH``; ``DETRIX_AUTO_PATH`` tells the shim where this
``detrix_auto`` and its dependencies (debugpy, urllib3) live, for an
interpreter that cannot import them otherwise. Installed from a wheel they
share one site-packages; an editable install keeps ``detrix_auto`` in the
source tree and the dependencies in the environment, so each is named.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ._common import die

__all__ = ["cmd_run", "import_roots", "package_parent", "run_environment", "shim_dir"]

#: What the woken target imports besides ``detrix_auto`` itself.
DEPENDENCIES = ("debugpy", "urllib3")


def package_parent() -> str:
    """The directory that contains our ``detrix_auto`` package."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.dirname(package)


def import_roots() -> list[str]:
    """The ``sys.path`` entries this interpreter imports ``detrix_auto`` and its dependencies
    from, ours first, without importing the dependencies."""
    roots = [package_parent()]
    for name in DEPENDENCIES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            root = os.path.dirname(os.path.abspath(locations[0]))
            if root not in roots:
                roots.append(root)
    return roots


def shim_dir() -> str | None:
    """Where the shim's ``sitecustomize.py`` is: in the wheel, or in a source checkout."""
    package = os.path.join(package_parent(), "detrix_auto")
    for candidate in (
        os.path.join(package, "_shim"),
        os.path.join(package_parent(), "sitecustomize_shim"),
    ):
        if os.path.isfile(os.path.join(candidate, "sitecustomize.py")):
            return candidate
    return None


def run_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``run`` gives its command."""
    env = dict(os.environ if base is None else base)
    env.setdefault("DETRIX_ENABLE", "1")
    shim = shim_dir()
    if shim is None:
        die("cannot find detrix-auto's sitecustomize shim; reinstall detrix-auto")
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if shim not in existing:
        env["PYTHONPATH"] = os.pathsep.join([shim, *existing])
    env["DETRIX_AUTO_PATH"] = os.pathsep.join(import_roots())
    return env


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        die("run needs a command, e.g. detrix-auto run -- python app.py", 2)
    env = run_environment()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 - running the user's command is the point
    except FileNotFoundError:
        die(f"command not found: {command[0]}", 127)
    except PermissionError:
        die(f"permission denied: {command[0]}", 126)
    except OSError as exc:
        die(f"cannot run {command[0]}: {exc.strerror or exc}", 126)
    return 0  # not reached: exec replaced this process
