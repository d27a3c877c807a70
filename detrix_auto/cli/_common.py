"""What every command shares: errors, the control-plane HTTP client, targets, output.

Nothing here is on the start-up path of an instrumented process, so the
standard library is imported freely.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from ..config import default_home, parse_path, parse_token, parse_url
from ..discovery import candidate_dirs, iter_records, pid_alive
from ..errors import ConfigError
from ..token import TokenFileError, find_token_file, token_file_candidates

__all__ = [
    "CliError",
    "ControlReply",
    "Target",
    "Unauthorized",
    "Unreachable",
    "detrix_home",
    "die",
    "format_duration",
    "http_call",
    "live_records",
    "print_json",
    "print_table",
    "resolve_target",
    "running",
    "shell_join",
    "token_source",
]

#: Seconds allowed for a quick control-plane read (status, info, health).
QUICK_TIMEOUT = 2.0
#: Seconds allowed for a wake: the target checks the daemon's health, opens the
#: debug listener and registers, and registration includes the daemon's attach.
WAKE_TIMEOUT = 45.0
#: Seconds allowed for a sleep (bounded by the target's unregister timeout).
SLEEP_TIMEOUT = 15.0


class CliError(Exception):
    """An expected failure: printed as one line on stderr, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def die(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


# -- environment -------------------------------------------------------------------


def detrix_home() -> str:
    """``DETRIX_HOME`` as the client resolves it; the default when unset or invalid."""
    raw = os.environ.get("DETRIX_HOME", "")
    if raw.strip():
        try:
            return parse_path(raw, "DETRIX_HOME")
        except ConfigError:
            pass
    return default_home()


@dataclass
class TokenInfo:
    """The token this shell would present, and where it came from (never printed)."""

    token: str | None
    source: str  # "DETRIX_TOKEN", the token file's path, or ""
    problem: str = ""  # why a configured token could not be used


def token_source() -> TokenInfo:
    """``DETRIX_TOKEN``, else the first token file in ``DETRIX_HOME`` when it is safe to read.

    The same files, in the same order, as the client reads (``auth-token``,
    then ``mcp-token``; see ``detrix_auto.token``).
    """
    raw = os.environ.get("DETRIX_TOKEN")
    if raw is not None and raw.strip():
        try:
            return TokenInfo(parse_token(raw, "DETRIX_TOKEN"), "DETRIX_TOKEN")
        except ConfigError as exc:
            return TokenInfo(None, "", str(exc))
    try:
        token, path = find_token_file(token_file_candidates(detrix_home()))
    except TokenFileError as exc:
        return TokenInfo(None, "", str(exc))
    return TokenInfo(token, path if token else "")


# -- the control plane -------------------------------------------------------------


@dataclass
class ControlReply:
    status: int
    body: Any

    @property
    def error(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        if isinstance(self.body, str) and self.body.strip():
            return self.body.strip()[:200]
        return f"HTTP {self.status}"


class Unreachable(CliError):
    """The control plane did not answer at all (refused, timed out, reset)."""


class Unauthorized(CliError):
    """The control plane answered 401."""


def _split_base(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        die(f"invalid URL {url!r}")
    return parts.scheme, host, port, parts.path.rstrip("/")


def http_call(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = QUICK_TIMEOUT,
    context: ssl.SSLContext | None = None,
) -> ControlReply:
    """One HTTP request; raises :class:`Unreachable` when nothing answers."""
    scheme, host, port, prefix = _split_base(base_url)
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    send_headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        send_headers["Content-Type"] = "application/json"
    try:
        conn.request(method, prefix + path, body=data, headers=send_headers)
        response = conn.getresponse()
        raw = response.read(1 << 20)
    except ConnectionRefusedError:
        raise Unreachable(f"nothing listens at {base_url} (connection refused)") from None
    except TimeoutError:
        raise Unreachable(f"{base_url} did not answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Unreachable(f"cannot talk to {base_url}: {reason}") from None
    finally:
        conn.close()
    text = raw.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = text
    return ControlReply(response.status, parsed)


@dataclass
class Target:
    """An instrumented process, found by pid, name or control URL."""

    url: str
    pid: int | None = None
    name: str | None = None
    record: dict[str, Any] | None = None
    token: TokenInfo = field(default_factory=token_source)

    @property
    def label(self) -> str:
        if self.name and self.pid:
            return f"{self.name} (pid {self.pid})"
        if self.pid:
            return f"pid {self.pid}"
        return self.name or self.url

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = QUICK_TIMEOUT
    ) -> ControlReply:
        """A control-plane request, with the token when one is configured.

        A same-user local caller is trusted without a token, but a *wrong* token
        is always refused; so when the target says ``invalid token`` (it has no
        token, or another one) the request is repeated once without it.
        """
        headers: dict[str, str] = {}
        if self.token.token:
            headers["Authorization"] = f"Bearer {self.token.token}"
        try:
            reply = http_call(self.url, method, path, body, headers=headers, timeout=timeout)
        except Unreachable as exc:
            raise Unreachable(self._gone_message(str(exc))) from None
        if reply.status == 401 and headers and "invalid token" in reply.error:
            self.token = TokenInfo(None, "", f"the token from {self.token.source} was refused")
            return self.call(method, path, body, timeout=timeout)
        if reply.status == 401:
            raise Unauthorized(self.unauthorized_message(reply))
        return reply

    def _gone_message(self, detail: str) -> str:
        if self.pid is not None and not running(self.pid):
            return f"{self.label} has exited"
        return f"{self.label} does not answer: {detail}"

    def unauthorized_message(self, reply: ControlReply) -> str:
        how = (
            "set DETRIX_TOKEN=<its token> for this command, or put the token in "
            f"{token_file_candidates(detrix_home())[-1]} (chmod 600)"
        )
        problem = f" ({self.token.problem})" if self.token.problem else ""
        return f"{self.label} refused the request: {reply.error}{problem}; {how}"

    def expect_ok(self, reply: ControlReply, what: str) -> dict[str, Any]:
        if reply.status != 200 or not isinstance(reply.body, dict):
            die(f"{what} {self.label} failed: {reply.error}")
        return reply.body


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie still answers ``kill(pid, 0)``)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return True  # no /proc: trust kill(pid, 0)
    return data[data.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def live_records(home: str | None = None) -> list[dict[str, Any]]:
    """Discovery records of live processes (stale ones are pruned), minus our own."""
    me = os.getpid()
    records = [r for r in iter_records(home or detrix_home()) if int(r["pid"]) != me]
    records.sort(key=lambda r: int(r["pid"]))
    return records


def _base_name(record: dict[str, Any]) -> str:
    name = str(record.get("name") or "")
    suffix = f"-{record.get('pid')}"
    return name[: -len(suffix)] if name.endswith(suffix) else name


def _from_record(record: dict[str, Any]) -> Target:
    return Target(
        url=str(record["control_url"]),
        pid=int(record["pid"]),
        name=str(record.get("name") or ""),
        record=record,
    )


def resolve_target(text: str) -> Target:
    """TARGET on the command line: a pid, a connection name or base name, or a URL."""
    text = text.strip()
    home = detrix_home()
    if text.startswith(("http://", "https://")):
        try:
            url = parse_url(text, "TARGET")
        except ConfigError as exc:
            die(str(exc))
        for record in live_records(home):
            if str(record.get("control_url", "")).rstrip("/") == url:
                return _from_record(record)
        return Target(url=url)
    records = live_records(home)
    if text.isdigit():
        pid = int(text)
        for record in records:
            if int(record["pid"]) == pid:
                return _from_record(record)
        if not pid_alive(pid):
            die(f"no process with pid {pid}")
        die(
            f"process {pid} is not instrumented (no discovery record under "
            f"{_dirs_text(home)}); start it with DETRIX_ENABLE=1 or `detrix-auto run`, "
            f"and see `detrix-auto doctor {pid}`"
        )
    exact = [r for r in records if r.get("name") == text]
    if len(exact) == 1:
        return _from_record(exact[0])
    by_base = [r for r in records if _base_name(r) == text]
    if len(by_base) == 1:
        return _from_record(by_base[0])
    if len(by_base) > 1:
        listing = ", ".join(f"{r['name']} (pid {r['pid']})" for r in by_base)
        die(f"{text!r} matches {len(by_base)} processes: {listing}; name one of them or its pid")
    known = ", ".join(sorted(str(r.get("name")) for r in records)) or "none"
    die(f"no instrumented process named {text!r} (running: {known}); see `detrix-auto ps`")


def _dirs_text(home: str) -> str:
    dirs = candidate_dirs(home)
    return dirs[0] if len(dirs) == 1 else f"{dirs[0]} and {len(dirs) - 1} fallback dir(s)"


# -- output ------------------------------------------------------------------------


def print_json(value: Any, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    out.flush()


def print_table(headers: list[str], rows: list[list[str]], *, last_flexible: bool = True) -> None:
    """Columns padded to their widest cell; the last one is cut to the terminal width."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1] if last_flexible else row):
            widths[i] = max(widths[i], len(cell))
    try:
        columns = os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        columns = 0  # not a terminal: never cut
    for row in [headers, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        line = "  ".join([*cells, row[-1]])
        if columns and len(line) > columns:
            line = line[: max(columns - 1, 0)] + "\u2026"
        sys.stdout.write(line.rstrip() + "\n")
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def shell_join(argv: Any) -> str:
    if not isinstance(argv, list):
        return ""
    return " ".join(shlex.quote(str(a)) for a in argv)


def uptime(record: dict[str, Any]) -> float | None:
    started = record.get("started_at")
    if isinstance(started, (int, float)):
        return max(0.0, time.time() - float(started))
    return None
