"""``detrix-auto doctor``: why did (or didn't) a process activate?

Each check yields a :class:`Finding` with a level (``ok``, ``warn``, ``error``),
what was found, and a plain fix. The exit status is 1 when any finding is an
error. With a PID, the process itself is examined through its discovery
record and control plane, or, when it has none, through ``/proc`` (its
command line, environment and interpreter), which is readable for the
user's own processes.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ENV_NAMES, parse_bool, parse_enable, resolve
from ..daemonfile import daemon_pid_path, read_daemon_pid
from ..discovery import candidate_dirs, pid_alive
from ..errors import ConfigError
from ..token import TokenFileError, read_token_file
from ._common import (
    CliError,
    Target,
    Unauthorized,
    Unreachable,
    detrix_home,
    http_call,
    live_records,
    print_json,
    shell_join,
)
from ._run import shim_dir

__all__ = ["Finding", "cmd_doctor", "hook_files"]

#: Variables detrix-auto reads besides the options of ``config``.
EXTRA_VARS = {
    "DETRIX_ENABLE": "switches the start-up hook on",
    "DETRIX_STRICT": "configuration errors end the process (for CI)",
    "DETRIX_CHILDREN": "0 keeps child processes from activating",
    "DETRIX_ONLY_PID": "set by detrix-auto itself for DETRIX_CHILDREN=0",
    "DETRIX_AUTO_PATH": "set by `detrix-auto run` for the sitecustomize shim",
}

#: Facts about an interpreter, run in it (also in another one, as ``-c``).
#: Plain code, no annotations: the other interpreter may be any version.
PROBE = r"""
import importlib.util, json, os, site, sys
def _facts():
    dirs = []
    try:
        dirs.extend(site.getsitepackages())
    except Exception:
        # Very old virtualenvs have no getsitepackages(): their site dirs are on sys.path.
        dirs.extend(p for p in sys.path
                    if os.path.basename(p) in ("site-packages", "dist-packages"))
    user = None
    try:
        user = site.getusersitepackages()
        dirs.append(user)
    except Exception:
        pass
    seen = []
    for d in dirs:
        if d and d not in seen:
            seen.append(d)
    def found(name):
        return [d for d in seen if os.path.isfile(os.path.join(d, name))]
    def origin(module):
        try:
            spec = importlib.util.find_spec(module)
        except Exception:
            return None
        return None if spec is None else spec.origin
    return {
        "executable": sys.executable,
        "version": sys.version.split()[0],
        "site_dirs": seen,
        "user_site": user,
        "user_site_enabled": bool(site.ENABLE_USER_SITE),
        "no_site": bool(sys.flags.no_site),
        "pth": found("detrix_auto.pth"),
        "start": found("detrix_auto.start"),
        "package": origin("detrix_auto"),
        "debugpy": origin("debugpy"),
        "urllib3": origin("urllib3"),
        "sitecustomize": origin("sitecustomize"),
        "usercustomize": origin("usercustomize"),
    }
