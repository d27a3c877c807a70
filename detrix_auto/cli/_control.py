"""``ps``, ``status``, ``wake`` and ``sleep``: reading and driving control planes."""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shlex
import sys
from typing import Any

from ..config import parse_url
from ..errors import ConfigError
from ._common import (
    SLEEP_TIMEOUT,
    WAKE_TIMEOUT,
    CliError,
    Target,
    Unauthorized,
    daemon_advice,
    die,
    format_duration,
    live_records,
    print_json,
    print_table,
    printable,
    process_uid,
    resolve_target,
    shell_join,
    uptime,
)

__all__ = [
    "cmd_ps",
    "cmd_sleep",
    "cmd_status",
    "cmd_wake",
    "forked_workers",
    "mark_lineage",
    "probe_status",
]

#: States in which a process answered its status request.
_ANSWERED = ("sleeping", "waking", "awake")

#: Why a fork cannot be woken, in the words ps, wake and doctor use.
FORK_LIMIT = "debugpy cannot listen again in a fork of a process whose debugger listened"


def probe_status(record: dict[str, Any]) -> dict[str, Any]:
    """One ``ps`` row: the record joined with the process's own status (short timeout).

    A process of another user is not asked at all: a token must not go to it,
    and its control plane would refuse this user anyway.
    """
    target = Target(
        url=str(record["control_url"]),
        pid=int(record["pid"]),
        name=str(record.get("name")),
        record=record,  # so that only the record's own process gets the request
    )
    forked_from = record.get("forked_from")
    row: dict[str, Any] = {
        "pid": target.pid,
        "name": target.name,
        "state": "unreachable",
        "reachable": False,
        "control_url": target.url,
        "debug_port": None,
        "debug_port_active": False,
        "connection_id": None,
        "daemon_url": None,
        "last_error": None,
        "uptime_seconds": None,
        "started_at": record.get("started_at"),
        "python": record.get("python"),
        "argv": record.get("argv") if isinstance(record.get("argv"), list) else [],
        "command": shell_join(record.get("argv")),
        "cwd": record.get("cwd"),
        "forked_from": forked_from if isinstance(forked_from, int) else None,
        "wakeable": record.get("wakeable") is not False,
        "workers": [],
        "note": None,
        "error": None,
    }
    up = uptime(record)
    row["uptime_seconds"] = None if up is None else round(up, 1)
    owner = process_uid(int(record["pid"]))
    if owner is not None and owner != os.getuid():
        row["state"] = "other-user"
        row["error"] = f"it belongs to {_user_name(owner)}, not to you"
        return row
    try:
        reply = target.call("GET", "/detrix/status")
    except CliError as exc:
        row["state"] = "unauthorized" if isinstance(exc, Unauthorized) else "unreachable"
        row["error"] = str(exc)
        return row
    if reply.status != 200 or not isinstance(reply.body, dict):
        row["error"] = f"its status request failed: {reply.error}"
        return row
    status = reply.body
    row["state"] = str(status.get("state") or "unknown")
    row["reachable"] = row["state"] in _ANSWERED
    if not row["reachable"]:
        row["error"] = f"it reports an unknown state {row['state']!r}"
    port = status.get("debug_port")
    row["debug_port"] = port if isinstance(port, int) and port > 0 else None
    row["debug_port_active"] = bool(status.get("debug_port_active"))
    row["connection_id"] = status.get("connection_id")
    row["daemon_url"] = status.get("daemon_url") or None
    row["last_error"] = status.get("last_error")
    return row


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def mark_lineage(rows: list[dict[str, Any]]) -> None:
    """Link forked workers to their master and say which of them cannot be woken.

    A worker's record says whether it was forked after its parent's debugger
    listened (then no wake can ever succeed in it). A master is a process with
    live instrumented forked workers; once its own debugger has listened
    (``debug_port`` is set), every worker it forks from then on is unwakeable.
    """
    by_pid = {row["pid"]: row for row in rows}
    for row in rows:
        parent = by_pid.get(row["forked_from"])
        if parent is not None:
            parent["workers"].append(row["pid"])
    for row in rows:
        if not row["wakeable"]:
            row["note"] = (
                f"cannot be woken: forked from pid {row['forked_from']} after that process's "
                f"debugger listened ({FORK_LIMIT})"
            )
        elif row["workers"] and row["debug_port"]:
            row["note"] = (
                "pre-fork master whose debugger has listened: workers it forks from now on "
                "cannot be woken"
            )
        elif row["workers"]:
            row["note"] = (
                "pre-fork master: wake its workers; once it is woken, workers it forks later "
                "cannot be"
            )


