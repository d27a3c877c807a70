"""The ``detrix-auto`` command (also ``python -m detrix_auto``).

Find, inspect, wake and observe instrumented processes, check an installation,
start programs with activation on, and show the whole thing working with
``detrix-auto demo``. Never imported by the package itself: the start-up path
of instrumented processes does not know this module exists.

Conventions: ``--json`` on every command that reports something; errors are
one line on stderr with exit status 1 (2 for a usage error); no traceback for
anything a user can cause; text a process supplied is printed escaped, never raw.
A bare ``detrix-auto`` prints the help and exits 0, as ``pip`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .. import __version__
from ._common import CliError, printable

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
Find, inspect, wake and observe Python processes made observable by
detrix-auto (started with DETRIX_ENABLE=1, or through `detrix-auto run`).

TARGET is a pid, a connection name (app-1234), a base name when only one
process has it (app), or a control URL (http://127.0.0.1:PORT).
"""

_EPILOG = """\
first steps:
  detrix-auto demo                              see it work, in about five seconds
  DETRIX_ENABLE=1 python app.py &               start your program, unmodified
  detrix-auto ps                                find it
  detrix-auto observe app --at app.py:42 --expr total
  detrix-auto doctor                            when something does not activate

every command has its own --help with an example.
"""

_EXAMPLES: dict[str, tuple[str, str]] = {
    "ps": (
        "List the live instrumented processes of this user that answer.",
        "Each row: pid, connection name, state (sleeping, waking or awake), control URL,\n"
        "debug port, uptime and command line. A pre-fork master and the workers that can\n"
        "no longer be woken are marked. Processes that do not answer, refuse without\n"
        "their token or belong to another user are left out (a line on stderr counts\n"
        "them); --all lists them too, each with why. Records of processes that have\n"
        "exited are removed.\n\n"
        "examples:\n"
        "  detrix-auto ps\n"
        "  detrix-auto ps --all           # also the ones that cannot be reached, and why\n"
        "  detrix-auto ps --json          # a JSON array, one object per process\n",
    ),
    "status": (
        "Show one process's state as its control plane reports it.",
        "examples:\n"
        "  detrix-auto status app\n"
        "  detrix-auto status 4242 --json\n"
        "  detrix-auto status http://127.0.0.1:40123\n",
    ),
    "wake": (
        "Wake a process: open its debug listener and register it with the Detrix daemon.",
        "The daemon is the process's configured one (DETRIX_DAEMON_URL, else the one\n"
        "named by ~/detrix/daemon.pid), or --daemon-url. To watch values without a\n"
        "daemon, use `detrix-auto observe`. A pre-fork master (a process with\n"
        "instrumented forked workers, such as a gunicorn master) is not woken without\n"
        "--force: once its debugger is open, no worker it forks later can be woken.\n\n"
        "examples:\n"
        "  detrix-auto wake app\n"
        "  detrix-auto wake 4242 --daemon-url http://127.0.0.1:8090\n",
    ),
    "sleep": (
        "Put a process back to sleep: it unregisters from its daemon.",
        "examples:\n  detrix-auto sleep app\n  detrix-auto sleep 4242 --json\n",
    ),
    "doctor": (
        "Explain why a process did or did not activate, with a fix for each problem.",
        "Checks this interpreter's start-up hook (detrix_auto.pth, -S, a shadowing\n"
        "sitecustomize, the PEP 829 file), every DETRIX_* variable, whether the daemon\n"
        "answers, and the token file. With PID, also that process: its discovery record\n"
        "and control plane; if it has no record, its listening sockets (a control plane\n"
        "found that way is examined the same), else its command line, environment and\n"
        "interpreter. Exit status 1 when any finding is an error.\n\n"
        "examples:\n"
        "  detrix-auto doctor\n"
        "  detrix-auto doctor 4242\n"
        "  detrix-auto doctor --json\n",
    ),
    "run": (
        "Run a command with activation switched on.",
        "Sets DETRIX_ENABLE=1 (unless already set), puts detrix-auto's sitecustomize\n"
        "shim first on PYTHONPATH and sets DETRIX_AUTO_PATH, so that even an interpreter\n"
        "without detrix-auto installed activates. The command replaces this process:\n"
        "its signals, exit status and pid are its own. Exit status 127 when the\n"
        "command is not found, 126 when it cannot be run.\n\n"
        "examples:\n"
        "  detrix-auto run -- python app.py --port 8000\n"
        "  detrix-auto run -- gunicorn app:wsgi -w 2\n",
    ),
    "observe": (
        "Watch values at a line of a running process, without the Detrix daemon.",
        "Starts a built-in daemon on 127.0.0.1, wakes TARGET with it, sets a logpoint\n"
        "that evaluates each --expr just before FILE:LINE runs, and prints every hit\n"
        "(time, thread, expr=value) until --for, --count (whichever comes first) or\n"
        "Ctrl-C. Then the process is always put back to sleep and the daemon stopped.\n"
        "TARGET must be asleep. A line without code, a missing file and an unknown\n"
        "name are refused before anything is touched. An expression that raises in\n"
        "the target prints its error once (per distinct message) and observing goes\n"
        "on; if no value at all was seen, the exit status is 1. With --json every\n"
        'line is a JSON object: {"type": "hit", "time", "timestamp", "pid", "name",\n'
        '"location", "thread", "values": {expr: value}} or {"type": "error", ...}.\n\n'
        "examples:\n"
        "  detrix-auto observe app --at app.py:42 --expr total --expr 'len(items)'\n"
        "  detrix-auto observe 4242 --at src/shop/cart.py:88 --expr self.total --count 5\n"
        "  detrix-auto observe app --at app.py:42 --expr total --for 10 --json\n",
    ),
    "demo": (
        "See detrix-auto work: observe a sample app's changing value for a few seconds.",
        "Starts a small sample program as a separate process with DETRIX_ENABLE=1,\n"
        "finds it, watches a value change inside it with the built-in daemon, prints\n"
        "what it saw, and stops everything. Needs nothing but this package.\n\n"
        "examples:\n"
        "  detrix-auto demo\n"
        "  detrix-auto demo --seconds 10\n",
    ),
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1: {text!r}")
    return int(text)


def _pid(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line plus where to look, exit status 2 (argparse's default prints usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "detrix-auto") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        summary, epilog = _EXAMPLES[name]
        return commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    json_help = "print JSON instead of text"
    ps = add("ps")
    ps.add_argument(
        "--all",
        action="store_true",
        help="also list processes that do not answer, refuse, or belong to other users",
    )
    ps.add_argument("--json", action="store_true", help=json_help)

    for name in ("status", "wake", "sleep"):
        sub = add(name)
        sub.add_argument("target", metavar="TARGET", help="pid, name or control URL")
        sub.add_argument("--json", action="store_true", help=json_help)
        if name == "wake":
            sub.add_argument(
                "--daemon-url",
                metavar="URL",
                help="register with this daemon instead of the configured one",
            )
            sub.add_argument(
                "--force",
                action="store_true",
                help="wake a pre-fork master even though its later workers become unwakeable",
            )

    doctor = add("doctor")
    doctor.add_argument(
        "pid", metavar="PID", nargs="?", type=_pid, help="also examine this process"
    )
    doctor.add_argument("--json", action="store_true", help=json_help)

    run = add("run")
    # argparse shows a REMAINDER argument as "...", which hides how run is typed.
    run.usage = f"{prog} run [-h] [--] CMD [ARGS...]"
    run.add_argument(
        "argv",
        metavar="CMD [ARGS...]",
        nargs=argparse.REMAINDER,
        help="the command and its arguments; a leading -- keeps detrix-auto from reading "
        "options meant for CMD",
    )

    observe = add("observe")
    observe.add_argument("target", metavar="TARGET", help="pid, name or control URL")
    observe.add_argument(
        "--at",
        required=True,
        metavar="FILE:LINE",
        help="where: the logpoint runs just before this line",
    )
    observe.add_argument(
        "--expr",
        required=True,
        action="append",
        metavar="EXPR",
        help="a Python expression to evaluate there (repeatable)",
    )
    observe.add_argument(
        "--name",
        default="observe",
        metavar="METRIC",
        help="metric name shown to the daemon (default: observe)",
    )
    observe.add_argument(
        "--for",
        dest="seconds",
        type=_positive_float,
        metavar="SECONDS",
        help="stop after this many seconds",
    )
    observe.add_argument("--count", type=_positive_int, metavar="N", help="stop after N hits")
    observe.add_argument("--json", action="store_true", help="one JSON object per line")

    demo = add("demo")
    demo.add_argument(
        "--seconds",
        type=_positive_float,
        default=4.0,
        metavar="N",
        help="how long to watch (default 4)",
    )
    return parser


def _release_own_runtime() -> bool:
    """If DETRIX_ENABLE activated detrix-auto inside this CLI process, stop it.

    The CLI is not an application to observe: it must not list itself, leave a
    discovery record behind, or (for ``run``) hand a stale record to the
    program it execs. Returns whether the hook had run here (doctor reports it).
    """
    module = sys.modules.get("detrix_auto._runtime")
    if module is None:
        return False
    try:
        started = bool(module.is_started())
        if started:
            module.shutdown()
    except Exception:  # noqa: BLE001 - never let our own client break the CLI
        return False
    return started


def main(argv: Sequence[str] | None = None, prog: str = "detrix-auto") -> int:
    """Run one command; returns the exit status."""
    hook_ran_here = _release_own_runtime()
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.subcommand:
        # What pip does: a bare command is a request for help, answered on stdout, exit 0.
        parser.print_help()
        return 0
    from ._control import cmd_ps, cmd_sleep, cmd_status, cmd_wake
    from ._doctor import cmd_doctor
    from ._observe import Interrupted, cmd_demo, cmd_observe
    from ._run import cmd_run

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "ps": cmd_ps,
        "status": cmd_status,
        "wake": cmd_wake,
        "sleep": cmd_sleep,
        "doctor": lambda a: cmd_doctor(a, hook_ran_here=hook_ran_here),
        "run": cmd_run,
        "observe": cmd_observe,
        "demo": cmd_demo,
    }
    try:
        return handlers[args.subcommand](args)
    except CliError as exc:
        _flush_quietly()
        sys.stderr.write(f"{prog}: {printable(exc)}\n")
        return exc.code
    except (KeyboardInterrupt, Interrupted):
        _flush_quietly()
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as cat does.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
