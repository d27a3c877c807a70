"""Where the local daemon really listens: ``~/detrix/daemon.pid``.

The daemon's HTTP port may fall back from 8090 to another free port, and it
always writes its pid file under ``~/detrix`` whatever ``DETRIX_HOME`` says,
so this is read at wake time when no daemon URL was configured.

The file decides where the token and the debug port go, so it is believed
only when nobody else could have written it: the file and every directory
above it are ours or root's and not writable by others
(:mod:`detrix_auto.fileowner`). Otherwise it is ignored, with one line on
stderr saying why, and the default URL applies (whose listener the daemon
client then checks before sending anything, see :mod:`detrix_auto.daemon`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import _log
from .config import DEFAULT_DAEMON_URL
from .fileowner import Untrusted, read_trusted

__all__ = ["daemon_pid_path", "discover_daemon_url", "read_daemon_pid"]

#: Reasons already printed: one line per reason per process, not one per wake.
_said: set[str] = set()


def daemon_pid_path() -> str:
    return os.path.join(os.path.expanduser("~"), "detrix", "daemon.pid")


def read_daemon_pid(
    path: str | None = None, *, problems: list[str] | None = None
) -> dict[str, Any] | None:
    """The pid file's content if it names a live process with an HTTP port, else None.

    A file that cannot be trusted is None too, and its reason is appended to
    ``problems`` when given.
    """
    path = path or daemon_pid_path()
    try:
        raw = read_trusted(path, 65536)
    except Untrusted as exc:
        if problems is not None:
            problems.append(f"{path} is ignored: {exc}")
        return None
    except OSError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
        pid = int(data["pid"])
        port = int(data["ports"]["http"])
        host = str(data.get("host") or "127.0.0.1")
    except (ValueError, KeyError, TypeError):
        return None
    if not 0 < port < 65536 or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    except OSError:
        return None
    return {"pid": pid, "host": host, "http_port": port}


def discover_daemon_url(path: str | None = None) -> str:
    problems: list[str] = []
    info = read_daemon_pid(path, problems=problems)
    for problem in problems:
        if problem not in _said:
            _said.add(problem)
            _log.warn(problem)
    if info is None:
        return DEFAULT_DAEMON_URL
    host = info["host"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{info['http_port']}"
