"""``observe`` and ``demo``: live logpoints through an embedded loopback daemon.

The sequence: read the target's status (it must be asleep: its debugger takes
one client at a time), start a :class:`~detrix_auto.devdaemon.DevDaemon` on
127.0.0.1, store the logpoint, wake the target with ``{"daemon_url": ...}``
(the target registers, the daemon attaches over DAP and sets the logpoint
before the wake returns), stream hits, then always put the target back to
sleep and stop the daemon, also on Ctrl-C or SIGTERM.

An expression that raises in the target gives no value: debugpy sends the
exception's text in place of the logpoint message. Such a text is printed once
(per distinct text) and observing goes on, since a value that is sometimes
``None`` is normal; if the session ends without a single value, the exit
status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..devdaemon import STATUS_CONNECTED, DevDaemon, MetricHit, MetricSpec
from ..discovery import iter_records
from ._common import (
    SLEEP_TIMEOUT,
    WAKE_TIMEOUT,
    CliError,
    Target,
    die,
    resolve_target,
    running,
)
from ._source import Location, check_expressions, parse_location

__all__ = ["cmd_demo", "cmd_observe"]

#: Appended to the user's expressions to learn which thread hit the line.
THREAD_EXPR = "__import__('threading').current_thread().name"
#: Distinct failure texts reported before further ones are only counted.
MAX_REPORTS = 10
#: After this long without a hit, say that the line has not run yet.
QUIET_HINT_AFTER = 5.0


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM while setting up: abandon the blocking call, then clean up."""


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP end the session instead of killing us mid-cleanup.

    While ``abort_calls`` is true (setup: a blocking HTTP call may be running)
    the first signal raises :class:`Interrupted`; afterwards signals only set
    ``stopped``, which the streaming loop polls, and cleanup runs to its end.
    """

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.signum: int | None = None
        self.abort_calls = True
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

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.stopped.is_set()
        self.signum = self.signum or signum
        self.stopped.set()
        if first and self.abort_calls:
            self.abort_calls = False
            raise Interrupted()


class _ObservingDaemon(DevDaemon):
    """The embedded daemon, also noting logpoint failures as debugpy reports them.

    A logpoint whose expression raises makes debugpy send the exception's text
    (plus a line end) as one ``stdout`` output event, without the ``DETRICS:``
    prefix. The app's own ``print()`` arrives on the same channel but in
    pieces (text, separator, line end as separate events), so one event that is
    exactly one whole line is taken for a failure report.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: queue.Queue[str] = queue.Queue()
        self.on_output(self._note_failure)

    def _note_failure(self, connection_id: str, category: str, text: str) -> None:
        if category != "stdout" or not text.endswith("\n"):
            return
        stripped = text[:-1].rstrip("\r")
        if stripped and "\n" not in stripped and not stripped.startswith("DETRICS:"):
            self.failures.put(stripped)


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
        spec = MetricSpec(
            self.metric,
            self.location.path,
            self.location.line,
            (*self.expressions, THREAD_EXPR),
        )
        daemon = _ObservingDaemon("127.0.0.1", 0, attach_timeout=15.0)
        try:
            daemon.start()
        except OSError as exc:
            die(f"cannot start the embedded daemon on 127.0.0.1: {exc.strerror or exc}")
        hits: queue.Queue[MetricHit] = queue.Queue()
        outcome = Outcome()
        woke = False
        try:
            daemon.add_metric(spec)
            daemon.on_hit(hits.put)
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
            self._check_logpoint(daemon, connection_id)
            self.on_ready(
                {"debug_port": reply.body.get("debug_port"), "connection_id": connection_id}
            )
            guard.abort_calls = False
            self._stream(daemon, connection_id, hits, guard, outcome)
        except Interrupted:
            outcome.ended_by = "signal"
        finally:
            guard.abort_calls = False
            try:
                if woke:
                    outcome.slept = self._sleep_again()
            finally:
                daemon.stop()
        return outcome

    def _check_logpoint(self, daemon: DevDaemon, connection_id: str) -> None:
        try:
            results = daemon.breakpoint_results(connection_id)
        except KeyError:
            return
        for item in results:
            if item.get("metric") != self.metric:
                continue
            where = f"{self.location.path}:{self.location.line}"
            if not item.get("verified"):
                message = item.get("message") or "not verified"
                die(f"debugpy did not accept the logpoint at {where}: {message}")
            line = item.get("line")
            if isinstance(line, int) and line != self.location.line:
                die(
                    f"line {self.location.line} of {self.location.path} holds no code "
                    f"(debugpy would move the logpoint to line {line})"
                )

    def _stream(
        self,
        daemon: _ObservingDaemon,
        connection_id: str,
        hits: queue.Queue[MetricHit],
        guard: SignalGuard,
        outcome: Outcome,
    ) -> None:
        started = time.monotonic()
        deadline = started + self.seconds if self.seconds else None
        next_check = started + 0.5
        hinted = False
        while True:
            if guard.stopped.is_set():
                outcome.ended_by = "signal"
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                outcome.ended_by = "time"
                break
            wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - now))
            try:
                raw = hits.get(timeout=wait)
            except queue.Empty:
                raw = None
            if raw is not None and raw.metric == self.metric:
                hit = self._convert(raw)
                outcome.hits.append(hit)
                self.on_hit(hit)
                if self.count is not None and len(outcome.hits) >= self.count:
                    outcome.ended_by = "count"
                    break
            self._drain_failures(daemon, outcome)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                ended = self._connection_ended(daemon, connection_id)
                if ended:
                    self._drain_hits(hits, outcome)
                    outcome.ended_by = ended
                    break
                if not hinted and not outcome.hits and now - started >= QUIET_HINT_AFTER:
                    hinted = True
                    if not outcome.failures:
                        self.on_quiet()
        outcome.elapsed = time.monotonic() - started

    def _drain_hits(self, hits: queue.Queue[MetricHit], outcome: Outcome) -> None:
        while True:
            try:
                raw = hits.get_nowait()
            except queue.Empty:
                return
            if raw.metric == self.metric:
                hit = self._convert(raw)
                outcome.hits.append(hit)
                self.on_hit(hit)

    def _drain_failures(self, daemon: _ObservingDaemon, outcome: Outcome) -> None:
        while True:
            try:
                text = daemon.failures.get_nowait()
            except queue.Empty:
                return
            seen = outcome.failures.get(text, 0)
            outcome.failures[text] = seen + 1
            if seen == 0 and len(outcome.failures) <= MAX_REPORTS:
                self.on_failure(text)

    def _connection_ended(self, daemon: DevDaemon, connection_id: str) -> str:
        record = daemon.connections.get(connection_id)
        if record is None or record.status == STATUS_CONNECTED:
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

    def _convert(self, raw: MetricHit) -> Hit:
        values = list(raw.values)
        thread: str | None = None
        if len(values) == len(self.expressions) + 1:
            thread = values.pop()
        if len(values) == len(self.expressions):
            pairs = list(zip(self.expressions, values, strict=True))
        else:  # a value held the separator itself
            pairs = [(" | ".join(self.expressions), "\x1f".join(values))]
        return Hit(raw.timestamp, thread, pairs)

    def _sleep_again(self) -> bool:
        target = self.target
        if target.pid is not None and not running(target.pid):
            return False
        try:
            reply = target.call("POST", "/detrix/sleep", timeout=SLEEP_TIMEOUT)
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
    check_expressions(expressions, location)
    try:
        MetricSpec(args.name, location.path, location.line, tuple(expressions))
    except ValueError as exc:
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
    return _finish_observe(target, outcome)


def _finish_observe(target: Target, outcome: Outcome) -> int:
    hits = len(outcome.hits)
    after = f"{hits} hit(s) in {outcome.elapsed:.1f} s"
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
