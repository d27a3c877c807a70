#!/usr/bin/env python3
"""Fuzz a live detrix-auto control plane with 100,000+ generated requests.

    python bench/fuzz_control_plane.py [--requests 100000] [--seed 1] [--clients 2]

The control plane runs in a subprocess (``detrix_auto.init()`` from this
working tree), so the clients and the server each get a core. Its daemon
factory is replaced by one that fails as an unreachable daemon does: a wake
then answers the documented 503, and nothing ever reaches debugpy or the
network. Client processes send, each on a fresh connection:

* raw random bytes (with and without a blank line at the end),
* requests assembled from interesting parts (methods, paths, versions, proxy,
  browser and auth headers, content types, bodies, lengths), pipelined 1-3
  at a time,
* valid requests with byte-level mutations (flip, insert, delete, duplicate,
  truncate).

Every answer must be a well-formed HTTP/1.1 response with a JSON object body,
and a status that is 2xx/4xx or the wake's documented 503; the server must
close each connection within the timeout (else: a hang). Afterwards it must
still answer, with no more file descriptors or threads than before.

Prints the count, the time, the status histogram and every failure kind;
exits 1 on any crash, hang, malformed answer or unexpected 5xx.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fuzz-token-0123456789abcdef"
GUARD = "daemon not reachable (fuzz guard)"
ROUTES = ["/detrix/health", "/detrix/status", "/detrix/info", "/detrix/wake", "/detrix/sleep"]
ALLOWED = {200, 400, 401, 404, 405, 408, 411, 413, 415, 431}

SERVER = f"""
import os, sys
import detrix_auto
from detrix_auto import lifecycle
from detrix_auto.errors import DaemonError

class Unreachable:
    url = "http://127.0.0.1:9"
    def health(self, *args):
        raise DaemonError({GUARD!r})
    register = unregister = connection = health

lifecycle._default_daemon_factory = lambda url, settings: Unreachable()
detrix_auto.init(name="fuzz-bench", token={TOKEN!r}, discovery=False,
                 daemon_url="http://127.0.0.1:9", detrix_home=sys.argv[1])
