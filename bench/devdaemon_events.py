"""The embedded daemon's event path: throughput, memory per event, query cost.

Three measurements, for the figures behind the event store's defaults
(``max_events`` 100 000, ``max_event_bytes`` 64 MiB) and the events poll of
``observe``:

store
    ``EventStore.add`` of ``--events`` (100 000) three-value events, as the
    daemon stores them: events per second, and the Python heap they hold
    (tracemalloc) per event and in all.
capture
    A real app (``DETRIX_ENABLE=1``) running a tight loop, a metric with three
    expressions on it through ``POST /api/v1/metrics``, for ``--seconds`` (5):
    hits per second that reach the event store through debugpy, DAP and the
    parser (debugpy's evaluation in the app is the bound, not the daemon).
query
    With ``--stored`` (20 000) events captured, the wall time of ``GET /api/v1/events`` for a poll
    as observe sends it (``since`` = the newest timestamp, limit 1000) and for
    ``limit=100`` without ``since`` (median of 50 each), and of ``history``,
    which counts every match.

Run from the repository root with the package installed::

    python bench/devdaemon_events.py            # about 30 s
    python bench/devdaemon_events.py --events 20000 --seconds 2

It prints the figures; nothing is written. Every socket is on loopback and
every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import textwrap
import time
import tracemalloc
import urllib.request
from pathlib import Path

from _control import enabled_app, record

from detrix_auto.devdaemon import DevDaemon
from detrix_auto.devdaemon.store import Event, EventStore

APP = textwrap.dedent(
    """\
    import time
    n = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        n += 1
        price = n * 1.5
        name = "BTCUSD"
        x = n  # the logpoint goes here (line 8)
    """
)


def call(url: str, path: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method="POST" if body is not None else "GET"
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read() or b"null")


def bench_store(count: int) -> None:
    events = [
        Event(
            1,
            "order",
            "c" * 32,
            "/app.py",
            8,
            i,
            ("n", "price", "name"),
            (str(i), str(i * 1.5), "BTCUSD"),
        )
        for i in range(count)
    ]
    store = EventStore(max_events=count, max_bytes=1 << 40)
    started = time.perf_counter()
    for event in events:
        store.add(event)
    elapsed = time.perf_counter() - started
    del events
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = EventStore(max_events=count, max_bytes=1 << 40)
    for i in range(count):
        held.add(
            Event(
                1,
                "order",
                "c" * 32,
                "/app.py",
                8,
                i,
                ("n", "price", "name"),
                (str(i), str(i * 1.5), "BTCUSD"),
            )
        )
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"store: {count} adds in {elapsed:.3f} s = {count / elapsed:,.0f} events/s")
    print(
        f"store: {(after - before) / count:,.0f} bytes of heap per event, "
        f"{(after - before) / 2**20:.1f} MiB for {count} (counted size {held.bytes / count:.0f})"
    )


def bench_capture_and_query(seconds: float, count: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        proc, home, script = enabled_app(Path(work), APP, cwd=work)
        try:
            control = record(home, proc.pid)["control_url"]
            with DevDaemon(max_events=count, attach_timeout=30) as daemon:
                _, woke = call(control, "/detrix/wake", {"daemon_url": daemon.url})
                cid = woke["connection_id"]  # type: ignore[index]
                _, created = call(
                    daemon.url,
                    "/api/v1/metrics",
                    {
                        "name": "order",
                        "connectionId": cid,
                        "location": {"file": str(script), "line": 8},
                        "expressions": ["n", "price", "name"],
                        "enabled": True,
                    },
                )
                metric_id = created["metricId"]  # type: ignore[index]
                first = daemon.status()["totalEvents"]
                time.sleep(seconds)
                captured = daemon.status()["totalEvents"] - first
                print(f"capture: {captured / seconds:,.0f} hits/s through debugpy and DAP")
                fill_until = time.monotonic() + 120
                while daemon.status()["eventsStored"] < count and time.monotonic() < fill_until:
                    time.sleep(0.2)
                call(control, "/detrix/sleep", {})
                newest = call(daemon.url, f"/api/v1/events?metricId={metric_id}&limit=1")[1]
                stamp = newest[0]["timestamp"]  # type: ignore[index]
                for label, path in (
                    (
                        "poll since newest, limit 1000",
                        f"/api/v1/events?metricId={metric_id}&since={stamp}&limit=1000",
                    ),
                    (
                        "limit 100, all stored",
                        f"/api/v1/events?metricId={metric_id}&since=0&limit=100",
                    ),
                    (
                        "history limit 100 (counts all)",
                        f"/api/v1/metrics/{metric_id}/history?limit=100",
                    ),
                ):
                    times = []
                    for _ in range(50):
                        started = time.perf_counter()
                        call(daemon.url, path)
                        times.append(time.perf_counter() - started)
                    print(
                        f"query ({daemon.status()['eventsStored']} stored): {label}: "
                        f"median {statistics.median(times) * 1000:.2f} ms"
                    )
        finally:
            proc.kill()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--stored", type=int, default=20_000, help="events captured before the queries"
    )
    args = parser.parse_args()
    bench_store(args.events)
    bench_capture_and_query(args.seconds, args.stored)


if __name__ == "__main__":
    main()
