#!/usr/bin/env python3
"""What the ownership checks cost: start-up, each control-plane caller, each daemon call.

    python bench/trust_costs.py            # 2,000 rounds each
    python bench/trust_costs.py --rounds 20000

Measured in this process with ``time.perf_counter_ns`` (median and 95th
percentile of single calls, after a warm-up), on real sockets and files:

* ``write_record``: the discovery record an enabled process writes at
  start-up, now with the directory-chain check, next to the previous writer
  (``makedirs`` + ``lstat`` of the leaf, reproduced below as the baseline);
* ``process_identity``: what a record now carries besides the start time
  (the PID namespace inode and ``NSpid``), next to the start time alone;
* ``peer_uid``: one control-plane caller's owner (exact lookup);
* ``server_end``: one new daemon connection's server owner (the daemon check);
* ``read_owned_file`` + chain check: what a CLI reader pays per record;
* importing ``detrix_auto.fileowner`` (from its cached bytecode), which the
  record writer now loads at start-up.

Linux only (elsewhere these answer "unknown" without asking anything).
"""

from __future__ import annotations

import argparse
import importlib
import os
import py_compile
import socket
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detrix_auto import discovery, fileowner, netowner  # noqa: E402


def _previous_private_dir(path: str) -> bool:
    """The writer's directory step before this change: create, then check the leaf only."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def _previous_write(home: str, data: bytes) -> None:
    directory = os.path.join(home, "clients")
    if not _previous_private_dir(directory):
        raise RuntimeError("baseline directory refused")
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, os.path.join(directory, f"{os.getpid()}.json"))


def measure(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    return interleaved([fn], rounds)[0]


def interleaved(fns: list[Callable[[], object]], rounds: int) -> list[tuple[float, float]]:
    """Median and p95 (µs) of each function, called in turn (A B A B ...): a noisy
    machine slows all of them alike."""
    for _ in range(min(200, rounds)):
        for fn in fns:
            fn()
    samples: list[list[int]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, samples, strict=True):
            start = time.perf_counter_ns()
            fn()
            out.append(time.perf_counter_ns() - start)
    results = []
    for out in samples:
        out.sort()
        results.append((statistics.median(out) / 1000, out[int(len(out) * 0.95)] / 1000))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("Linux only")
        return 0
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        home = os.path.join(scratch, "home")
        os.mkdir(home, 0o700)
        record = {"pid": os.getpid(), "name": "bench", "control_url": "http://127.0.0.1:1"}
        data = discovery.dump_json(record).encode()
        old_home = os.path.join(scratch, "old")
        os.mkdir(old_home, 0o700)
        before, now, chain = interleaved(
            [
                lambda: _previous_write(old_home, data),
                lambda: discovery.write_record(home, record),
                lambda: fileowner.untrusted_dir(scratch),
            ],
            args.rounds,
        )
        rows.append(("write_record, before (leaf check)", *before))
        rows.append(("write_record, now (chain check)", *now))
        rows.append(("  of which the chain check of its root", *chain))
        ticks, identity = interleaved(
            [discovery.process_start_ticks, discovery.process_identity], args.rounds
        )
        rows.append(("proc_start only, before", *ticks))
        rows.append(("process_identity, now", *identity))
        path = discovery.write_record(home, record)
        assert path is not None
        rows.append(
            (
                "reader: chain check + read_owned_file",
                *measure(
                    lambda: (
                        fileowner.untrusted_dir(os.path.dirname(path)),
                        fileowner.read_owned_file(path, 1 << 20),
                    ),
                    args.rounds,
                ),
            )
        )

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        with client, conn:
            local = conn.getsockname()
            rows.append(
                (
                    "peer_uid (control-plane caller)",
                    *measure(lambda: netowner.peer_uid(peer, local), args.rounds),
                )
            )
            rows.append(
                (
                    "server_end (new daemon connection)",
                    *measure(lambda: netowner.server_end(client), args.rounds),
                )
            )
            listener = netowner.listener(*server.getsockname())
            assert listener is not None
            rows.append(
                (
                    "process_holds (CLI, per record)",
                    *measure(
                        lambda: netowner.process_holds(os.getpid(), listener.inode), args.rounds
                    ),
                )
            )

    def fresh_import(name: str) -> Callable[[], object]:
        # From bytecode, as an installed package loads it (even where
        # PYTHONDONTWRITEBYTECODE kept it from being written).
        module = importlib.import_module(name)
        if module.__file__:
            py_compile.compile(module.__file__)

        def run() -> object:
            sys.modules.pop(name, None)
            return importlib.import_module(name)

        return run

    rows.append(
        (
            "import detrix_auto.fileowner (start-up)",
            *measure(fresh_import("detrix_auto.fileowner"), args.rounds),
        )
    )

    width = max(len(name) for name, _, _ in rows)
    print(f"{'what':<{width}}  median µs    p95 µs")
    for name, median, p95 in rows:
        print(f"{name:<{width}}  {median:9.1f} {p95:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
