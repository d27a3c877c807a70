"""``doctor PID``: one process, by its discovery record, else by its sockets, else by ``/proc``.

Finding its control plane among its listening sockets when it has no record,
asking that control plane for its status, and what a pre-fork server means
for a wake. A process with neither is handed to ``uninstrumented``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from ...config import parse_bool, resolve
from ...discovery import candidate_dirs, pid_alive
from ...errors import ConfigError
from .._common import (
    CliError,
    NoAnswer,
    Target,
    Unauthorized,
    Unreachable,
    detrix_home,
    http_call,
    live_records,
)
from .._control import FORK_LIMIT, forked_workers
from .._procfs import _namespace, _parent_pid, _pid_in_own_namespace, _proc_env
from .._sockets import Listener, listening_sockets, socket_inodes
from .findings import Finding
from .uninstrumented import _check_uninstrumented

#: At most this many listening sockets of one process are asked whether they are
#: a detrix-auto control plane (one ``GET /detrix/health`` each).
MAX_SOCKET_PROBES = 4


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
        fix = (
            "give it a shorter switch interval, as said above, or retry while it is less busy"
            if isinstance(exc, NoAnswer) and exc.starved
            else "the process may be busy, hung or exiting; if it stays so, restart it"
        )
        found.append(
            Finding("process-control", "error", f"its control plane does not answer: {exc}", fix)
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