"""


@dataclass
class Finding:
    check: str
    level: str  # "ok", "warn" or "error"
    text: str
    fix: str = ""


def local_facts() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(PROBE, namespace)  # noqa: S102 - our own constant, shared with the remote probe
    facts: dict[str, Any] = namespace["_facts"]()
    return facts


def hook_files() -> tuple[list[str], list[str]]:
    """Site directories of this interpreter holding ``detrix_auto.pth`` / ``.start``."""
    facts = local_facts()
    return list(facts["pth"]), list(facts["start"])


def _is_hook_file(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "detrix_auto._boot" in handle.read(8192)
    except OSError:
        return False


# -- this interpreter ------------------------------------------------------------------


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
    for module, why in (
        ("debugpy", "wake cannot open a debugger"),
        ("urllib3", "wake cannot reach the daemon"),
    ):
        if facts[module]:
            found.append(Finding(module, "ok", f"{module} is importable"))
        else:
            found.append(
                Finding(
                    module,
                    "error",
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


# -- settings --------------------------------------------------------------------------


def check_settings(env: Mapping[str, str]) -> list[Finding]:
    found: list[Finding] = []
    raw = env.get("DETRIX_ENABLE")
    enabled = parse_enable(raw)
    if enabled is None:
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
    else:
        shown = "is not set" if raw is None else f"={raw!r} switches it off"
        found.append(
            Finding(
                "enable",
                "warn",
                f"DETRIX_ENABLE {shown} here: programs started from this shell do not activate",
                "start the program with DETRIX_ENABLE=1 python app.py, or detrix-auto run -- "
                "python app.py",
            )
        )
    bad = 0
    for name in sorted(ENV_NAMES.values()):
        value = env.get(name)
        if value is None or not value.strip():
            continue
        try:
            resolve({}, {name: value})
        except ConfigError as exc:
            bad += 1
            found.append(
                Finding(f"config:{name}", "error", str(exc), f"correct {name} or unset it")
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
            resolve({}, env)
        except ConfigError as exc:
            found.append(Finding("config", "error", str(exc), "change one of the two settings"))
        else:
            used = sorted(name for name in ENV_NAMES.values() if env.get(name, "").strip())
            listed = ", ".join(used) if used else "none set; defaults apply"
            found.append(Finding("config", "ok", f"DETRIX_* settings are valid ({listed})"))
    return found


# -- daemon and token ------------------------------------------------------------------


def check_daemon(env: Mapping[str, str]) -> list[Finding]:
    configured = env.get("DETRIX_DAEMON_URL", "").strip()
    pid_file = daemon_pid_path()
    if configured:
        try:
            url = resolve({}, {"DETRIX_DAEMON_URL": configured}).daemon_url or configured
        except ConfigError:
            return []  # reported with the settings
        source = "DETRIX_DAEMON_URL"
    else:
        info = read_daemon_pid(pid_file)
        if info is None:
            exists = os.path.exists(pid_file)
            state = "names no live daemon" if exists else "does not exist"
            return [
                Finding(
                    "daemon",
                    "warn",
                    f"no Detrix daemon is running ({pid_file} {state}): `wake` needs one; "
                    "`observe` and `demo` bring their own",
                    "start it with `detrix serve`, or set DETRIX_DAEMON_URL",
                )
            ]
        host = info["host"] if info["host"] not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{info['http_port']}"
        source = f"{pid_file} (pid {info['pid']})"
    timeout = 2.0
    try:
        timeout = resolve(
            {}, {k: v for k, v in env.items() if k == "DETRIX_HEALTH_CHECK_TIMEOUT"}
        ).health_check_timeout
    except ConfigError:
        pass
    try:
        reply = http_call(url, "GET", "/health", timeout=timeout, context=_ssl_context(env))
    except CliError as exc:
        return [
            Finding(
                "daemon",
                "warn",
                f"no daemon answers at {url} (from {source}): {exc}; `wake` needs one, "
                "`observe` and `demo` bring their own",
                "start it with `detrix serve`"
                + ("" if configured else ", or set DETRIX_DAEMON_URL"),
            )
        ]
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status == 200 and body.get("service") == "detrix":
        return [Finding("daemon", "ok", f"the Detrix daemon answers at {url} (from {source})")]
    what = f"service={body.get('service')!r}" if body else f"HTTP {reply.status}"
    return [
        Finding(
            "daemon",
            "error",
            f"{url} (from {source}) answers, but not as a Detrix daemon ({what})",
            "point DETRIX_DAEMON_URL at the daemon's HTTP port (see ~/detrix/daemon.pid)",
        )
    ]


def _ssl_context(env: Mapping[str, str]) -> ssl.SSLContext | None:
    try:
        settings = resolve(
            {}, {k: v for k, v in env.items() if k in ("DETRIX_VERIFY_SSL", "DETRIX_CA_BUNDLE")}
        )
    except ConfigError:
        return None
    if not settings.verify_ssl:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if settings.ca_bundle:
        return ssl.create_default_context(cafile=settings.ca_bundle)
    return None


def check_token(env: Mapping[str, str]) -> list[Finding]:
    found: list[Finding] = []
    home = detrix_home()
    path = os.path.join(home, "mcp-token")
    if env.get("DETRIX_TOKEN", "").strip():
        found.append(
            Finding(
                "token",
                "ok",
                "DETRIX_TOKEN is set; it is used instead of any token file",
            )
        )
    try:
        token = read_token_file(path)
    except TokenFileError as exc:
        fix = (
            f"chmod 600 {path}"
            if "readable by other users" in str(exc)
            else (f"remove {path} or replace it with a regular file of your own, mode 600")
        )
        found.append(Finding("token-file", "error", str(exc), fix))
        return found
    if token is None:
        found.append(
            Finding(
                "token-file",
                "ok",
                f"no token file at {path} (needed only when the daemon or a process requires a "
                "token)",
            )
        )
    else:
        found.append(Finding("token-file", "ok", f"token file {path} is private (mode 600)"))
    daemon_token = os.path.join(os.path.expanduser("~"), "detrix", "mcp-token")
    if (
        token is None
        and os.path.abspath(daemon_token) != os.path.abspath(path)
        and (os.path.exists(daemon_token) and not env.get("DETRIX_TOKEN", "").strip())
    ):
        found.append(
            Finding(
                "token-file",
                "warn",
                f"the daemon's token is at {daemon_token}, but with DETRIX_HOME={home} clients "
                f"look for it at {path}",
                "set DETRIX_TOKEN, or leave DETRIX_HOME unset",
            )
        )
    return found


def check_discovery() -> list[Finding]:
    home = detrix_home()
    count = len(live_records(home))
    return [
        Finding(
            "discovery",
            "ok",
            f"discovery records are read from {candidate_dirs(home)[0]} (and fallbacks); "
            f"{count} live instrumented process(es)",
        )
    ]


# -- one process -----------------------------------------------------------------------


def _proc_read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _no_site_flag(argv: list[str]) -> bool:
    """True if the interpreter options before the script include ``-S``."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            return False
        if arg.startswith("--"):
            i += 1
            continue
        letters = arg[1:]
        for j, letter in enumerate(letters):
            if letter == "S":
                return True
            if letter in "cm":
                return False  # what follows is the program
            if letter in "WX":
                if j == len(letters) - 1:
                    i += 1  # the option's value is the next argument
                break
        i += 1
    return False


