"""``ps``, ``status``, ``wake`` and ``sleep``: reading and driving control planes."""

from __future__ import annotations

import argparse
import concurrent.futures
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
    die,
    format_duration,
    live_records,
    print_json,
    print_table,
    resolve_target,
    shell_join,
    uptime,
)

__all__ = ["cmd_ps", "cmd_sleep", "cmd_status", "cmd_wake", "probe_status"]


def probe_status(record: dict[str, Any]) -> dict[str, Any]:
    """One ``ps`` row: the record joined with the process's own status (short timeout)."""
    target = Target(
        url=str(record["control_url"]),
        pid=int(record["pid"]),
        name=str(record.get("name")),
        record=record,  # so that only the record's own process gets the request
    )
    row: dict[str, Any] = {
        "pid": target.pid,
        "name": target.name,
        "state": "unreachable",
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
        "error": None,
    }
    up = uptime(record)
    row["uptime_seconds"] = None if up is None else round(up, 1)
    try:
        reply = target.call("GET", "/detrix/status")
    except CliError as exc:
        row["state"] = "unauthorized" if isinstance(exc, Unauthorized) else "unreachable"
        row["error"] = str(exc)
        return row
    if reply.status != 200 or not isinstance(reply.body, dict):
        row["error"] = reply.error
        return row
    status = reply.body
    row["state"] = str(status.get("state") or "unknown")
    port = status.get("debug_port")
    row["debug_port"] = port if isinstance(port, int) and port > 0 else None
    row["debug_port_active"] = bool(status.get("debug_port_active"))
    row["connection_id"] = status.get("connection_id")
    row["daemon_url"] = status.get("daemon_url") or None
    row["last_error"] = status.get("last_error")
    return row


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
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(
            "no instrumented processes of this user are running.\n"
            "start one with:  DETRIX_ENABLE=1 python app.py"
            "   (or: detrix-auto run -- python app.py)"
        )
        return 0
    table: list[list[str]] = []
    for row in rows:
        debug = "-"
        if row["debug_port"]:
            debug = str(row["debug_port"]) + ("" if row["debug_port_active"] else " (closed)")
        up = row["uptime_seconds"]
        table.append(
            [
                str(row["pid"]),
                str(row["name"]),
                str(row["state"]),
                str(row["control_url"]),
                debug,
                "-" if up is None else format_duration(up),
                row["command"] or "-",
            ]
        )
    print_table(["PID", "NAME", "STATE", "CONTROL", "DEBUG", "UPTIME", "COMMAND"], table)
    return 0


def _describe(target: Target) -> dict[str, Any]:
    return {"pid": target.pid, "name": target.name, "control_url": target.url}


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
    print(target.label)
    for key, value in lines:
        print(f"  {key:<14} {value}")
    return 0


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


def cmd_wake(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    body: dict[str, Any] | None = None
    if args.daemon_url:
        try:
            body = {"daemon_url": parse_url(args.daemon_url, "--daemon-url")}
        except ConfigError as exc:
            die(str(exc), 2)
    reply = target.call("POST", "/detrix/wake", body, timeout=WAKE_TIMEOUT)
    if reply.status == 503:
        die(f"cannot wake {target.label}: {reply.error}")
    result = target.expect_ok(reply, "waking")
    if args.json:
        print_json({**result, **_describe(target)})
        return 0
    verb = "was already awake" if result.get("status") == "already_awake" else "is awake"
    print(
        f"{target.label} {verb}: debug port {result.get('debug_port')}, "
        f"connection {result.get('connection_id')}"
    )
    return 0


def cmd_sleep(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    result = target.expect_ok(
        target.call("POST", "/detrix/sleep", timeout=SLEEP_TIMEOUT), "putting to sleep"
    )
    if args.json:
        print_json({**result, **_describe(target)})
        return 0
    verb = "was already asleep" if result.get("status") == "already_sleeping" else "is asleep"
    print(f"{target.label} {verb}")
    sys.stdout.flush()
    return 0
