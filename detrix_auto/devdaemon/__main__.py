"""``python -m detrix_auto.devdaemon``: run the embedded daemon in the foreground.

For manual testing: prints its URL on one line (so a script can read it), then
every logpoint hit, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from .server import DevDaemon, MetricHit, MetricSpec


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m detrix_auto.devdaemon",
        description="Embedded loopback Detrix daemon (test double of `detrix serve`).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: any free port)")
    parser.add_argument("--token", default=None, help="require `Authorization: Bearer TOKEN`")
    parser.add_argument(
        "--attach-timeout", type=float, default=10.0, help="seconds allowed for one DAP attach"
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    args = _parse_args(argv)
    specs: list[MetricSpec] = []
    for item in args.metric:
        if len(item) < 4 or not item[2].isdigit():
            print(f"--metric needs NAME PATH LINE EXPR...: {' '.join(item)}", file=sys.stderr)
            return 2
        try:
            specs.append(MetricSpec(item[0], item[1], int(item[2]), tuple(item[3:])))
        except ValueError as exc:
            print(f"--metric: {exc}", file=sys.stderr)
            return 2

    def show(hit: MetricHit) -> None:
        print(f"{hit.metric} [{hit.connection_id[:8]}] {' | '.join(hit.values)}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        daemon = DevDaemon(
            args.host, args.port, token=args.token, attach_timeout=args.attach_timeout
        ).start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    with daemon:
        for spec in specs:
            daemon.add_metric(spec)
        daemon.on_hit(show)
        print(daemon.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