def check_process(pid: int) -> list[Finding]:
    for record in live_records():
        if int(record["pid"]) == pid:
            return _check_instrumented(record)
    if not pid_alive(pid):
        return [
            Finding(
                "process",
                "error",
                f"no process with pid {pid}",
                "check the pid (detrix-auto ps lists instrumented ones)",
            )
        ]
    if not os.path.isdir(f"/proc/{pid}"):
        return [
            Finding(
                "process",
                "error",
                f"process {pid} has no discovery record (it did not activate); this "
                "platform has no /proc to look further",
                "start it with DETRIX_ENABLE=1, or `detrix-auto run -- ...`",
            )
        ]
    return _check_uninstrumented(pid)


def _check_instrumented(record: dict[str, Any]) -> list[Finding]:
    target = Target(
        url=str(record["control_url"]),
        pid=int(record["pid"]),
        name=str(record.get("name")),
        record=record,
    )
    found = [
        Finding(
            "process",
            "ok",
            f"pid {target.pid} is instrumented: {target.name}, control plane {target.url}",
        )
    ]
    try:
        reply = target.call("GET", "/detrix/status")
    except Unauthorized as exc:
        found.append(
            Finding(
                "process-control", "warn", str(exc), "pass the process's token with DETRIX_TOKEN"
            )
        )
        return found
    except Unreachable as exc:
        found.append(
            Finding(
                "process-control",
                "error",
                f"its control plane does not answer: {exc}",
                "the process may be busy, hung or exiting; if it stays so, restart it",
            )
        )
        return found
    if reply.status != 200 or not isinstance(reply.body, dict):
        found.append(
            Finding(
                "process-control",
                "error",
                f"its status request failed: {reply.error}",
                "restart the process; report it if it persists",
            )
        )
        return found
    status = reply.body
    state = status.get("state")
    detail = f"state {state}"
    if status.get("debug_port"):
        detail += f", debug port {status['debug_port']}"
    if status.get("daemon_url"):
        detail += f", daemon {status['daemon_url']}"
    found.append(Finding("process-control", "ok", f"its control plane answers: {detail}"))
    if status.get("last_error"):
        found.append(
            Finding(
                "process-error",
                "warn" if state == "awake" else "error",
                f"its last wake failed: {status['last_error']}",
                "fix the cause named there, then `detrix-auto wake "
                f"{target.pid}` (or observe it without a daemon: detrix-auto observe ...)",
            )
        )
    return found


