"""``observe`` and ``demo``: live logpoints through an embedded loopback daemon.

The sequence: read the target's status (it must be asleep: its debugger takes
one client at a time), start a :class:`~detrix_auto.devdaemon.DevDaemon` on
127.0.0.1 with a random token, wake the target with ``{"daemon_url": ...}``
(the target registers and the daemon attaches over DAP before the wake
returns), add the metric with ``POST /api/v1/metrics``, poll ``GET
/api/v1/events``, then always put the target back to sleep and stop the
daemon, also on Ctrl-C or SIGTERM. Everything after the start goes through
the daemon's REST API, the one scripts use (docs/metrics-api.md): no private
calls.

An expression that raises in the target gives no value: debugpy sends the
exception's text in place of the logpoint message, and the daemon records it
as an error event. Such a text is printed once (per distinct text) and
observing goes on, since a value that is sometimes ``None`` is normal. A
session that ends without a single value exits with status 1, and says why.

Bounds: the wake takes at most ``WAKE_TIMEOUT``; ``--for`` counts from the
moment the logpoint is set; putting the target back to sleep and stopping the
daemon take at most ``CLEANUP_BOUND`` seconds, and a second Ctrl-C or SIGTERM
abandons them at once (saying how to finish by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import quote

from ..devdaemon import STATUS_CONNECTED, DevDaemon, MetricRuleError
from ..devdaemon.metrics import check_expressions, check_name, display_text
from ..discovery import iter_records
from ._common import (
    SLEEP_TIMEOUT,
    WAKE_TIMEOUT,
    CliError,
    ControlReply,
    Target,
    die,
    http_call,
    resolve_target,
    running,
)
from ._source import Location, parse_location
from ._source import check_expressions as check_source_expressions

__all__ = ["cmd_demo", "cmd_observe"]

#: Appended to the user's expressions to learn which thread hit the line.
THREAD_EXPR = "__import__('threading').current_thread().name"
#: Distinct failure texts reported before further ones are only counted.
MAX_REPORTS = 10
#: After this long without a hit, say that the line has not run yet.
QUIET_HINT_AFTER = 5.0
#: Seconds allowed for putting the target back to sleep and stopping the daemon.
CLEANUP_BOUND = 5.0
#: How often the daemon's events are polled, and how many are read at a time.
POLL_INTERVAL = 0.1
POLL_LIMIT = 1000
#: Seconds allowed for one call to the embedded daemon (adding a metric sets a logpoint).
DAEMON_TIMEOUT = 20.0
#: Code flags of generators and coroutines (``inspect.CO_*``).
_SUSPENDABLE = 0x20 | 0x80 | 0x100 | 0x200

#: The note for a line inside a generator or coroutine that ran before the wake,
#: on Python 3.12+, where debugpy may not report from a frame started earlier.
#: None until that behaviour is settled; :func:`suspended_frame_note` is the hook.
SUSPENDED_FRAME_NOTE: str | None = None


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM while a blocking call runs: abandon it, then clean up."""


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP end the session instead of killing us mid-cleanup.

    While ``abort_calls`` is true (setup: a blocking HTTP call may be running)
    the first signal raises :class:`Interrupted`; afterwards signals only set
    ``stopped``, which the streaming loop polls. During cleanup
    (``cleaning``), a second signal overall raises :class:`Interrupted`, so a
    user who insists is never kept waiting for a target that does not answer.

    The handler takes no lock: it runs in the main thread between two bytecodes,
    possibly while that thread holds one. It once set a ``threading.Event``,
    whose ``set()`` takes the lock its ``wait()`` holds for a moment around each
    wake-up: a SIGTERM landing there left ``observe`` waiting for itself, for
    ever (seen once in CI).
    """

    def __init__(self) -> None:
        self.stopped = False
        self.signum: int | None = None
        self.count = 0
        self.abort_calls = True
        self.cleaning = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less once a signal came (a sleep resumes after a
        handler that returns, so it is taken in short steps)."""
        end = time.monotonic() + seconds
        while not self.stopped:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.signum = self.signum or signum
        self.stopped = True
        if self.abort_calls:
            self.abort_calls = False
            raise Interrupted()
        if self.cleaning and self.count >= 2:
            self.cleaning = False
            raise Interrupted()