print(detrix_auto.status()["control_port"], flush=True)
sys.stdin.read()
detrix_auto.shutdown()
"""

# -- generation ------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "TRACE", "CONNECT"]
PATHS = [
    *ROUTES,
    "/",
    "/detrix",
    "/detrix/wake/",
    "//detrix/status",
    "/detrix/status?x=1",
    "/detrix/%77ake",
    "*",
    "http://evil/detrix/wake",
    "/detrix/wake#x",
    "/../detrix/info",
]
VERSIONS = ["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 3 + ["HTTP/2.0", "http/1.1", "HTTP/1.1 x", ""]
HEADER_VALUES = {
    "Host": [
        "127.0.0.1",
        "localhost:1",
        "evil.example",
        "[::1]:8",
        "",
        "a:b:c",
        "127.0.0.1:99999999999",
        "127.0.0.2",
        "[::ffff:127.0.0.1]:1",
    ],
    "Content-Type": [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "APPLICATION/JSON",
        "",
    ],
    "Authorization": [
        f"Bearer {TOKEN}",
        "Bearer",
        "Bearer x",
        "Basic eA==",
        f"bearer {TOKEN}",
        "",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
    ],
    "Origin": ["http://evil.example", "null", ""],
    "X-Forwarded-For": ["203.0.113.9"],
    "Forwarded": ["for=203.0.113.9"],
    "Sec-Fetch-Site": ["cross-site", "same-origin"],
    "Connection": ["close", "keep-alive", "Upgrade", ""],
    "Transfer-Encoding": ["chunked", "identity"],
    "Expect": ["100-continue"],
    "Content-Length": ["0", "-1", "1e3", "99999999999999", "+5", " 2", "0x10", "70000"],
}
DAEMON_URLS = [
    "http://127.0.0.1:9",
    "https://127.0.0.1:9/x/",
    "ftp://x",
    "http://user:pw@127.0.0.1:9",
    "http://[::1]:9",
    "http://h:0",
    "http://evil.example:80",
    "http://127.0.0.1:9?q",
    "",
    " ",
    None,
    5,
    ["x"],
]


def rand_text(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def rand_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(10**12), 10**12)
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return rand_text(rng, 'ab\u00e9\u2603"\\/ \x01', 0, 12)
    if kind == 5:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [rand_text(rng, "abc_", 0, 6) for _ in range(rng.randint(0, 4))]
    return {key: rand_json(rng, depth + 1) for key in keys}


def rand_body(rng: random.Random) -> bytes | None:
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return b"{}"
    if kind == 2:
        return json.dumps({"daemon_url": rng.choice(DAEMON_URLS)}).encode()
    if kind == 3:
        return json.dumps(rand_json(rng)).encode()
    if kind == 4:
        return rng.randbytes(rng.randint(0, 200))
    if kind == 5:
        return b"[" * rng.randint(1, 5000)
    return b"{" * rng.randint(1, 300) + b'"a":' * 3


BENIGN = {
    "Host": ["127.0.0.1", "localhost", "127.0.0.1:1", "[::1]:1"],
    "Content-Type": ["application/json", "application/json; charset=utf-8"],
    "Authorization": [f"Bearer {TOKEN}"],
    "Accept": ["*/*", "application/json"],
    "User-Agent": ["fuzz/1.0"],
}


def generated(rng: random.Random) -> tuple[bytes, bool]:
    """(request bytes, complete): complete when framed by us and asking to close.

    Four in ten are well formed (a route's own method, benign headers), so that
    the routes, auth and the wake path are reached, not only the parser's refusals.
    """
    clean = rng.random() < 0.4
    if clean:
        path = rng.choice([*ROUTES, "/detrix/status?verbose=1"])
        if path in ("/detrix/wake", "/detrix/sleep"):
            method = "POST"
        else:
            method = rng.choice(["GET", "HEAD"])
        version = rng.choice(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"])
        pool = BENIGN
    else:
        method = rng.choice(METHODS) if rng.random() < 0.9 else rand_text(rng, TOKEN_CHARS, 1, 8)
        if rng.random() < 0.9:
            path = rng.choice(PATHS)
        else:
            path = "/" + rand_text(rng, "abc/%?#.\x7f\u00e9 ", 0, 30)
        version = rng.choice(VERSIONS)
        pool = HEADER_VALUES
    headers = []
    for _ in range(rng.randint(0, 4)):
        if clean or rng.random() < 0.9:
            name = rng.choice(sorted(pool))
            headers.append((name, rng.choice(pool[name])))
        else:
            headers.append(
                (
                    rand_text(rng, TOKEN_CHARS + " :", 1, 12),
                    rand_text(rng, "abc \t\x00\x7f\u00ff:", 0, 30),
                )
            )
    close = rng.random() < 0.5
    if close:
        headers = [(n, v) for n, v in headers if n.lower() != "connection"]
        headers.append(("Connection", "close"))
    if clean:
        override = json.dumps({"daemon_url": rng.choice(DAEMON_URLS)}).encode()
        body = rng.choice([None, b"{}", override])
        names = {n.lower() for n, _ in headers}
        if body and "content-type" not in names:
            headers.append(("Content-Type", "application/json"))
    else:
        body = rand_body(rng)
    names = {n.lower() for n, _ in headers}
    if body is not None and "content-length" not in names:
        headers.append(("Content-Length", str(len(body))))
    head = "\r\n".join([f"{method} {path} {version}", *(f"{n}: {v}" for n, v in headers)])
    data = head.encode("utf-8", "surrogatepass") + b"\r\n\r\n" + (body or b"")
    complete = close and not names & {"content-length", "transfer-encoding"}
    return data, complete


def mutated(rng: random.Random) -> bytes:
    method = rng.choice(["GET", "POST", "HEAD"])
    path = rng.choice(ROUTES)
    body = b'{"daemon_url": "http://127.0.0.1:9"}' if method == "POST" else b""
    data = bytearray(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(max(1, len(data)))
        if op == 0 and data:
            data[at] ^= rng.randint(1, 255)
        elif op == 1:
            data[at:at] = rng.choice(
                [
                    rng.randbytes(rng.randint(1, 16)),
                    b"\r\n",
                    b"\r\n\r\n",
                    b":",
                    b" ",
                    b"\x00",
                    b"\r",
                    b"\n",
                    b"\t",
                ]
            )
        elif op == 2:
            del data[at : at + rng.randint(1, 8)]
        elif op == 3:
            data[at:at] = data[at : at + rng.randint(1, 40)]
        else:
            del data[at:]
    return bytes(data)


def next_case(rng: random.Random) -> tuple[str, bytes, bool]:
    """(kind, bytes, half_close)."""
    roll = rng.random()
    if roll < 0.2:
        data = rng.randbytes(rng.randint(0, 3000))
        if rng.random() < 0.3:
            data = data[:40] + b"\r\n\r\n"
        return "raw", data, True
    if roll < 0.7:
        batch = [generated(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        data = b"".join(d for d, _ in batch)
        if len(batch) == 1 and batch[0][1]:
            return "complete", data, False
        return "generated", data, True
    return "mutated", mutated(rng), True


# -- checking ---------------------------------------------------------------------


class Malformed(Exception):
    pass


def parse(reply: bytes, heads: int) -> list[tuple[int, dict[str, object] | None]]:
    out = []
    rest = reply
    while rest:
        head, sep, after = rest.partition(b"\r\n\r\n")
        if not sep:
            raise Malformed(f"truncated head {rest[:120]!r}")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) != 3 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit():
            raise Malformed(f"bad status line {lines[0][:120]!r}")
        fields = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise Malformed(f"bad header {line[:120]!r}")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"content-type", b"").split(b";")[0] != b"application/json":
            raise Malformed("no JSON content type")
        try:
            length = int(fields[b"content-length"])
        except (KeyError, ValueError):
            raise Malformed("no Content-Length") from None
        if heads and length and (not after or after.startswith(b"HTTP/1.1 ")):
            heads -= 1
            out.append((int(parts[1]), None))
            rest = after
            continue
        if len(after) < length:
            raise Malformed("body shorter than Content-Length")
        try:
            body = json.loads(after[:length])
        except ValueError:
            raise Malformed(f"body not JSON {after[:120]!r}") from None
        if not isinstance(body, dict):
            raise Malformed("body not an object")
        status = int(parts[1])
        if status >= 400 and not (isinstance(body.get("error"), str) and body["error"]):
            raise Malformed("error without message")
        out.append((status, body))
        rest = after[length:]
    return out


def exchange(address: tuple[str, int], data: bytes, half_close: bool, timeout: float) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def worker(job: tuple[tuple[str, int], int, int, float]) -> dict[str, object]:
    address, count, seed, timeout = job
    rng = random.Random(seed)
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    problems: Counter[str] = Counter()
    for _ in range(count):
        kind, data, half_close = next_case(rng)
        kinds[kind] += 1
        try:
            reply = exchange(address, data, half_close, timeout)
        except TimeoutError:
            problems["hang"] += 1
            failures.append(f"hang: {data[:200]!r}")
            continue
        except ConnectionRefusedError:
            problems["refused (server gone?)"] += 1
            failures.append("connection refused")
            if problems["refused (server gone?)"] > 20:
                break
            continue
        except OSError as exc:
            problems[f"oserror {type(exc).__name__}"] += 1
            continue
        try:
            responses = parse(reply, data.count(b"HEAD "))
        except Malformed as exc:
            problems["malformed"] += 1
            failures.append(f"malformed ({exc}): {data[:200]!r} -> {reply[:200]!r}")
            continue
        if kind == "complete" and len(responses) != 1:
            problems["complete request not answered once"] += 1
            failures.append(f"{len(responses)} answers: {data[:200]!r}")
        if not responses:
            statuses["(none)"] += 1
        for status, body in responses:
            statuses[str(status)] += 1
            if status == 503 and b"/detrix/wake" in data and body and body.get("error") == GUARD:
                continue
            if status not in ALLOWED:
                problems["unexpected status"] += 1
                failures.append(f"status {status} {body}: {data[:200]!r}")
    return {"statuses": statuses, "kinds": kinds, "problems": problems, "failures": failures[:20]}


# -- the server ---------------------------------------------------------------------


def proc_counts(pid: int) -> tuple[int, int]:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as handle:
            threads = next(int(line.split()[1]) for line in handle if line.startswith("Threads:"))
        return fds, threads
    except (OSError, StopIteration, ValueError):
        return -1, -1


def health(address: tuple[str, int]) -> bool:
    try:
        reply = exchange(address, b"GET /detrix/health HTTP/1.0\r\n\r\n", False, 2.0)
        return parse(reply, 0) == [(200, {"status": "ok", "service": "detrix-client"})]
    except (OSError, Malformed):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("DETRIX_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        stderr_path = Path(tmp) / "server.stderr"
        with open(stderr_path, "w") as err:
            server = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(home)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        try:
            assert server.stdout is not None and server.stdin is not None
            port = int(server.stdout.readline())
            address = ("127.0.0.1", port)
            if not health(address):
                print("the control plane does not answer", file=sys.stderr)
                return 1
            before = proc_counts(server.pid)
            per = [args.requests // args.clients] * args.clients
            per[0] += args.requests - sum(per)
            jobs = [(address, n, args.seed * 1000 + i, args.timeout) for i, n in enumerate(per)]
            started = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(args.clients) as pool:
                results = pool.map(worker, jobs)
            elapsed = time.perf_counter() - started
            time.sleep(0.5)  # let the server close what it still holds
            alive = server.poll() is None and health(address)
            after = proc_counts(server.pid)
            server.stdin.close()
            server.wait(timeout=15)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        server_stderr = stderr_path.read_text(errors="replace")

    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    failures: list[str] = []
    for result in results:
        statuses.update(result["statuses"])  # type: ignore[arg-type]
        kinds.update(result["kinds"])  # type: ignore[arg-type]
        problems.update(result["problems"])  # type: ignore[arg-type]
        failures.extend(result["failures"])  # type: ignore[arg-type]
    if not alive:
        problems["server dead or not answering afterwards"] += 1
    if before[0] >= 0 and after[0] > before[0] + 2:
        problems[f"descriptor leak ({before[0]} -> {after[0]})"] += 1
    if before[1] >= 0 and after[1] > before[1] + 4:
        problems[f"thread growth ({before[1]} -> {after[1]})"] += 1
    if "Traceback" in server_stderr or "control plane stopped" in server_stderr:
        problems["server stderr shows a crash"] += 1
        failures.append(server_stderr[-2000:])

    sent = sum(kinds.values())
    print(f"requests sent:    {sent} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print(
        f"elapsed:          {elapsed:.1f} s ({sent / elapsed:.0f} requests/s, "
        f"{args.clients} client processes)"
    )
    print(f"responses:        {sum(v for k, v in statuses.items() if k != '(none)')}")
    print(
        "status histogram: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: kv[0]))
    )
    print(f"server fds/threads before -> after: {before} -> {after}")
    if problems:
        print("FAILURES: " + ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())))
        for line in failures[:20]:
            print("  " + line)
        return 1
    print("no crash, no hang, no malformed answer, no 5xx but the wake's documented 503")
    return 0


if __name__ == "__main__":
    sys.exit(main())
