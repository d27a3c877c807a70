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
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from typing import Any

from ..config import DEFAULT_DAEMON_URL, ENV_NAMES, parse_bool, parse_enable, resolve
from ..daemonfile import daemon_pid_path, read_daemon_pid
from ..discovery import candidate_dirs, pid_alive
from ..errors import ConfigError
from ..token import TokenFileError, find_token_file, token_file_candidates
from ._common import (
    CliError,
    Target,
    Unauthorized,
    Unreachable,
    daemon_advice,
    daemon_owner_problem,
    detrix_home,
    http_call,
    live_records,
    print_json,
    printable,
    shell_join,
)
from ._control import FORK_LIMIT, forked_workers
from ._run import shim_dir
from ._sockets import Listener, listening_sockets, socket_inodes

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


# -- daemon and token ------------------------------------------------------------------


def _daemon_uid(env: Mapping[str, str]) -> int | None:
    try:
        return resolve({}, {k: v for k, v in env.items() if k == "DETRIX_DAEMON_USER"}).daemon_uid
    except ConfigError:
        return None  # reported with the settings


def check_daemon(env: Mapping[str, str]) -> list[Finding]:
    """The daemon programs started from this shell would use, asked whether it answers.

    The same order the client follows at wake time: ``DETRIX_DAEMON_URL``, else
    the port ``~/detrix/daemon.pid`` names, else the default URL (a daemon
    started without ``--daemon`` writes no pid file but listens there).
    """
    configured = env.get("DETRIX_DAEMON_URL", "").strip()
    pid_file = daemon_pid_path()
    if configured:
        try:
            url = resolve({}, {"DETRIX_DAEMON_URL": configured}).daemon_url or configured
        except ConfigError:
            return []  # reported with the settings
        source = "from DETRIX_DAEMON_URL"
    else:
        problems: list[str] = []
        info = read_daemon_pid(pid_file, problems=problems)
        if problems:
            return [
                Finding(
                    "daemon",
                    "warn",
                    f"{problems[0]} (another user could have written it); `wake` goes to "
                    "http://127.0.0.1:8090 instead",
                    "make ~/detrix and daemon.pid yours and not writable by others "
                    "(chmod go-w), or set DETRIX_DAEMON_URL",
                )
            ]
        if info is None:
            state = "names no live daemon" if os.path.exists(pid_file) else "does not exist"
            url = DEFAULT_DAEMON_URL
            source = f"the default: {pid_file} {state}"
        else:
            host = info["host"] if info["host"] not in ("0.0.0.0", "::", "") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{info['http_port']}"
            source = f"from {pid_file}, pid {info['pid']}"
    advice = daemon_advice(
        "correct DETRIX_DAEMON_URL" if configured else "set DETRIX_DAEMON_URL to a running one"
    )
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
                f"no Detrix daemon answers at {url} ({source}): {exc}; `wake` needs one, "
                "`observe` and `demo` bring their own",
                advice,
            )
        ]
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status == 200 and body.get("service") == "detrix":
        owner = daemon_owner_problem(url, _daemon_uid(env))
        if owner is not None:
            return [
                Finding(
                    "daemon",
                    "error",
                    f"{url} ({source}) answers as a Detrix daemon, but {owner}: "
                    "`wake` refuses to send it the token or the debug port",
                    "stop that process and start your own daemon, or set DETRIX_DAEMON_USER "
                    "to the account of a daemon you trust",
                )
            ]
        return [Finding("daemon", "ok", f"the Detrix daemon answers at {url} ({source})")]
    what = f"service={body.get('service')!r}" if body else f"HTTP {reply.status}"
    return [
        Finding(
            "daemon",
            "error",
            f"{url} ({source}) answers, but not as a Detrix daemon ({what})",
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
        try:
            return ssl.create_default_context(cafile=settings.ca_bundle)
        except (ssl.SSLError, OSError):
            return None  # an unusable bundle: the health check then says what TLS says
    return None


#: Run in a fresh interpreter: what this debugpy offers detrix-auto (``_pydevd``'s probe).
_DEBUGGER_PROBE = (
    "import json, detrix_auto._pydevd as p; p.import_debugpy(); "
    "print(json.dumps(p.capabilities().as_dict()))"
)


def check_debugger() -> list[Finding]:
    """Which of debugpy's private parts detrix-auto needs are there, and what is lost if not.

    Probed in a fresh interpreter (importing debugpy here would load it into the
    doctor for nothing), with the same start-up hook off.
    """
    from .. import _pydevd

    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    try:
        run = subprocess.run(
            [sys.executable, "-c", _DEBUGGER_PROBE],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        caps = json.loads(run.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired) as exc:
        caps, detail = None, str(exc)
    except (ValueError, IndexError):
        caps, detail = None, run.stderr.strip()[-300:] or f"exit status {run.returncode}"
    if caps is None:
        return [
            Finding(
                "debugger",
                "error",
                f"debugpy is installed but its import failed here: {detail}",
                "reinstall debugpy in this environment",
            )
        ]
    version, missing = caps["debugpy"], caps["missing"]
    low, high = _pydevd.TESTED_DEBUGPY
    tested = f"tested with debugpy {low} to {high}"
    found = []
    if not missing:
        found.append(
            Finding(
                "debugger",
                "ok",
                f"debugpy {version}: every part detrix-auto uses is there (tracing by "
                f"{caps['tracing']}; {tested})",
            )
        )
    for name, why in missing.items():
        level = "error" if name == "gate" else "warn"
        found.append(
            Finding(
                f"debugger:{name}",
                level,
                f"debugpy {version} lacks what '{name}' needs ({why}): "
                f"{_pydevd.FALLBACKS.get(name, 'unknown effect')}",
                f"install a debugpy detrix-auto was {tested}",
            )
        )
    return found


def check_token(env: Mapping[str, str]) -> list[Finding]:
    """Which token a client started from here would use, and whether that file is safe."""
    found: list[Finding] = []
    home = detrix_home()
    candidates = token_file_candidates(home)
    if env.get("DETRIX_TOKEN", "").strip():
        found.append(
            Finding(
                "token",
                "ok",
                "DETRIX_TOKEN is set; it is used instead of any token file",
            )
        )
    try:
        token, path = find_token_file(candidates)
    except TokenFileError as exc:
        bad = next((p for p in candidates if p in str(exc)), candidates[0])
        fix = (
            f"chmod 600 {bad}"
            if "readable by other users" in str(exc)
            else (f"remove {bad} or replace it with a regular file of your own, mode 600")
        )
        found.append(Finding("token-file", "error", str(exc), fix))
        return found
    if not path:
        found.append(
            Finding(
                "token-file",
                "ok",
                f"no token file at {' or '.join(candidates)} (needed only when the daemon or a "
                "process requires a token)",
            )
        )
    elif token is None:
        found.append(
            Finding(
                "token-file",
                "warn",
                f"token file {path} is empty, so no token is used (it is looked at first)",
                f"write the token into {path}, or remove it",
            )
        )
    else:
        shadowed = [p for p in candidates[candidates.index(path) + 1 :] if os.path.lexists(p)]
        note = f"; {', '.join(shadowed)} is not read while it exists" if shadowed else ""
        found.append(
            Finding(
                "token-file",
                "ok",
                f"the token file used is {path} (private, mode 600){note}",
            )
        )
    daemon_token = os.path.join(os.path.expanduser("~"), "detrix", "mcp-token")
    if (
        token is None
        and os.path.abspath(daemon_token) not in (os.path.abspath(p) for p in candidates)
        and (os.path.exists(daemon_token) and not env.get("DETRIX_TOKEN", "").strip())
    ):
        found.append(
            Finding(
                "token-file",
                "warn",
                f"the daemon's token is at {daemon_token}, but with DETRIX_HOME={home} clients "
                f"look for it at {' or '.join(candidates)}",
                "set DETRIX_TOKEN, or leave DETRIX_HOME unset",
            )
        )
    return found


def check_discovery() -> list[Finding]:
    home = detrix_home()
    skipped: list[str] = []
    count = len(live_records(home, skipped=skipped))
    return [
        Finding(
            "discovery",
            "ok",
            f"discovery records are read from {candidate_dirs(home)[0]} (and fallbacks); "
            f"{count} live instrumented process(es)",
        )
    ] + [
        Finding(
            "discovery-skipped",
            "warn",
            line,
            "remove what another user could have planted, or make the directory yours and "
            "not writable by others (chmod go-w)",
        )
        for line in skipped
    ]


# -- one process -----------------------------------------------------------------------

#: At most this many listening sockets of one process are asked whether they are
#: a detrix-auto control plane (one ``GET /detrix/health`` each).
MAX_SOCKET_PROBES = 4


def _proc_read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _proc_env(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` was started with; None when it cannot be read."""
    raw = _proc_read(pid, "environ")
    if raw is None:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            env[key] = value
    return env


def _parent_pid(pid: int) -> int | None:
    raw = _proc_read(pid, "stat")
    try:
        return int(raw[raw.rindex(b")") + 2 :].split()[1]) if raw else None
    except (ValueError, IndexError):
        return None


def interpreter_flags(argv: list[str]) -> set[str]:
    """The one-letter interpreter options before the program (``-sE`` gives s and E)."""
    flags: set[str] = set()
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            break
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        letters = arg[1:]
        stop = False
        for j, letter in enumerate(letters):
            if letter in "cm":
                stop = True  # what follows is the program
                break
            if letter in "WX":
                if j == len(letters) - 1:
                    i += 1  # the option's value is the next argument
                break
            flags.add(letter)
        if stop:
            break
        i += 1
    return flags


def _no_site_flag(argv: list[str]) -> bool:
    """True if the interpreter options before the script include ``-S``."""
    return "S" in interpreter_flags(argv)


def check_process(pid: int) -> list[Finding]:
    """Examine one process: by its record, else by its sockets, else by ``/proc``."""
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
    env = _proc_env(pid)
    found, unsearched = find_control_plane(pid, env)
    if found is not None:
        return _check_unrecorded(pid, *found, env)
    return _check_uninstrumented(pid, env, unsearched)


def find_control_plane(
    pid: int, env: Mapping[str, str] | None
) -> tuple[tuple[Target, Listener] | None, str]:
    """The detrix-auto control plane among ``pid``'s listening sockets, if there is one.

    Returns what was found, and why the sockets could not be searched ("" when
    they were). Sockets shared with its parent (inherited listeners, a
    parent's debugger) are not asked; the others are asked ``GET
    /detrix/health`` (which needs no token and changes nothing), the configured
    control address first, then by fd number: the control plane opens its
    socket before the program runs, so it has the lowest fd of the sockets
    detrix-auto opens. One that answers must also say it is that process (its
    pid in its own PID namespace) when ``/detrix/info`` answers.
    """
    if _namespace(pid, "net") != _namespace("self", "net"):
        return None, "it runs in another network namespace, whose sockets are not reachable here"
    listeners = listening_sockets(pid)
    if listeners is None:
        return None, "its open files cannot be read"
    parent = _parent_pid(pid)
    shared = set(socket_inodes(parent) or {}) if parent and parent > 1 else set()
    host, port = _configured_control(env or {})

    def configured(listener: Listener) -> bool:
        return listener.host == host and port in (0, listener.port)

    candidates = [listener for listener in listeners if listener.inode not in shared]
    candidates.sort(key=lambda listener: (not configured(listener), listener.fd))
    for listener in candidates[:MAX_SOCKET_PROBES]:
        try:
            reply = http_call(listener.url, "GET", "/detrix/health", timeout=1.0)
        except CliError:
            continue
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.status != 200 or body.get("service") != "detrix-client":
            continue
        if _answers_as(listener.url, _pid_in_own_namespace(pid)):
            return (Target(url=listener.url, pid=pid), listener), ""
    return None, ""


def _namespace(pid: int | str, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def _pid_in_own_namespace(pid: int) -> int:
    """The pid the process sees for itself (the last ``NSpid`` field), else ``pid``."""
    raw = _proc_read(pid, "status") or b""
    for line in raw.splitlines():
        if line.startswith(b"NSpid:"):
            try:
                return int(line.split()[-1])
            except (ValueError, IndexError):
                break
    return pid


def _answers_as(url: str, pid: int) -> bool:
    """False only when ``/detrix/info`` names another pid (a socket shared by reuse-port)."""
    try:
        reply = http_call(url, "GET", "/detrix/info", timeout=1.0)
    except CliError:
        return True
    if reply.status != 200 or not isinstance(reply.body, dict):
        return True  # it may require a token for info: the socket is the process's own
    return reply.body.get("pid") == pid


def _configured_control(env: Mapping[str, str]) -> tuple[str, int]:
    """Where ``env`` tells the control plane to listen (the defaults when unset or bad)."""
    try:
        settings = resolve(
            {},
            {k: v for k, v in env.items() if k in ("DETRIX_CONTROL_HOST", "DETRIX_CONTROL_PORT")},
        )
    except ConfigError:
        return "127.0.0.1", 0
    return settings.control_host, settings.control_port


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
    status = _check_control(target, found)
    found.extend(_fork_findings(target, status))
    return found


def _check_unrecorded(
    pid: int, target: Target, listener: Listener, env: Mapping[str, str] | None
) -> list[Finding]:
    """A process whose control plane answers, but which has no discovery record."""
    table = "tcp6" if ":" in listener.host else "tcp"
    found = [
        Finding(
            "process",
            "warn",
            f"pid {pid} is instrumented, with its control plane at {target.url}, found through "
            f"its listening socket (fd {listener.fd} in /proc/{pid}/fd, listening in "
            f"/proc/{pid}/net/{table}); it has no discovery record, so `ps` and names do not "
            "find it",
            f"reach it by URL: detrix-auto status {target.url} (or wake, sleep, observe)",
        )
    ]
    found.append(_why_no_record(pid, env))
    status = _check_control(target, found)
    if status is not None and target.name is None:
        name = status.get("name")
        target.name = str(name) if isinstance(name, str) else None
    return found


def _why_no_record(pid: int, env: Mapping[str, str] | None) -> Finding:
    home = detrix_home()
    where = f"{candidate_dirs(home)[0]} (and its fallbacks)"
    if env is None:
        return Finding(
            "process-discovery",
            "warn",
            f"it has no record under {where}, and its environment cannot be read to tell why",
            "look at its stderr for a line starting with `detrix-auto:`; reach it by URL",
        )
    try:
        discovery = parse_bool(env.get("DETRIX_DISCOVERY", "1") or "1", "DETRIX_DISCOVERY")
    except ConfigError:
        discovery = True
    if not discovery:
        return Finding(
            "process-discovery",
            "warn",
            f"it runs with DETRIX_DISCOVERY off (its environment, /proc/{pid}/environ), so it "
            "writes no record",
            "reach it by URL, or restart it without DETRIX_DISCOVERY=0",
        )
    its_home = env.get("DETRIX_HOME", "").strip()
    if its_home and os.path.abspath(os.path.expanduser(its_home)) != home:
        return Finding(
            "process-discovery",
            "warn",
            f"it keeps its record under DETRIX_HOME={its_home} (its environment, "
            f"/proc/{pid}/environ), but this shell looks under {home}",
            f"run DETRIX_HOME={shlex.quote(its_home)} detrix-auto ...",
        )
    return Finding(
        "process-discovery",
        "warn",
        f"it could not write a record under {where}, or its record was removed: when it "
        "could not, its stderr has a line starting with `detrix-auto: no discovery record "
        "could be written`",
        f"make {candidate_dirs(home)[0]} writable and private to its user (or start it with "
        "DETRIX_HOME set to such a directory), then restart it; until then, reach it by URL",
    )


def _check_control(target: Target, found: list[Finding]) -> dict[str, Any] | None:
    """Ask the control plane for its status; add what it says to ``found``."""
    try:
        reply = target.call("GET", "/detrix/status")
    except Unauthorized as exc:
        found.append(
            Finding(
                "process-control", "warn", str(exc), "pass the process's token with DETRIX_TOKEN"
            )
        )
        return None
    except Unreachable as exc:
        found.append(
            Finding(
                "process-control",
                "error",
                f"its control plane does not answer: {exc}",
                "the process may be busy, hung or exiting; if it stays so, restart it",
            )
        )
        return None
    if reply.status != 200 or not isinstance(reply.body, dict):
        found.append(
            Finding(
                "process-control",
                "error",
                f"its status request failed: {reply.error}",
                "restart the process; report it if it persists",
            )
        )
        return None
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
    return status


def _fork_findings(target: Target, status: dict[str, Any] | None) -> list[Finding]:
    """Pre-fork servers: a worker that cannot be woken, a master that should not be."""
    record = target.record or {}
    if record.get("wakeable") is False:
        return [
            Finding(
                "process-fork",
                "warn",
                f"it cannot be woken: it was forked from pid {record.get('forked_from')} after "
                f"that process's debugger listened ({FORK_LIMIT})",
                "wake a worker forked before its master was first woken (detrix-auto ps marks "
                "them), or restart the master so that its new workers can be woken",
            )
        ]
    if target.pid is None:
        return []
    workers = sorted(int(r["pid"]) for r in forked_workers(target.pid))
    if not workers:
        return []
    listed = ", ".join(str(p) for p in workers)
    port = (status or {}).get("debug_port")
    if isinstance(port, int) and port > 0:
        return [
            Finding(
                "process-fork",
                "warn",
                f"it is a pre-fork master (instrumented workers: {listed}) whose debugger has "
                "listened: workers it forks from now on cannot be woken",
                "restart the master to make new workers wakeable; wake workers, not the master",
            )
        ]
    return [
        Finding(
            "process-fork",
            "ok",
            f"it is a pre-fork master (instrumented workers: {listed}): wake its workers; "
            "`detrix-auto wake` refuses to wake it without --force",
        )
    ]


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


# -- the command -----------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, *, hook_ran_here: bool = False) -> int:
    facts = local_facts()
    env = dict(os.environ)
    findings = check_interpreter(facts, hook_ran_here=hook_ran_here)
    if facts["debugpy"]:
        findings += check_debugger()
    findings += check_settings(env, python=str(facts["executable"]), pid=args.pid)
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
        # Findings quote process-supplied text (command lines, names, errors).
        print(printable(f"  {finding.level:<5}  {finding.text}"))
        if finding.fix and finding.level != "ok":
            print(printable(f"         fix: {finding.fix}"))
    print()
    print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
