"""What a wake started from this shell would rely on besides the process itself.

The daemon it would reach (and whether it is a daemon we may trust), what this
debugpy offers, the token a client would send, and the discovery records.
Apart because each asks something outside this interpreter: a socket, a
fresh interpreter, a file.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Mapping

from ...config import DEFAULT_DAEMON_URL, resolve
from ...daemonfile import daemon_pid_path, read_daemon_pid
from ...discovery import candidate_dirs
from ...errors import ConfigError
from ...token import TokenFileError, find_token_file, token_file_candidates
from .._common import (
    CliError,
    daemon_advice,
    daemon_owner_problem,
    detrix_home,
    http_call,
    live_records,
)
from .findings import Finding


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
    from ... import _pydevd

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