class DaemonApi:
    """The embedded daemon's REST API, called with its token, as any script would."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = DAEMON_TIMEOUT
    ) -> ControlReply:
        return http_call(self.url, method, path, body, headers=self._headers, timeout=timeout)


@dataclass
class Hit:
    """One logpoint hit as the CLI shows it."""

    timestamp: float
    thread: str | None
    values: list[tuple[str, str]]

    def clock(self) -> str:
        local = time.localtime(self.timestamp)
        return time.strftime("%H:%M:%S", local) + f".{int(self.timestamp * 1000) % 1000:03d}"

    def text(self) -> str:
        shown = "  ".join(f"{e}={v}".replace("\n", "\\n") for e, v in self.values)
        thread = f"[{self.thread}]  " if self.thread else ""
        return f"{self.clock()}  {thread}{shown}"


@dataclass
class Outcome:
    hits: list[Hit] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    ended_by: str = ""  # "count", "time", "signal", "gone", "detached"
    elapsed: float = 0.0
    slept: bool = False
    skipped: int = 0  # events the poll could not read back (more than POLL_LIMIT at once)
    note: str | None = None  # why a line may never report (suspended_frame_note)


def suspended_frame_note(location: Location, python_version: str | None) -> str | None:
    """Hook: a note when ``location`` is inside a generator or coroutine on Python 3.12+.

    A frame that was already running before the wake may not report there (the
    decision, and the text, belong to whoever settles debugpy's behaviour:
    set :data:`SUSPENDED_FRAME_NOTE`). Returns None when it does not apply.
    """
    if SUSPENDED_FRAME_NOTE is None or not _suspendable(location):
        return None
    try:
        major, minor = (int(part) for part in (python_version or "").split(".")[:2])
    except ValueError:
        return None
    return SUSPENDED_FRAME_NOTE if (major, minor) >= (3, 12) else None


def _suspendable(location: Location) -> bool:
    """The line is inside a generator or coroutine (as far as the file could be compiled)."""
    code = location.code
    return isinstance(code, types.CodeType) and bool(code.co_flags & _SUSPENDABLE)


@dataclass
class Session:
    """One observation of one target at one location."""

    target: Target
    location: Location
    expressions: list[str]
    metric: str = "observe"
    seconds: float | None = None
    count: int | None = None
    on_ready: Callable[[dict[str, Any]], None] = lambda info: None
    on_hit: Callable[[Hit], None] = lambda hit: None
    on_failure: Callable[[str], None] = lambda text: None
    on_quiet: Callable[[], None] = lambda: None

    def run(self, guard: SignalGuard) -> Outcome:
        target = self.target
        status = target.expect_ok(target.call("GET", "/detrix/status"), "reading the status of")
        state = status.get("state")
        if state == "awake":
            die(
                f"{target.label} is already awake, attached to the daemon at "
                f"{status.get('daemon_url') or '?'}; its debugger takes one client at a time: "
                f"put it to sleep first with `detrix-auto sleep {target.pid or target.url}` "
                "(this detaches that daemon)"
            )
        if state != "sleeping":
            die(
                f"{target.label} is {state} (a wake is in progress or being retried); "
                f"try again shortly, or put it to sleep with `detrix-auto sleep "
                f"{target.pid or target.url}`"
            )
        token = secrets.token_urlsafe(32)
        # The target registers with its own token (when we present it, it sends it on)
        # and as its own user: both may register, nothing else.
        daemon = DevDaemon(
            "127.0.0.1",
            0,
            token=token,
            app_tokens=[target.token.token] if target.token.token else [],
            app_uids=_owner_uid(target.pid),
            attach_timeout=15.0,
        )
        try:
            daemon.start()
        except OSError as exc:
            die(f"cannot start the embedded daemon on 127.0.0.1: {exc.strerror or exc}")
        api = DaemonApi(daemon.url, token)
        outcome = Outcome()
        woke = False
        try:
            woke = True  # from here on a sleep is owed, even if the wake is interrupted
            reply = target.call(
                "POST", "/detrix/wake", {"daemon_url": daemon.url}, timeout=WAKE_TIMEOUT
            )
            if reply.status != 200 or not isinstance(reply.body, dict):
                die(f"cannot wake {target.label}: {reply.error}")
            if reply.body.get("status") != "awake":
                woke = False  # someone else woke it in between: not ours to put to sleep
                die(f"{target.label} was woken by someone else meanwhile; try again later")
            connection_id = str(reply.body.get("connection_id") or "")
            metric_id = self._add_metric(api, connection_id)
            self.on_ready(
                {"debug_port": reply.body.get("debug_port"), "connection_id": connection_id}
            )
            guard.abort_calls = False
            self._stream(api, metric_id, connection_id, guard, outcome)
        except Interrupted:
            outcome.ended_by = "signal"
        finally:
            guard.abort_calls = False
            self._clean_up(guard, daemon, woke, outcome)
        if not outcome.hits and SUSPENDED_FRAME_NOTE is not None and _suspendable(self.location):
            # Only then is the target asked which Python it runs (it may not answer).
            outcome.note = suspended_frame_note(self.location, self._target_python())
        return outcome

    def _add_metric(self, api: DaemonApi, connection_id: str) -> int:
        """``POST /api/v1/metrics``; dies if debugpy refused or moved the logpoint."""
        where = f"{self.location.path}:{self.location.line}"
        reply = api.call(
            "POST",
            "/api/v1/metrics",
            {
                "name": self.metric,
                "connectionId": connection_id,
                "location": {"file": self.location.path, "line": self.location.line},
                "expressions": [*self.expressions, THREAD_EXPR],
                "enabled": True,
            },
        )
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.status not in (200, 201) or not isinstance(body.get("metricId"), int):
            die(f"the embedded daemon refused the logpoint at {where}: {reply.error}")
        if not body.get("dapConfirmed"):
            message = body.get("dapMessage") or "not verified"
            die(f"debugpy did not accept the logpoint at {where}: {message}")
        line = body.get("actualLine")
        if isinstance(line, int) and line != self.location.line:
            die(
                f"line {self.location.line} of {self.location.path} holds no code "
                f"(debugpy would move the logpoint to line {line})"
            )
        return int(body["metricId"])

    def _stream(
        self,
        api: DaemonApi,
        metric_id: int,
        connection_id: str,
        guard: SignalGuard,
        outcome: Outcome,
    ) -> None:
        started = time.monotonic()
        deadline = started + self.seconds if self.seconds else None
        next_check = started + 0.5
        since = 0
        hinted = False
        while True:
            since = self._poll(api, metric_id, since, outcome)
            if self.count is not None and len(outcome.hits) >= self.count:
                outcome.ended_by = "count"
                break
            if guard.stopped:
                outcome.ended_by = "signal"
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                outcome.ended_by = "time"
                break
            if now >= next_check:
                next_check = now + 0.5
                ended = self._connection_ended(api, connection_id)
                if ended:
                    self._poll(api, metric_id, since, outcome)
                    outcome.ended_by = ended
                    break
                if not hinted and not outcome.hits and now - started >= QUIET_HINT_AFTER:
                    hinted = True
                    if not outcome.failures:
                        self.on_quiet()
            wait = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - now)
            guard.pause(max(0.0, wait))
        outcome.elapsed = time.monotonic() - started

    def _poll(self, api: DaemonApi, metric_id: int, since: int, outcome: Outcome) -> int:
        """Read the events after ``since`` (µs); returns the next ``since``."""
        reply = api.call(
            "GET", f"/api/v1/events?metricId={metric_id}&since={since}&limit={POLL_LIMIT}"
        )
        if reply.status != 200 or not isinstance(reply.body, list):
            raise CliError(f"the embedded daemon failed to report events: {reply.error}")
        events = [e for e in reply.body if isinstance(e, dict)]
        if len(events) == POLL_LIMIT:
            outcome.skipped += 1
        for event in reversed(events):  # the API answers newest first
            stamp = event.get("timestamp")
            if isinstance(stamp, int):
                since = max(since, stamp + 1)
            if self.count is not None and len(outcome.hits) >= self.count:
                continue
            error = event.get("error")
            if isinstance(error, dict):
                self._failure(str(error.get("errorMessage") or ""), outcome)
                continue
            hit = self._convert(event)
            outcome.hits.append(hit)
            self.on_hit(hit)
        return since

    def _failure(self, text: str, outcome: Outcome) -> None:
        seen = outcome.failures.get(text, 0)
        outcome.failures[text] = seen + 1
        if seen == 0 and len(outcome.failures) <= MAX_REPORTS:
            self.on_failure(text)

    def _connection_ended(self, api: DaemonApi, connection_id: str) -> str:
        reply = api.call("GET", f"/api/v1/connections/{quote(connection_id, safe='')}")
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.status == 200 and body.get("status") == STATUS_CONNECTED:
            return ""
        pid = self.target.pid
        if pid is not None:
            # An exiting process unregisters first and disappears a moment later.
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                if not running(pid):
                    return "gone"
                time.sleep(0.05)
        return "detached"

    def _convert(self, event: dict[str, Any]) -> Hit:
        values = [display_text(v) for v in event.get("values") or [] if isinstance(v, dict)]
        thread: str | None = None
        if len(values) == len(self.expressions) + 1:
            thread = values.pop()
        stamp = event.get("timestamp")
        moment = stamp / 1_000_000 if isinstance(stamp, int) else time.time()
        return Hit(moment, thread, list(zip(self.expressions, values, strict=False)))

    def _clean_up(
        self, guard: SignalGuard, daemon: DevDaemon, woke: bool, outcome: Outcome
    ) -> None:
        """Put the target back to sleep and stop the daemon, within ``CLEANUP_BOUND``."""
        deadline = time.monotonic() + CLEANUP_BOUND
        guard.cleaning = True
        try:
            if woke:
                outcome.slept = self._sleep_again(deadline)
        except Interrupted:
            sys.stderr.write(
                f"detrix-auto: interrupted while putting {self.target.label} back to sleep; "
                f"run `detrix-auto sleep {self.target.pid or self.target.url}`\n"
            )
        finally:
            guard.cleaning = False
            daemon.stop()

    def _sleep_again(self, deadline: float) -> bool:
        target = self.target
        if target.pid is not None and not running(target.pid):
            return False
        timeout = max(0.5, min(SLEEP_TIMEOUT, deadline - time.monotonic()))
        try:
            reply = target.call("POST", "/detrix/sleep", timeout=timeout)
        except CliError as exc:
            if target.pid is None or running(target.pid):
                sys.stderr.write(
                    f"detrix-auto: could not put {target.label} back to sleep: {exc}\n"
                )
            return False
        if reply.status != 200:
            sys.stderr.write(
                f"detrix-auto: could not put {target.label} back to sleep: {reply.error}\n"
            )
            return False
        return True

    def _target_python(self) -> str | None:
        try:
            reply = self.target.call("GET", "/detrix/info")
        except CliError:
            return None
        body = reply.body if isinstance(reply.body, dict) else {}
        version = body.get("python_version")
        return version if isinstance(version, str) else None


def _owner_uid(pid: int | None) -> list[int]:
    """The uid the target runs as (so it may register), where /proc tells it."""
    if pid is None:
        return []
    try:
        return [os.stat(f"/proc/{pid}").st_uid]
    except OSError:
        return []


# -- observe ---------------------------------------------------------------------------


def _dedupe(items: list[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        text = item.strip()
        if text and text not in seen:
            seen.append(text)
    return seen


def cmd_observe(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        die("--count must be at least 1", 2)
    if args.seconds is not None and not args.seconds > 0:
        die("--for must be a number of seconds greater than 0", 2)
    expressions = _dedupe(args.expr)
    if not expressions:
        die("give at least one --expr", 2)
    target = resolve_target(args.target)
    search = [str(target.record.get("cwd") or "")] if target.record else []
    location = parse_location(args.at, search)
    check_source_expressions(expressions, location)
    try:
        check_name(args.name)
        check_expressions(expressions)
    except MetricRuleError as exc:
        die(str(exc), 2)
    as_json = bool(args.json)
    where = f"{location.path}:{location.line}"

    def ready(info: dict[str, Any]) -> None:
        limit = []
        if args.count:
            limit.append(f"{args.count} hit(s)")
        if args.seconds:
            limit.append(f"{args.seconds:g} s")
        until = " or ".join(limit) if limit else "Ctrl-C"
        sys.stderr.write(
            f"observing {target.label} at {where}: {', '.join(expressions)} (until {until})\n"
        )
        sys.stderr.flush()

    def show(hit: Hit) -> None:
        if as_json:
            line = json.dumps(
                {
                    "type": "hit",
                    "time": _iso(hit.timestamp),
                    "timestamp": round(hit.timestamp, 6),
                    "pid": target.pid,
                    "name": target.name,
                    "location": where,
                    "thread": hit.thread,
                    "values": dict(hit.values),
                }
            )
        else:
            line = hit.text()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def failed(text: str) -> None:
        sys.stderr.write(
            f"detrix-auto: no value at {os.path.basename(location.path)}:{location.line}: "
            f"the target reported {text!r} (an --expr failed to evaluate there; "
            "each distinct message is shown once)\n"
        )
        sys.stderr.flush()
        if as_json:
            sys.stdout.write(
                json.dumps(
                    {
                        "type": "error",
                        "time": _iso(time.time()),
                        "pid": target.pid,
                        "location": where,
                        "message": text,
                    }
                )
                + "\n"
            )
            sys.stdout.flush()

    def quiet() -> None:
        sys.stderr.write(
            f"detrix-auto: no hits yet: line {location.line} has not run since the logpoint "
            "was set (it is installed and verified)\n"
        )
        sys.stderr.flush()

    session = Session(
        target,
        location,
        expressions,
        metric=args.name,
        seconds=args.seconds,
        count=args.count,
        on_ready=ready,
        on_hit=show,
        on_failure=failed,
        on_quiet=quiet,
    )
    with SignalGuard() as guard:
        outcome = session.run(guard)
    return _finish_observe(target, location, outcome)


def _finish_observe(target: Target, location: Location, outcome: Outcome) -> int:
    """The summary on stderr and the exit status: 0 only when values were seen."""
    hits = len(outcome.hits)
    after = f"{hits} hit(s) in {outcome.elapsed:.1f} s"
    if outcome.skipped:
        sys.stderr.write(
            f"detrix-auto: hits arrived faster than {POLL_LIMIT} per poll {outcome.skipped} "
            "time(s); some were not shown\n"
        )
    if outcome.ended_by == "gone":
        sys.stderr.write(f"detrix-auto: {target.label} exited while observed ({after})\n")
        return 1
    if outcome.ended_by == "detached":
        sys.stderr.write(
            f"detrix-auto: {target.label} detached from the embedded daemon (put to sleep by "
            f"someone else, or its debugger closed the connection) ({after})\n"
        )
        return 1
    state = "asleep again" if outcome.slept else "not put back to sleep"
    sys.stderr.write(f"stopped after {after}; {target.label} is {state}\n")
    if not hits and outcome.failures:
        first = next(iter(outcome.failures))
        sys.stderr.write(f"detrix-auto: no values were captured: {first!r}\n")
        return 1
    if not hits:
        note = f" ({outcome.note})" if outcome.note else ""
        sys.stderr.write(
            f"detrix-auto: nothing was observed: line {location.line} of {location.path} did "
            f"not run while the logpoint was set{note}\n"
        )
        return 1
    return 0


def _iso(timestamp: float) -> str:
    moment = time.gmtime(timestamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(timestamp * 1000) % 1000:03d}Z"


# -- demo ------------------------------------------------------------------------------

DEMO_MARKER = "# <- detrix-auto demo observes this line"
DEMO_EXPRESSIONS = ["tick", "temperature"]


def _demo_app() -> tuple[str, int]:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_demo_app.py")
    try:
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                if DEMO_MARKER in text:
                    return path, number
    except OSError:
        pass
    die(f"the demo application {path} is missing or damaged; reinstall detrix-auto")


def _wait_for_record(
    home: str, proc: subprocess.Popen[bytes], timeout: float, errors: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in iter_records(home):
            if int(record["pid"]) == proc.pid:
                return record
        if proc.poll() is not None:
            detail = _tail(errors)
            die(
                f"the demo application exited with status {proc.returncode} before it "
                f"could be observed{': ' + detail if detail else ''}"
            )
        time.sleep(0.05)
    detail = _tail(errors)
    die(
        f"the demo application did not activate within {timeout:g} s"
        f"{': ' + detail if detail else ''}; run `detrix-auto doctor`"
    )


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def cmd_demo(args: argparse.Namespace) -> int:
    from ._doctor import hook_files
    from ._run import run_environment

    seconds = float(args.seconds)
    if not 0 < seconds <= 600:
        die("--seconds must be greater than 0 and at most 600", 2)
    source, line = _demo_app()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    via = "DETRIX_ENABLE=1"
    if not hook_files()[0]:
        env = run_environment(env)
        via = "DETRIX_ENABLE=1 and the sitecustomize shim (no .pth hook in this interpreter)"
    home = tempfile.mkdtemp(prefix="detrix-auto-demo-")
    env.update(DETRIX_ENABLE="1", DETRIX_HOME=home, DETRIX_NAME="detrix-demo")
    # A copy, run as a plain script from a directory of its own: run in place,
    # the package directory would be first on sys.path and its modules
    # (token.py, state.py...) would shadow the standard library's.
    app = os.path.join(home, "demo_app.py")
    errors = os.path.join(home, "app-stderr.txt")
    proc: subprocess.Popen[bytes] | None = None
    out = sys.stdout
    with SignalGuard() as guard:
        try:
            shutil.copyfile(source, app)
            print(
                "detrix-auto demo: watch a value change inside a separate, unmodified "
                "Python process\n",
                file=out,
            )
            with open(errors, "wb") as err_file:
                proc = subprocess.Popen(
                    [sys.executable, app, str(seconds + 120)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                    cwd=home,
                )
            print(f"  started   {os.path.basename(app)} (pid {proc.pid}) with {via}", file=out)
            out.flush()
            record = _wait_for_record(home, proc, 20.0, errors)
            target = Target(
                url=str(record["control_url"]),
                pid=proc.pid,
                name=str(record.get("name")),
                record=record,
            )
            print(f"  found     {target.name}: control plane {target.url}, asleep", file=out)
            location = parse_location(f"{app}:{line}", [])
            collected: list[Hit] = []

            def ready(info: dict[str, Any]) -> None:
                print(
                    f"  woke it   with the built-in daemon; logpoint at "
                    f"{os.path.basename(app)}:{line} reads {', '.join(DEMO_EXPRESSIONS)}",
                    file=out,
                )
                print(f"\n  live values for {seconds:g} s (Ctrl-C stops early):", file=out)
                out.flush()

            def show(hit: Hit) -> None:
                collected.append(hit)
                values = "  ".join(f"{e}={v}".ljust(len(e) + 6) for e, v in hit.values)
                print(f"    {hit.clock()}  {values.rstrip()}", file=out)
                out.flush()

            def failed(text: str) -> None:
                print(f"    (the app reported: {text})", file=out)

            session = Session(
                target,
                location,
                list(DEMO_EXPRESSIONS),
                metric="demo",
                seconds=seconds,
                on_ready=ready,
                on_hit=show,
                on_failure=failed,
            )
            outcome = session.run(guard)
        except Interrupted:
            print("\ninterrupted; cleaning up", file=out)
            return 130
        finally:
            guard.abort_calls = False
            if proc is not None:
                _stop(proc)
            shutil.rmtree(home, ignore_errors=True)
    return _demo_summary(outcome, collected, seconds)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _demo_summary(outcome: Outcome, hits: list[Hit], seconds: float) -> int:
    out = sys.stdout
    print(file=out)
    if not hits:
        print("no values arrived; something is off: run `detrix-auto doctor` to see why", file=out)
        return 1
    first, last = dict(hits[0].values), dict(hits[-1].values)
    print(
        f"Saw {len(hits)} value(s) in {outcome.elapsed:.1f} s: temperature went from "
        f"{first.get('temperature')} to {last.get('temperature')} "
        f"(tick {first.get('tick')} to {last.get('tick')}).",
        file=out,
    )
    print("The app was put back to sleep and stopped; nothing is left running.", file=out)
    print(
        "\nNext, try it on your own program:\n"
        + _activation_hint()
        + "  DETRIX_ENABLE=1 python app.py &     # or: detrix-auto run -- python app.py\n"
        "  detrix-auto ps                      # find it\n"
        "  detrix-auto observe app --at app.py:LINE --expr VARIABLE\n"
        "  detrix-auto doctor                  # if it does not show up",
        file=out,
    )
    out.flush()
    return 0


def _activation_hint() -> str:
    """A first line for the hints when this is a virtual environment the shell has not
    activated: bare ``detrix-auto`` and ``python`` would then be other programs (or none)."""
    if sys.prefix == sys.base_prefix:
        return ""
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    found = shutil.which("detrix-auto")
    if found and os.path.realpath(os.path.dirname(found)) == os.path.realpath(bin_dir):
        return ""
    activate = os.path.join(sys.prefix, "bin", "activate")
    if not os.path.isfile(activate):
        return ""
    shown = os.path.relpath(activate) if activate.startswith(os.getcwd() + os.sep) else activate
    return f"  source {shown:<28} # first: the commands below are this environment's\n"
