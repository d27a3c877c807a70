"""What every command shares: errors, the control-plane HTTP client, targets, output.

Nothing here is on the start-up path of an instrumented process, so the
standard library is imported freely.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shlex
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from ..config import (
    MIN_SWITCH_INTERVAL,
    default_home,
    parse_path,
    parse_switch_interval,
    parse_token,
    parse_url,
)
from ..discovery import candidate_dirs, iter_records, pid_alive
from ..errors import ConfigError
from ..token import TokenFileError, find_token_file, token_file_candidates
from ._procfs import _proc_env

__all__ = [
    "CliError",
    "ControlReply",
    "DAEMON_PROJECT",
    "MainThreadClock",
    "NoAnswer",
    "Target",
    "Unauthorized",
    "Unreachable",
    "Untrusted",
    "detrix_home",
    "daemon_advice",
    "die",
    "format_duration",
    "http_call",
    "control_url_problem",
    "daemon_owner_problem",
    "live_records",
    "print_json",
    "print_table",
    "printable",
    "process_uid",
    "resolve_target",
    "running",
    "shell_join",
    "token_source",
    "verify_holder",
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


#: Where the Detrix daemon comes from, for advice when it is not installed.
DAEMON_PROJECT = "https://github.com/flashus/detrix"


def daemon_advice(point_elsewhere: str = "set DETRIX_DAEMON_URL to a running one") -> str:
    """What to do when no daemon answers, naming only commands that exist here.

    ``point_elsewhere`` is the way to name another daemon that works where the
    advice is followed: an environment variable for programs started from this
    shell, ``--daemon-url`` for a process that is already running.
    """
    if shutil.which("detrix"):
        start = "start the Detrix daemon with `detrix serve`"
    else:
        start = (
            "the Detrix daemon is not installed here (no `detrix` on PATH): install it "
            f"from {DAEMON_PROJECT} and run `detrix serve`"
        )
    return f"{start}, or {point_elsewhere}; `detrix-auto observe` needs no daemon"


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


class NoAnswer(Unreachable):
    """Connected, but no answer came within the time limit."""

    #: The target's main thread computed for most of the wait (see :class:`MainThreadClock`).
    starved = False


class Unauthorized(CliError):
    """The control plane answered 401."""


class Untrusted(CliError):
    """The server behind a record's control URL is not the record's process: nothing was sent."""


#: Called with the connected socket before the request is sent; raises to stop it.
Verifier = Callable[[socket.socket], None]


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
    verify: Verifier | None = None,
) -> ControlReply:
    """One HTTP request; raises :class:`Unreachable` when nothing answers.

    ``verify`` sees the connected socket before anything is sent (before the
    TLS handshake too) and may refuse it by raising.
    """
    scheme, host, port, prefix = _split_base(base_url)
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    if verify is not None:
        connect = conn._create_connection  # type: ignore[attr-defined]

        def checked_connection(*args: Any, **kwargs: Any) -> socket.socket:
            sock: socket.socket = connect(*args, **kwargs)
            try:
                verify(sock)
            except BaseException:
                sock.close()
                raise
            return sock

        conn._create_connection = checked_connection  # type: ignore[attr-defined]
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
        raise NoAnswer(f"{base_url} did not answer within {timeout:g}s") from None
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
        verify = None
        if self.record is not None and self.pid is not None:
            # Found through a record: only the record's own process gets a request.
            verify = functools.partial(verify_holder, pid=self.pid, url=self.url)
        computed = MainThreadClock(self.pid) if self.pid is not None else None
        try:
            reply = http_call(
                self.url, method, path, body, headers=headers, timeout=timeout, verify=verify
            )
        except NoAnswer as exc:
            why = computed.starving_why() if computed is not None else ""
            error = NoAnswer(self._gone_message(str(exc)) + why)
            error.starved = bool(why)
            raise error from None
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


#: Share of a wait that a target's main thread spent on a CPU above which a
#: control plane that did not answer is said to be crowded out by it.
BUSY_SHARE = 0.6


class MainThreadClock:
    """How much of a wait a process's main thread spent computing (Linux ``/proc``).

    Why: CPython gives the GIL to a waiting thread only after a whole switch
    interval without a hand-off. A main thread that computes in short slices
    with a system call between them hands it off voluntarily, takes it back
    first, and so restarts that wait every time: the control plane's thread
    may then never run (``_handoff`` has the details). A control plane that
    did not answer while its main thread computed all along is told apart
    from one that is stuck or gone, so that the advice is the right one.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = time.monotonic()
        self.cpu = self._cpu_seconds()

    def _cpu_seconds(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/stat", "rb") as handle:
                data = handle.read(4096)
            fields = data[data.rindex(b")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            return ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return None  # no /proc (not Linux), or the process is gone

    def busy_share(self) -> float | None:
        """CPU seconds of the main thread per second of wall time since the start."""
        now, cpu = time.monotonic(), self._cpu_seconds()
        elapsed = now - self.started
        if self.cpu is None or cpu is None or elapsed < 0.5:
            return None
        return max(0.0, (cpu - self.cpu) / elapsed)

    def starving_why(self) -> str:
        """What to add to "did not answer" when the main thread computed all along, else ""."""
        share = self.busy_share()
        if share is None or share < BUSY_SHARE:
            return ""
        asked = (_proc_env(self.pid) or {}).get("DETRIX_SWITCH_INTERVAL", "").strip()
        if not asked:
            interval, way_out = (
                "Python's switch interval (5 ms unless the application set another)",
                "restart it with DETRIX_SWITCH_INTERVAL=0.0005 (or shorter, down to 0.0001, "
                "for shorter slices)",
            )
        else:
            # The process's own environment: shown escaped and short, never as given.
            interval = f"its switch interval (DETRIX_SWITCH_INTERVAL={printable(asked[:40])})"
            try:
                shortest = parse_switch_interval(asked, "DETRIX_SWITCH_INTERVAL") <= (
                    MIN_SWITCH_INTERVAL
                )
            except ConfigError:
                shortest = False  # not a value it could have started with: say "shorter"
            way_out = (
                "0.0001 is the shortest detrix-auto sets: make its main thread pause"
                if shortest
                else "restart it with a shorter DETRIX_SWITCH_INTERVAL (down to 0.0001)"
            )
        return (
            f"; its main thread was computing for {min(share, 1.0):.0%} of that time, and a "
            f"main thread that computes in slices shorter than {interval}, with a system call "
            "between them, can keep CPython from ever running the control plane's thread: "
            f"{way_out}, or retry while it is less busy"
        )


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


def process_uid(pid: int) -> int | None:
    """The real user id of a process (``/proc/PID/status``); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def live_records(
    home: str | None = None, *, skipped: list[str] | None = None
) -> list[dict[str, Any]]:
    """Trusted discovery records of live processes (stale ones are pruned), minus our own.

    A record counts only when nobody else could have written it (see
    :mod:`detrix_auto.discovery`) and its control URL is not held by some
    other process than the record's (a record may outlive its control plane,
    and another user may bind the port). Each record passed over adds one
    line saying why to ``skipped``.
    """
    me = os.getpid()
    records = []
    for record in iter_records(home or detrix_home(), skipped=skipped):
        pid = int(record["pid"])
        if pid == me:
            continue
        problem = control_url_problem(str(record.get("control_url") or ""), pid)
        if problem is not None:
            if skipped is not None:
                skipped.append(f"{record.get('record_path')} is ignored: {problem}")
            continue
        records.append(record)
    records.sort(key=lambda r: int(r["pid"]))
    return records


def _trusted_uids() -> tuple[int, ...]:
    return (os.geteuid(), 0) if hasattr(os, "geteuid") else ()


#: How long a socket the kernel already names may take to appear among its
#: server's descriptors: ``accept()`` gives the new socket its inode before it
#: installs the descriptor, and a server preempted between the two (a loaded
#: machine) shows a connection that no process holds yet.
ACCEPT_SETTLE = 0.5


def _holder_problem(found: Any, pid: int, url: str, *, settle: float = 0.0) -> str | None:
    """Why the socket ``found`` is not process ``pid``'s, or None when it is.

    With ``settle``, a socket not (yet) among ``pid``'s descriptors is looked for
    again for that long before the answer is "another process". Waiting only
    delays a refusal: a socket another process holds never appears in ``pid``'s
    table unless ``pid`` itself receives it.
    """
    from ..netowner import describe_uid, process_holds

    held = process_holds(pid, found.inode) if found.inode else None
    deadline = time.monotonic() + settle
    pause = 0.001
    while held is False and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        held = process_holds(pid, found.inode)
    if held:
        return None
    if found.uid not in _trusted_uids():
        return f"{url} is held by {describe_uid(found.uid)}, not by pid {pid}"
    if held is None:
        return None  # ours or root's, and pid's descriptors cannot be read: as good as we get
    return f"{url} is held by another process than pid {pid}"


def control_url_problem(url: str, pid: int) -> str | None:
    """Why ``url``'s listener is not process ``pid``'s (None: it is, or nothing listens)."""
    from ..netowner import SUPPORTED, listener

    if not SUPPORTED:
        return None
    try:
        _, host, port, _ = _split_base(url)
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except (CliError, OSError, IndexError, UnicodeError):
        return f"its control URL {url!r} cannot be resolved to an address"
    found = listener(str(address), port)
    if found is None:
        return None  # nothing listens: calls will say it does not answer
    return _holder_problem(found, pid, url)


def daemon_owner_problem(url: str, daemon_uid: int | None) -> str | None:
    """Why a wake would refuse the daemon at ``url``: its port on this machine is held by
    a user other than us, root and ``daemon_uid``. None when it is not (or not local)."""
    from ..netowner import SUPPORTED, describe_uid, listener

    if not SUPPORTED:
        return None
    try:
        _, host, port, _ = _split_base(url)
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except (CliError, OSError, IndexError, UnicodeError):
        return None
    found = listener(str(address), port)
    if found is None or found.uid in (*_trusted_uids(), daemon_uid):
        return None
    who = describe_uid(found.uid)
    return f"port {port} on {address} is held by {who}, not by you"


def verify_holder(sock: socket.socket, *, pid: int, url: str) -> None:
    """Before a request goes out: the server end of ``sock`` must be process ``pid``'s."""
    from ..config import is_loopback
    from ..netowner import SUPPORTED, server_end

    if not SUPPORTED:
        return
    found = server_end(sock)
    if found is None:
        try:
            host = str(sock.getpeername()[0])
        except OSError:
            return
        if is_loopback(host):
            raise Untrusted(f"cannot tell which process holds {url}; nothing was sent to it")
        return
    problem = _holder_problem(found, pid, url, settle=ACCEPT_SETTLE)
    if problem is not None:
        raise Untrusted(f"{problem}; nothing was sent to it")


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
    skipped: list[str] = []
    records = live_records(home, skipped=skipped)
    if text.isdigit():
        pid = int(text)
        for record in records:
            if int(record["pid"]) == pid:
                return _from_record(record)
        for line in skipped:
            if f"/{pid}.json " in line:
                die(f"process {pid} cannot be trusted: {line}")
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

#: How a control character is written when it is not one of the short escapes.
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _shown(char: str) -> bool:
    # str.isprintable() is False for control characters (C0, DEL, C1), line and
    # paragraph separators, bidi overrides and other format characters, and
    # every space but " ": all of them can move the cursor, reorder or hide text.
    return char == " " or char.isprintable()


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped, so it stays on one line.

    Process-supplied text (a command line, a name, an error a process sent)
    must never start a new line, move the cursor or recolour the terminal:
    one row per process, one line per error.
    """
    value = str(text)
    if all(_shown(char) for char in value):
        return value
    return "".join(char if _shown(char) else _escape_char(char) for char in value)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    out.flush()


def print_table(headers: list[str], rows: list[list[str]], *, last_flexible: bool = True) -> None:
    """Columns padded to their widest cell; the last one is cut to the terminal width.

    Every cell goes through :func:`printable`, so a row is always one line.
    """
    rows = [[printable(cell) for cell in row] for row in rows]
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
    """A command line as a shell would take it back, on one line.

    An argument holding a newline or another control character is written in
    bash's ``$'...'`` form (``$'a\\nb'``) instead of a quoted literal newline.
    """
    if not isinstance(argv, list):
        return ""
    return " ".join(_shell_word(str(a)) for a in argv)


def _shell_word(arg: str) -> str:
    if all(_shown(char) for char in arg):
        return shlex.quote(arg)
    out = []
    for char in arg:
        if char in ("\\", "'"):
            out.append("\\" + char)
        else:
            out.append(char if _shown(char) else _escape_char(char))
    return "$'" + "".join(out) + "'"


def uptime(record: dict[str, Any]) -> float | None:
    started = record.get("started_at")
    if isinstance(started, (int, float)):
        return max(0.0, time.time() - float(started))
    return None