def _check_uninstrumented(pid: int) -> list[Finding]:
    found: list[Finding] = []
    raw_cmd = _proc_read(pid, "cmdline")
    argv = [a.decode("utf-8", "replace") for a in (raw_cmd or b"").split(b"\0") if a]
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    raw_env = _proc_read(pid, "environ")
    if raw_env is None:
        return [
            Finding(
                "process",
                "error",
                f"process {pid} has no discovery record, and its environment cannot be read "
                "(another user's process?)",
                "run doctor as the user who owns it; only your own processes can be observed",
            )
        ]
    env: dict[str, str] = {}
    for item in raw_env.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            env[key] = value
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
    found.append(
        Finding(
            "process",
            "error",
            f"{label} has no discovery record: it is not instrumented",
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
    if _no_site_flag(argv):
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
    try:
        if not parse_bool(env.get("DETRIX_DISCOVERY", "1") or "1", "DETRIX_DISCOVERY"):
            found.append(
                Finding(
                    "process-discovery",
                    "warn",
                    "it runs with DETRIX_DISCOVERY off, so it writes no record",
                    "reach it by its control URL (set DETRIX_CONTROL_PORT)",
                )
            )
            return found
    except ConfigError:
        pass
    its_home = env.get("DETRIX_HOME", "").strip()
    if its_home and os.path.abspath(os.path.expanduser(its_home)) != detrix_home():
        found.append(
            Finding(
                "process-home",
                "error",
                f"it writes its record under DETRIX_HOME={its_home}, but this shell looks under "
                f"{detrix_home()}",
                f"run DETRIX_HOME={its_home} detrix-auto ...",
            )
        )
        return found
    python = _interpreter_path(pid, argv, exe, env)
    facts = _remote_facts(python, env) if python else None
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
    shim = shim_dir()
    via_shim = (
        bool(facts.get("sitecustomize"))
        and bool(shim)
        and (
            os.path.dirname(os.path.realpath(str(facts["sitecustomize"])))
            == os.path.realpath(str(shim))
        )
    )
    if not facts.get("pth") and not via_shim:
        found.append(
            Finding(
                "process-hook",
                "error",
                f"its interpreter {python} (Python {facts.get('version')}) has no detrix_auto.pth "
                "and no detrix-auto sitecustomize on its PYTHONPATH",
                f"{python} -m pip install detrix-auto, or restart it with `detrix-auto run -- ...`",
            )
        )
        return found
    found.append(
        Finding(
            "process-start",
            "warn",
            "everything needed looks present, so start-up failed inside it: look at its stderr "
            "for a line starting with `detrix-auto:` (a port in use, an unwritable home...)",
            "fix what that line names, then restart it",
        )
    )
    return found


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


def _remote_facts(exe: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    clean = {k: v for k, v in env.items() if not k.startswith("DETRIX_")}
    try:
        done = subprocess.run(
            [exe, "-c", PROBE + "\nprint(json.dumps(_facts()))"],
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


# -- the command -----------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, *, hook_ran_here: bool = False) -> int:
    facts = local_facts()
    env = dict(os.environ)
    findings = check_interpreter(facts, hook_ran_here=hook_ran_here)
    findings += check_settings(env)
    findings += check_daemon(env)
    findings += check_token(env)
    findings += check_discovery()
    if args.pid is not None:
        findings += check_process(args.pid)
    errors = sum(1 for f in findings if f.level == "error")
    warnings = sum(1 for f in findings if f.level == "warn")
    if args.json:
        print_json(
            {
                "python": facts["executable"],
                "python_version": facts["version"],
                "pid": args.pid,
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "findings": [asdict(f) for f in findings],
            }
        )
        return 1 if errors else 0
    print(
        f"detrix-auto doctor: {facts['executable']} (Python {facts['version']})"
        + (f", process {args.pid}" if args.pid is not None else "")
    )
    print()
    for finding in findings:
        print(f"  {finding.level:<5}  {finding.text}")
        if finding.fix and finding.level != "ok":
            print(f"         fix: {finding.fix}")
    print()
    print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
