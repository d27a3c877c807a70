"""``python -m detrix_auto.devdaemon``: the embedded daemon in the foreground.

For scripts written for the real daemon's REST API, on a machine without it,
and for manual testing: prints its URL on one line of stdout (so a script can
read it), then every captured value, until Ctrl-C or SIGTERM.

Access: give it a token (``--token-file``, or ``--token``), which every request
but ``/health`` may present; processes of our own user are served without one
where the kernel can say who a caller is (Linux). Without a token it says so
on start, in one line on stderr, and still refuses other users where it can
tell them apart (docs/metrics-api.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

from ..config import parse_token
from ..errors import ConfigError
from ..token import read_token_file
from .metrics import MetricRuleError, MetricSpec
from .server import DevDaemon, MetricHit

PROG = "python -m detrix_auto.devdaemon"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Embedded loopback Detrix daemon: the REST API of `detrix serve` "
        "(connections, metrics, events) for Python processes, without the Rust daemon.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: any free port)")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="require `Authorization: Bearer <the file's token>` (a file only you can read)",
    )
    parser.add_argument(
        "--token",
        help="the same, given on the command line (visible to every local user in ps; "
        "prefer --token-file)",
    )
    parser.add_argument(
        "--attach-timeout", type=float, default=10.0, help="seconds allowed for one DAP attach"
    )
    parser.add_argument(
        "--max-events",
        type=int,
        default=100_000,
        metavar="N",
        help="events kept in memory; the oldest are dropped first (default 100000)",
    )
    parser.add_argument(
        "--metric",
        nargs="+",
        action="append",
        default=[],
        metavar="ARG",
        help="NAME PATH LINE EXPR [EXPR ...]: a logpoint installed on every connection",
    )
    return parser.parse_args(argv)


def _token(args: argparse.Namespace) -> str | None:
    """The token from ``--token-file`` or ``--token``; raises ConfigError."""
    if args.token_file and args.token:
        raise ConfigError("give --token-file or --token, not both")
    if args.token_file:
        token = read_token_file(args.token_file)
        if token is None:
            raise ConfigError(f"token file {args.token_file} does not exist")
        return parse_token(token, "--token-file")
    if args.token is not None:
        token = parse_token(args.token, "--token")
        if token is None:
            raise ConfigError("--token is empty")
        return token
    return None


def _access_line(daemon: DevDaemon, token: str | None, token_on_argv: bool) -> str:
    if token is None:
        own = (
            "processes of your user (and root) may use its API; other local users are refused "
            "(Linux peer-uid check)"
            if sys.platform.startswith("linux")
            else "any local user may use its API (this system cannot tell callers' users apart)"
        )
        return (
            f"detrix-devdaemon: no --token-file or --token: the API at {daemon.url} is "
            f"unauthenticated; {own}"
        )
    line = "detrix-devdaemon: requests need `Authorization: Bearer <token>`" + (
        " or come from your own user" if sys.platform.startswith("linux") else ""
    )
    if token_on_argv:
        line += "; --token is visible to every local user in ps: prefer --token-file"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    args = _parse_args(argv)
    try:
        token = _token(args)
    except ConfigError as exc:
        print(f"detrix-devdaemon: {exc}", file=sys.stderr)
        return 2
    if args.max_events < 1:
        print("detrix-devdaemon: --max-events must be at least 1", file=sys.stderr)
        return 2
    specs: list[MetricSpec] = []
    for item in args.metric:
        if len(item) < 4 or not item[2].isdigit():
            print(f"--metric needs NAME PATH LINE EXPR...: {' '.join(item)}", file=sys.stderr)
            return 2
        try:
            specs.append(MetricSpec(item[0], item[1], int(item[2]), tuple(item[3:])))
        except MetricRuleError as exc:
            print(f"--metric: {exc}", file=sys.stderr)
            return 2

    def show(hit: MetricHit) -> None:
        print(f"{hit.metric} [{hit.connection_id[:8]}] {' | '.join(hit.values)}", flush=True)

    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        # No lock here (an Event's set() would wait for the lock its wait() holds,
        # in this very thread): a flag, read every half second.
        stop.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        daemon = DevDaemon(
            args.host,
            args.port,
            token=token,
            attach_timeout=args.attach_timeout,
            max_events=args.max_events,
        ).start()
    except OSError as exc:
        print(f"detrix-devdaemon: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    with daemon:
        for spec in specs:
            daemon.add_metric(spec)
        daemon.on_hit(show)
        print(daemon.url, flush=True)
        print(_access_line(daemon, token, args.token is not None), file=sys.stderr, flush=True)
        while not stop:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
