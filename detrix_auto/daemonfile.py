"""Where the local daemon really listens: ``~/detrix/daemon.pid``.

The daemon's HTTP port may fall back from 8090 to another free port, and it
always writes its pid file under ``~/detrix`` whatever ``DETRIX_HOME`` says,
so this is read at wake time when no daemon URL was configured.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .config import DEFAULT_DAEMON_URL

__all__ = ["daemon_pid_path", "discover_daemon_url", "read_daemon_pid"]


def daemon_pid_path() -> str:
    return os.path.join(os.path.expanduser("~"), "detrix", "daemon.pid")


def read_daemon_pid(path: str | None = None) -> dict[str, Any] | None:
    """The pid file's content if it names a live process with an HTTP port, else None."""
    path = path or daemon_pid_path()
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(65536).decode("utf-8"))
        pid = int(data["pid"])
        port = int(data["ports"]["http"])
        host = str(data.get("host") or "127.0.0.1")
    except (OSError, ValueError, KeyError, TypeError):
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
    info = read_daemon_pid(path)
    if info is None:
        return DEFAULT_DAEMON_URL
    host = info["host"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{info['http_port']}"