def _state_cell(row: dict[str, Any]) -> str:
    state = str(row["state"])
    if not row["wakeable"]:
        return f"{state} (cannot wake)"
    if row["workers"] and row["debug_port"]:
        return f"{state} (new workers cannot wake)"
    if row["workers"]:
        return f"{state} (master)"
    return state


def cmd_ps(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    records = live_records(skipped=skipped)
    for line in skipped:  # on stderr: --json stays a clean document
        print(f"detrix-auto: {line}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    if records:
        workers = min(16, len(records))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            rows = list(pool.map(probe_status, records))
    mark_lineage(rows)
    shown = rows if args.all else [row for row in rows if row["reachable"]]
    hidden = len(rows) - len(shown)
    if args.json:
        print_json(shown)
        _report_hidden(hidden)
        return 0
    if not shown:
        print(
            "no instrumented process of this user answers."
            if hidden
            else "no instrumented processes of this user are running."
        )
        python = shlex.quote(sys.executable)  # this interpreter has the hook; any `python` may not
        print(
            f"start one with:  DETRIX_ENABLE=1 {python} app.py"
            f"   (or: detrix-auto run -- {python} app.py)"
        )
        _report_hidden(hidden)
        return 0
    table: list[list[str]] = []
    for row in shown:
        debug = "-"
        if row["debug_port"]:
            debug = str(row["debug_port"]) + ("" if row["debug_port_active"] else " (closed)")
        up = row["uptime_seconds"]
        table.append(
            [
                str(row["pid"]),
                str(row["name"]),
                _state_cell(row),
                str(row["control_url"]),
                debug,
                "-" if up is None else format_duration(up),
                row["command"] or "-",
            ]
        )
    print_table(["PID", "NAME", "STATE", "CONTROL", "DEBUG", "UPTIME", "COMMAND"], table)
    notes = [row for row in shown if row["note"] or row["error"]]
    if notes:
        print()
    for row in notes:
        why = "; ".join(text for text in (row["error"], row["note"]) if text)
        print(printable(f"{row['pid']}: {why}"))
    _report_hidden(hidden)
    return 0


def _report_hidden(hidden: int) -> None:
    if hidden:
        sys.stdout.flush()
        sys.stderr.write(
            f"({hidden} more instrumented process(es) do not answer, refuse, or belong to "
            "another user: detrix-auto ps --all lists them with why)\n"
        )
        sys.stderr.flush()


def _describe(target: Target) -> dict[str, Any]:
    return {"pid": target.pid, "name": target.name, "control_url": target.url}


#: Status keys shown on lines of their own (the rest are listed after them).
_STATUS_SHOWN = {
    "state",
    "name",
    "control_host",
    "control_port",
    "debug_port",
    "debug_port_active",
    "daemon_url",
    "connection_id",
    "last_error",
}


def cmd_status(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    status = target.expect_ok(target.call("GET", "/detrix/status"), "status of")
    if target.pid is None or not target.name:
        _fill_identity(target)
    if args.json:
        print_json({**status, **_describe(target)})
        return 0
    port = status.get("debug_port")
    debug = "-"
    if isinstance(port, int) and port > 0:
        debug = f"{port} ({'open' if status.get('debug_port_active') else 'closed'})"
    lines = [
        ("state", str(status.get("state"))),
        ("control plane", target.url),
        ("debug port", debug),
        ("daemon", str(status.get("daemon_url") or "-")),
        ("connection", str(status.get("connection_id") or "-")),
        ("last error", str(status.get("last_error") or "-")),
    ]
    # Whatever else the process reports (warm, and keys newer than this CLI) is
    # shown as it is, so that status never hides what the process says.
    for key in sorted(k for k in status if k not in _STATUS_SHOWN):
        lines.append((key, _plain(status[key])))
    if target.pid is not None:
        lineage = _lineage_of(target.pid, status)
        if lineage:
            lines.append(("note", lineage))
    print(printable(target.label))
    for key, value in lines:
        print(printable(f"  {key:<14} {value}"))
    return 0


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _lineage_of(pid: int, status: dict[str, Any]) -> str:
    """The ps note for one process (pre-fork master, unwakeable worker), or ""."""
    records = live_records()
    mine = [r for r in records if int(r["pid"]) == pid]
    if not mine:
        return ""
    rows: list[dict[str, Any]] = [
        {
            "pid": int(r["pid"]),
            "forked_from": r.get("forked_from") if isinstance(r.get("forked_from"), int) else None,
            "wakeable": r.get("wakeable") is not False,
            "workers": [],
            "note": None,
            "debug_port": status.get("debug_port") if int(r["pid"]) == pid else None,
        }
        for r in records
    ]
    mark_lineage(rows)
    return next((str(row["note"] or "") for row in rows if row["pid"] == pid), "")


def _fill_identity(target: Target) -> None:
    """For a target given by URL: ask it who it is (best effort)."""
    try:
        reply = target.call("GET", "/detrix/info")
    except CliError:
        return
    if reply.status == 200 and isinstance(reply.body, dict):
        pid = reply.body.get("pid")
        if isinstance(pid, int):
            target.pid = pid
        if isinstance(reply.body.get("name"), str):
            target.name = reply.body["name"]


def forked_workers(pid: int, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Live instrumented processes forked (without exec) from ``pid``, per their records."""
    candidates = live_records() if records is None else records
    return [r for r in candidates if r.get("forked_from") == pid]


def _refuse_unsafe_wake(target: Target) -> None:
    """Refuse a wake that cannot work, or that would break later workers (no --force)."""
    record = target.record or {}
    if record.get("wakeable") is False:
        die(
            f"cannot wake {target.label}: it was forked from pid {record.get('forked_from')} "
            f"after that process's debugger listened, and {FORK_LIMIT}; wake a worker forked "
            "before that (see detrix-auto ps), or restart this one from a master that was never "
            "woken"
        )
    if target.pid is None:
        return
    workers = forked_workers(target.pid)
    if not workers:
        return
    reply = target.call("GET", "/detrix/status")
    port = reply.body.get("debug_port") if isinstance(reply.body, dict) else None
    if isinstance(port, int) and port > 0:
        return  # its debugger listens already: waking again changes nothing for workers
    pids = sorted(int(r["pid"]) for r in workers)
    shown = ", ".join(str(p) for p in pids[:5]) + (", ..." if len(pids) > 5 else "")
    die(
        f"not waking {target.label}: it is a pre-fork master with {len(pids)} instrumented "
        f"worker(s) ({shown}), and once its debugger listens, no worker it forks later can "
        f"be woken ({FORK_LIMIT}); wake a worker instead (detrix-auto wake {pids[0]}), or "
        "pass --force to wake the master anyway"
    )


def cmd_wake(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    body: dict[str, Any] | None = None
    if args.daemon_url:
        try:
            body = {"daemon_url": parse_url(args.daemon_url, "--daemon-url")}
        except ConfigError as exc:
            die(str(exc), 2)
    if not args.force:
        _refuse_unsafe_wake(target)
    reply = target.call("POST", "/detrix/wake", body, timeout=WAKE_TIMEOUT)
    if reply.status == 503:
        die(f"cannot wake {target.label}: {_with_local_advice(reply.error)}")
    result = target.expect_ok(reply, "waking")
    if args.json:
        print_json({**result, **_describe(target)})
        return 0
    verb = "was already awake" if result.get("status") == "already_awake" else "is awake"
    print(
        printable(
            f"{target.label} {verb}: debug port {result.get('debug_port')}, "
            f"connection {result.get('connection_id')}"
        )
    )
    return 0


def _with_local_advice(error: str) -> str:
    """The process's wake error, with advice that holds in this shell.

    The process suggests starting the daemon with `detrix serve` and setting
    DETRIX_DAEMON_URL. Here, `detrix` may not be installed, and a variable set in
    this shell does not reach a running process: --daemon-url does.
    """
    head, sep, _ = error.partition("; start it with `detrix serve`")
    if not sep:
        return error
    return f"{head}; {daemon_advice('wake it with --daemon-url URL of a running daemon')}"


def cmd_sleep(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    result = target.expect_ok(
        target.call("POST", "/detrix/sleep", timeout=SLEEP_TIMEOUT), "putting to sleep"
    )
    if args.json:
        print_json({**result, **_describe(target)})
        return 0
    verb = "was already asleep" if result.get("status") == "already_sleeping" else "is asleep"
    print(printable(f"{target.label} {verb}"))
    sys.stdout.flush()
    return 0
