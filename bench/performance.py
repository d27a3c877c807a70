#!/usr/bin/env python3
"""detrix-auto's performance, side by side with detrix-py and with the floor.

One command builds what it needs and measures everything of issue 6::

    python bench/performance.py                        # the interpreter running it
    python bench/performance.py --pythons 3.10,3.11,3.12,3.13
    python bench/performance.py --quick                # a few minutes per Python
    python bench/performance.py --runs 50 --no-write   # more runs, print only
    python bench/performance.py --pythons 3.10,3.11,3.12,3.13,3.14,3.15 --chroot \
        --only startup --startup-core --runs 400       # start-up on every Python

``--chroot`` takes the Pythons this machine lacks (3.14 and 3.15) from the
Debian sid chroot that ``.ci/sid-chroot`` builds (root only): the script, the
wheel and the checkout's ``detrix_auto`` (for the embedded daemon) are copied
in and the start-up and overhead parts run there, with that Python's own
``bare`` and ``auto`` environments (under ``/opt/detrix-bench`` inside).

For every Python it makes three virtual environments under ``bench/.venvs/``
(git-ignored): ``bare`` (debugpy and urllib3, no detrix-auto), ``auto`` (the
same plus detrix-auto installed from a wheel built from this checkout, so the
``.pth`` hook is the shipped one) and ``detrix-py`` (the original client from
the package index). Every measurement runs real subprocesses and an embedded
daemon (``detrix_auto.devdaemon``) that performs the real DAP attach. Runs of
the variants being compared are interleaved (A B A B ...), and the tables give
medians with min/max, and ratios taken from the same run.

Only public tooling: ``subprocess``, ``time.perf_counter``, ``os.wait4``
(rusage of each child) and ``/proc/<pid>/status`` for RSS.

Results go to ``docs/performance.md``: the hand-written parts of that file
(everything outside the ``bench:`` markers) are kept, and only the sections of
the Pythons measured are replaced. With ``--only``, a Python's section is
printed but not written (it would lose the parts not measured), while the
start-up table across Pythons is written whenever start-up was measured on
more than one.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import math
import os
import platform
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _control import WORK

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / "bench" / ".venvs"
DOC = ROOT / "docs" / "performance.md"
sys.path.insert(0, str(ROOT))

#: Requirements shared by the ``bare`` and ``auto`` environments (detrix-auto's own).
BASE_REQS = ["debugpy", "urllib3"]
ORIGINAL = "detrix-py"

# -- the child program ---------------------------------------------------------------

#: One script for every child: ``app.py IMPL MODE [ARG]``. IMPL is ``hook``
#: (detrix-auto through its .pth hook, nothing imported here), ``api``
#: (``detrix_auto.init()``), ``orig`` (``detrix.init()``), ``bare``, or
#: ``debugpy-inproc``/``debugpy-adapter`` (bare debugpy, the floors), or
#: ``debugpy-imported`` (imported, never listening: the overhead's control), or
#: ``debugpy-later`` (the same, imported when it reads ``import``: the second control,
#: which changes only what an import changes, as a wake imports debugpy). MODE is
#: ``idle`` (wait for stdin to close), ``work`` (time CPU-bound blocks until
#: stdin closes), ``forks`` (time ``os.fork()`` on request) or ``statusbench``
#: (in-process status() latency).
APP = textwrap.dedent(
    """\
    import json, os, select, sys, threading, time

    IMPL, MODE = sys.argv[1], sys.argv[2]
    URL = os.environ.get("BENCH_DAEMON_URL", "http://127.0.0.1:9")

    def emit(**fields):
        sys.stdout.write(json.dumps(fields) + "\\n")
        sys.stdout.flush()

    # WORK: the CPU-bound block (bench/_control.py)

    def cold(block):
        seen = block + 1  # COLD_LINE
        return seen

    api = None
    info = {}
    if IMPL == "api":
        import detrix_auto as api
        api.init(daemon_url=URL)
        info["control_port"] = api.status()["control_port"]
    elif IMPL == "orig":
        import detrix as api
        api.init(name="bench-orig-%d" % os.getpid(), daemon_url=URL)
        info["control_port"] = api.status()["control_port"]
    elif IMPL == "debugpy-imported":  # loaded (pydevd too), never listening nor tracing
        import debugpy
        import debugpy.server.api
    elif IMPL.startswith("debugpy-"):
        t0 = time.perf_counter()
        import debugpy
        t1 = time.perf_counter()
        import debugpy.server.api
        t2 = time.perf_counter()
        if IMPL == "debugpy-tuned":  # what detrix-auto does around listen(), nothing else
            from debugpy.common import log
            if log.log_dir is None:
                debugpy.server.api.ensure_logging.ensured = True
        host, port = debugpy.listen(("127.0.0.1", 0),
                                    in_process_debug_adapter=IMPL != "debugpy-adapter")
        t3 = time.perf_counter()
        if IMPL == "debugpy-tuned":
            import socket
            from _pydevd_bundle.pydevd_constants import get_global_debugger
            py_db = get_global_debugger()
            accept = py_db.initialize_network
            def initialize_network(sock, *args, **kwargs):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return accept(sock, *args, **kwargs)
            py_db.initialize_network = initialize_network
        info.update(port=port, t_import=t1 - t0, t_import_server=t2 - t1, t_listen=t3 - t2)

    def stdin_closed():
        return bool(select.select([sys.stdin], [], [], 0)[0]) and not sys.stdin.readline()

    if MODE == "idle":
        emit(ready=True, **info)
        sys.stdin.read()
    elif MODE == "work":
        n_loop, n_calls = (int(x) for x in sys.argv[3].split(","))
        emit(ready=True, **info)
        block = 0
        while not stdin_closed():
            t0 = time.perf_counter()
            loop_work(n_loop)
            t1 = time.perf_counter()
            calls_work(n_calls)
            t2 = time.perf_counter()
            cold(block)
            emit(block=block, loop=t1 - t0, calls=t2 - t1)
            block += 1
    elif MODE == "slices":  # short slices, each followed by a system call (select on stdin)
        n_loop = int(sys.argv[3])
        emit(ready=True, **info)
        while not stdin_closed():
            loop_work(n_loop)
    elif MODE == "onrequest":  # one block per line on stdin: runs interleaved with others
        n_loop, n_calls = (int(x) for x in sys.argv[3].split(","))
        emit(ready=True, **info)
        block = 0
        for line in sys.stdin:
            if line.startswith("import"):  # debugpy-later: what a wake imports, nothing else
                import debugpy
                import debugpy.server.api
                emit(imported=True)
                continue
            best = {"loop": 1e9, "calls": 1e9}
            for _ in range(5):  # the first runs after a wait run on cold caches
                t0 = time.perf_counter()
                loop_work(n_loop)
                t1 = time.perf_counter()
                calls_work(n_calls)
                t2 = time.perf_counter()
                best = {"loop": min(best["loop"], t1 - t0), "calls": min(best["calls"], t2 - t1)}
            cold(block)
            block += 1
            emit(**best)
    elif MODE == "forks":  # on each stdin line: N forks from the main module
        import warnings
        count = int(sys.argv[3])
        emit(ready=True, **info)
        for _ in sys.stdin:
            times = []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(count):
                    t0 = time.perf_counter()
                    pid = os.fork()
                    if pid == 0:
                        os._exit(0)
                    times.append(time.perf_counter() - t0)
                    os.waitpid(pid, 0)
            times.sort()
            emit(fork=times[len(times) // 2], warned=len(caught))
    elif MODE == "statusbench":
        count = int(sys.argv[3])
        emit(ready=True, **info)
        def timed_status():
            t = time.perf_counter_ns()
            api.status()
            return time.perf_counter_ns() - t
        idle = [timed_status() for _ in range(count)]
        box = {}
        def wake():
            t = time.perf_counter()
            try:
                api.wake()
            except Exception as exc:
                box["error"] = repr(exc)
            box["wake"] = time.perf_counter() - t
        th = threading.Thread(target=wake)
        during = []
        th.start()
        while th.is_alive():
            during.append(timed_status())
            time.sleep(0.0005)
        th.join()
        t = time.perf_counter()
        api.sleep()
        emit(idle=idle, during=during, sleep=time.perf_counter() - t, **box)
        sys.stdin.read()
    """
).replace("# WORK: the CPU-bound block (bench/_control.py)\n", WORK)
COLD_LINE = next(i for i, line in enumerate(APP.splitlines(), 1) if "COLD_LINE" in line)


# -- small utilities -------------------------------------------------------------------


def same_cpu(*children: Child) -> None:
    """Pin the main threads of processes that compute in turn to one and the same CPU.

    On this shared machine each virtual CPU's speed drifts on its own: the same
    block took 25 ms on one and 39 ms on the other at the same moment (0.74x to
    1.39x from one second to the next), so two processes that the scheduler left
    on different CPUs were compared by CPU, not by code. Only the main thread (its
    tid is the pid), which runs the blocks; the other threads run anywhere.
    """
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is None:
        return
    cpu = max(os.sched_getaffinity(0))
    for child in children:
        setaffinity(child.pid, {cpu})


#: ``slices`` mode: iterations of the loop between two system calls (~2 ms).
SLICE_LOOP = "10000"
#: Seconds a status request beside such a host is given.
SLICED_LIMIT = 5.0
#: (row, implementation, extra environment) of the sliced host's status.
SLICED_VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("detrix-auto", "auto", {}),
    ("detrix-auto, DETRIX_SWITCH_INTERVAL=0.0005", "auto", {"DETRIX_SWITCH_INTERVAL": "0.0005"}),
    ("detrix-py", "orig", {}),
)

#: The overhead row that compares a process after a sleep with itself before any wake.
AFTER_VS_NEVER = "after sleep ÷ never woken, same process"
#: The same division for a control process that changes nothing between the phases.
CONTROL_DRIFT = "control (debugpy imported, never listening): its after ÷ its never"
#: After the sleep against the control in the same phase.
AFTER_VS_LOADED = "after sleep ÷ control, same phase"
#: The same division for a process that imports debugpy at the wake and does nothing
#: else (no detrix-auto): what an import alone leaves (CPython's small-object
#: allocator holds the host's objects in other places afterwards).
IMPORT_DRIFT = "debugpy imported at the wake, no detrix-auto: its after ÷ its never"
#: The lane run with the system allocator (``PYTHONMALLOC=malloc``) for every process:
#: the divisions without the allocator's layout.
SYSTEM_MALLOC = "PYTHONMALLOC=malloc"
MALLOC_AFTER_VS_NEVER = f"{SYSTEM_MALLOC}: {AFTER_VS_NEVER}"
MALLOC_IMPORT_DRIFT = f"{SYSTEM_MALLOC}: {IMPORT_DRIFT}"
MALLOC_CONTROL_DRIFT = f"{SYSTEM_MALLOC}: {CONTROL_DRIFT}"
#: Rows that divide two ratios of one run: shown with the runs' range.
DIVIDED_ROWS = (
    AFTER_VS_NEVER,
    CONTROL_DRIFT,
    AFTER_VS_LOADED,
    IMPORT_DRIFT,
    MALLOC_AFTER_VS_NEVER,
    MALLOC_IMPORT_DRIFT,
    MALLOC_CONTROL_DRIFT,
)


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float, digits: int = 1) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.{digits}f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def mib(kib: float) -> str:
    if math.isnan(kib):
        return "n/a"
    return f"{kib / 1024:.1f}"


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DETRIX_", "PYTHON", "PYDEVD_", "VIRTUAL_ENV"))
    }
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # no frozen-modules warning from bare debugpy
    env.update(extra)
    return env


def rss_kib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def adapter_pids() -> set[int]:
    """debugpy adapter processes (the separate-process mode spawns one per listen)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read()
        except OSError:
            continue
        if b"debugpy/adapter" in cmd and b"--for-server" in cmd:
            found.add(int(entry))
    return found


def request(
    base: str, method: str, path: str, body: Any = None, timeout: float = 60.0
) -> tuple[int, Any, float]:
    """One request on a fresh connection; returns (status, JSON body, seconds)."""
    host, port = base.split("://", 1)[1].rstrip("/").rsplit(":", 1)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return response.status, parsed, elapsed


class Hammer:
    """GET /detrix/status back to back on a thread; latencies of requests made meanwhile."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                code, _, elapsed = request(self.base, "GET", "/detrix/status", timeout=30)
                if code == 200:
                    self.latencies.append(elapsed)
                else:
                    self.errors += 1
            except Exception:
                self.errors += 1
            time.sleep(0.001)

    def __enter__(self) -> Hammer:
        self._thread.start()
        time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


class Child:
    """A running child with its stdout lines (JSON) on a queue and stderr collected."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=str(cwd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"no output from {self.argv[1:]} within {timeout}s; "
                    f"stderr: {''.join(self.err)[-2000:]}"
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise RuntimeError(
                    f"{self.argv[1:]} exited ({self.proc.poll()}): {''.join(self.err)[-2000:]}"
                )
            line = line.strip()
            if line.startswith("{"):
                try:
                    return dict(json.loads(line))
                except ValueError:
                    continue

    def ask(self) -> dict[str, Any]:
        """One block of work (``onrequest`` mode), while every other child waits."""
        return self.send("go")

    def send(self, line: str) -> dict[str, Any]:
        """One line to the child's stdin; its next JSON line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.next()

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self.lines.put(None)
                return

    def stop(self, timeout: float = 20.0) -> float:
        """Close stdin (the child then ends by itself); returns how long exit took."""
        started = time.perf_counter()
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            log(f"warning: {self.argv[1:]} did not exit within {timeout}s and was killed")
            return float("nan")
        return time.perf_counter() - started


# -- environments ---------------------------------------------------------------------


@dataclass
class Envs:
    version: str  # "3.11"
    full_version: str  # "3.11.7"
    bare: Path
    auto: Path
    orig: Path | None
    packages: dict[str, str] = field(default_factory=dict)
    orig_missing: str = ""  # why detrix-py is not measured on this Python, if it is not


#: The start-up variants of the table across Pythons (``--startup-core``).
CORE_STARTUP = (
    "bare interpreter",
    "detrix-auto installed, disabled",
    "detrix-auto enabled, sleeping",
)

#: What ``.ci/sid-chroot`` provides, what is measured there, and where this script runs.
CHROOT_PYTHONS = ("3.14", "3.15")
CHROOT_PARTS = frozenset({"startup", "overhead"})
CHROOT_DIR = "/opt/detrix-bench"


def host_python(version: str) -> str | None:
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    return shutil.which(f"python{version}")


def find_python(version: str) -> str:
    found = host_python(version)
    if found is None:
        raise SystemExit(
            f"python{version} is not on PATH (with pyenv: export PYENV_VERSION=... "
            "listing the versions, as .ci/run does)"
        )
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(argv)}\n{result.stdout}\n{result.stderr}")
    return result


def build_wheel() -> Path:
    out = VENVS / "wheels"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log("building the detrix-auto wheel from this checkout")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)])
    wheels = sorted(out.glob("detrix_auto-*.whl"))
    if not wheels:
        raise SystemExit("pip wheel produced no detrix_auto wheel")
    return wheels[-1]


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def ensure_venv(python: str, path: Path, requirements: list[str]) -> None:
    marker = path / ".bench-ready"
    wanted = json.dumps(requirements)
    if marker.exists() and marker.read_text() == wanted and venv_python(path).exists():
        return
    if path.exists():
        shutil.rmtree(path)
    log(f"creating {path.relative_to(ROOT)} ({', '.join(requirements)})")
    run([python, "-m", "venv", str(path)])
    run(
        [
            str(venv_python(path)),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *requirements,
        ]
    )
    marker.write_text(wanted)


def installed(path: Path) -> dict[str, str]:
    result = run(
        [
            str(venv_python(path)),
            "-m",
            "pip",
            "list",
            "--format=json",
            "--disable-pip-version-check",
        ]
    )
    return {item["name"].lower(): item["version"] for item in json.loads(result.stdout)}


def prepare(version: str, wheel: Path, with_original: bool) -> Envs:
    python = find_python(version)
    full = run([python, "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    bare = VENVS / f"py{version}-bare"
    auto = VENVS / f"py{version}-auto"
    orig = VENVS / f"py{version}-detrix-py"
    ensure_venv(python, bare, BASE_REQS)
    ensure_venv(python, auto, BASE_REQS)
    # Always the current checkout: reinstall the freshly built wheel.
    run(
        [
            str(venv_python(auto)),
            "-m",
            "pip",
            "install",
            "-q",
            "--force-reinstall",
            "--no-deps",
            "--disable-pip-version-check",
            str(wheel),
        ]
    )
    envs = Envs(version, full, bare, auto, None)
    if with_original:
        try:
            ensure_venv(python, orig, [ORIGINAL])
        except SystemExit as exc:
            log(f"warning: could not install {ORIGINAL} for {version}: {exc}")
            envs.orig_missing = f"{ORIGINAL} could not be installed"
        else:
            probe = subprocess.run(
                [str(venv_python(orig)), "-c", "import detrix"],
                check=False,
                capture_output=True,
                text=True,
                env=clean_env(),
            )
            if probe.returncode == 0:
                envs.orig = orig
            else:
                last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
                envs.orig_missing = f"`import detrix` fails on Python {version}: {last}"
                log(
                    f"warning: {ORIGINAL} is installed but {envs.orig_missing}; measuring "
                    "detrix-auto alone on this Python"
                )
    pkgs = installed(auto)
    envs.packages = {k: pkgs[k] for k in ("detrix-auto", "debugpy", "urllib3") if k in pkgs}
    if envs.orig is not None:
        orig_pkgs = installed(envs.orig)
        envs.packages.update(
            {k: orig_pkgs[k] for k in ("detrix-py", "pydantic", "httpx") if k in orig_pkgs}
        )
        if orig_pkgs.get("debugpy") != envs.packages.get("debugpy"):
            envs.packages["debugpy (detrix-py env)"] = orig_pkgs.get("debugpy", "?")
    return envs


# -- measurements -----------------------------------------------------------------------


@dataclass
class Config:
    runs: int
    quick: bool
    cycles: int
    overhead_runs: int
    phase_blocks: int
    mem_runs: int
    status_requests: int
    work: str
    startup_core: bool = False

    @property
    def malloc_runs(self) -> int:
        """Runs of the overhead's ``PYTHONMALLOC=malloc`` lane (detrix-auto only)."""
        return max(1, self.overhead_runs - 2)


def config(args: argparse.Namespace) -> Config:
    cfg = _config(args)
    cfg.startup_core = bool(getattr(args, "startup_core", False))
    return cfg


def _config(args: argparse.Namespace) -> Config:
    if args.quick:
        return Config(
            runs=max(30, args.runs or 30),
            quick=True,
            cycles=3,
            overhead_runs=1,
            phase_blocks=8,
            mem_runs=1,
            status_requests=100,
            work="60000,30000",
        )
    runs = max(30, args.runs or 40)
    return Config(
        runs=runs,
        quick=False,
        cycles=max(5, runs // 4),
        overhead_runs=5,
        phase_blocks=20,
        mem_runs=3,
        status_requests=300,
        work="60000,30000",
    )


class Bench:
    def __init__(self, envs: Envs, cfg: Config, work_dir: Path) -> None:
        self.envs = envs
        self.cfg = cfg
        self.dir = work_dir
        self.app = work_dir / "app.py"
        self.app.write_text(APP)
        self.home = work_dir / "home"
        self.home.mkdir(mode=0o700, exist_ok=True)
        self.results: dict[str, Any] = {}

    # -- helpers ----------------------------------------------------------------------

    def py(self, which: str) -> str:
        path = {"bare": self.envs.bare, "auto": self.envs.auto, "orig": self.envs.orig}[which]
        assert path is not None
        return str(venv_python(path))

    def hook_env(self, **extra: str) -> dict[str, str]:
        return clean_env(DETRIX_ENABLE="1", DETRIX_HOME=str(self.home), **extra)

    def spawn(
        self, which: str, impl: str, mode: str, arg: str = "", *, env: dict[str, str] | None = None
    ) -> Child:
        argv = [self.py(which), str(self.app), impl, mode] + ([arg] if arg else [])
        return Child(argv, env if env is not None else clean_env(), self.dir)

    def control_url(self, child: Child, ready: dict[str, Any]) -> str:
        if "control_port" in ready:
            return f"http://127.0.0.1:{ready['control_port']}"
        record = self.home / "clients" / f"{child.pid}.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return str(json.loads(record.read_text())["control_url"])
            time.sleep(0.01)
        raise RuntimeError(f"no discovery record for {child.pid}: {''.join(child.err)}")

    @contextlib.contextmanager
    def daemon(self, grace: float = 0.25) -> Iterator[Any]:
        from detrix_auto.devdaemon import DevDaemon, server

        # http.server writes a response's headers and body in two sends, with
        # Nagle's algorithm on: on a kept-alive connection the body then waits
        # ~40 ms for the client's delayed ACK. A real daemon's HTTP stack does
        # not, so neither does the double here (it would add 40 ms to every
        # wake of both clients and hide what the clients themselves cost).
        handler = getattr(server, "_Handler", None)
        if handler is not None:
            handler.disable_nagle_algorithm = True
        devdaemon = DevDaemon(reattach_grace=grace, attach_timeout=30).start()
        try:
            yield devdaemon
        finally:
            devdaemon.stop()

    def wait_status(
        self, url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, body, _ = request(url, "GET", "/detrix/status")
            if code == 200 and isinstance(body, dict) and predicate(body):
                return
            time.sleep(0.01)
        raise RuntimeError(f"status at {url} never matched")

    # -- start-up -----------------------------------------------------------------------

    def startup(self) -> None:
        home = str(self.home)
        warm_probe = (
            "import time, detrix_auto\n"
            "while not detrix_auto.status()['warm']:\n    time.sleep(0.0005)\n"
        )
        variants: list[tuple[str, list[str], dict[str, str]]] = [
            ("bare interpreter", [self.py("bare"), "-c", "pass"], clean_env()),
            ("detrix-auto installed, disabled", [self.py("auto"), "-c", "pass"], clean_env()),
            ("detrix-auto enabled, sleeping", [self.py("auto"), "-c", "pass"], self.hook_env()),
            (
                "detrix-auto enabled, warm (start-up)",
                [self.py("auto"), "-c", "pass"],
                self.hook_env(DETRIX_START_STATE="warm"),
            ),
            (
                "detrix-auto enabled, warm (until warm)",
                [self.py("auto"), "-c", warm_probe],
                self.hook_env(DETRIX_START_STATE="warm"),
            ),
            (
                "detrix-auto init() (API)",
                [
                    self.py("auto"),
                    "-c",
                    "import detrix_auto; detrix_auto.init(daemon_url='http://127.0.0.1:9')",
                ],
                clean_env(DETRIX_HOME=home),
            ),
            ("floor: import debugpy", [self.py("bare"), "-c", "import debugpy"], clean_env()),
            (
                "floor: import debugpy + server",
                [self.py("bare"), "-c", "import debugpy, debugpy.server.api"],
                clean_env(),
            ),
        ]
        if self.envs.orig is not None:
            variants += [
                ("detrix-py env, bare interpreter", [self.py("orig"), "-c", "pass"], clean_env()),
                (
                    "detrix-py imported + init()",
                    [
                        self.py("orig"),
                        "-c",
                        "import detrix; detrix.init(name='bench', daemon_url='http://127.0.0.1:9')",
                    ],
                    clean_env(),
                ),
            ]
        if self.cfg.startup_core:
            variants = [v for v in variants if v[0] in CORE_STARTUP]
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
        warmup = 3
        rounds = warmup + self.cfg.runs
        log(f"start-up: {len(variants)} variants x {self.cfg.runs} interleaved runs")
        for round_no in range(rounds):
            shift = round_no % len(variants)
            for name, argv, env in variants[shift:] + variants[:shift]:
                sample = timed_process(argv, env, self.dir)
                if round_no >= warmup:
                    samples[name].append(sample)
        self.results["startup"] = samples

    # -- memory -------------------------------------------------------------------------

    def memory(self) -> None:
        out: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            out.setdefault(key, []).append(value)

        log(f"memory: {self.cfg.mem_runs} run(s) per state")
        for _ in range(self.cfg.mem_runs):
            child = self.spawn("bare", "bare", "idle")
            child.next()
            time.sleep(0.2)
            add("bare interpreter", rss_kib(child.pid))
            child.stop()

            with self.daemon() as devdaemon:
                child = self.spawn_impl("auto", "idle", devdaemon.url)
                url = self.control_url(child, child.next())
                time.sleep(0.2)
                add("detrix-auto sleeping, control plane never used", rss_kib(child.pid))
                request(url, "GET", "/detrix/status")
                time.sleep(0.2)
                add("detrix-auto sleeping, after one status request", rss_kib(child.pid))
                code, body, _ = request(url, "POST", "/detrix/wake")
                assert code == 200, body
                time.sleep(0.3)
                add("detrix-auto awake", rss_kib(child.pid))
                request(url, "POST", "/detrix/sleep")
                time.sleep(0.3)
                add("detrix-auto after sleep", rss_kib(child.pid))
                child.stop()

            child = self.spawn("auto", "hook", "idle", env=self.hook_env(DETRIX_START_STATE="warm"))
            url = self.control_url(child, child.next())
            self.wait_status(url, lambda s: bool(s.get("warm")))
            time.sleep(0.2)
            add("detrix-auto warm", rss_kib(child.pid))
            child.stop()

            child = self.spawn("bare", "debugpy-inproc", "idle")
            child.next()
            time.sleep(0.2)
            add("floor: debugpy listening (in-process adapter)", rss_kib(child.pid))
            child.stop()

            if self.envs.orig is not None:
                with self.daemon() as devdaemon:
                    before = adapter_pids()
                    child = self.spawn_impl("orig", "idle", devdaemon.url)
                    url = self.control_url(child, child.next())
                    time.sleep(0.2)
                    add("detrix-py sleeping", rss_kib(child.pid))
                    code, body, _ = request(url, "POST", "/detrix/wake")
                    if code != 200:
                        log(f"warning: detrix-py wake answered {code}: {body}")
                    time.sleep(0.3)
                    add("detrix-py awake", rss_kib(child.pid))
                    adapters = adapter_pids() - before
                    add(
                        "detrix-py awake: its adapter process",
                        sum(rss_kib(pid) for pid in adapters) if adapters else float("nan"),
                    )
                    request(url, "POST", "/detrix/sleep")
                    time.sleep(0.3)
                    add("detrix-py after sleep", rss_kib(child.pid))
                    child.stop()
        self.results["memory"] = out

    # -- wake, sleep and status latency ------------------------------------------------

    def latency(self) -> None:
        res: dict[str, list[float]] = {}

        def add(key: str, value: float | list[float]) -> None:
            if isinstance(value, list):
                res.setdefault(key, []).extend(value)
            else:
                res.setdefault(key, []).append(value)

        log(f"wake/sleep/status: {self.cfg.cycles} interleaved cycle(s)")
        for _ in range(self.cfg.cycles):
            # detrix-auto: cold wake, sleep, re-wake, each timed unpolled like the floor.
            with self.daemon() as devdaemon:
                child = self.spawn_impl("auto", "idle", devdaemon.url)
                url = self.control_url(child, child.next())
                self.cycle("auto", url, res, add)
                add("auto exit after sleep", child.stop())
            # Then a cold wake of another process with GET /detrix/status polled back
            # to back: what a status costs while a wake holds the GIL, and what the
            # polling costs the wake (the poller shares the daemon double's process).
            with self.daemon() as devdaemon:
                child = self.spawn_impl("auto", "idle", devdaemon.url)
                url = self.control_url(child, child.next())
                self.polled_wake("auto", url, add)
                child.stop()

            with self.daemon() as devdaemon:
                child = self.spawn(
                    "auto",
                    "hook",
                    "idle",
                    env=self.hook_env(DETRIX_DAEMON_URL=devdaemon.url, DETRIX_START_STATE="warm"),
                )
                url = self.control_url(child, child.next())
                self.wait_status(url, lambda s: bool(s.get("warm")))
                code, body, elapsed = request(url, "POST", "/detrix/wake")
                assert code == 200, body
                add("auto wake after warm", elapsed)
                child.stop()

            if self.envs.orig is not None:
                with self.daemon() as devdaemon:
                    child = self.spawn_impl("orig", "idle", devdaemon.url)
                    url = self.control_url(child, child.next())
                    self.cycle("orig", url, res, add)
                    add("orig exit after sleep", child.stop())
                with self.daemon() as devdaemon:
                    child = self.spawn_impl("orig", "idle", devdaemon.url)
                    url = self.control_url(child, child.next())
                    self.polled_wake("orig", url, add)
                    child.stop()

            for mode in ("inproc", "adapter", "tuned"):
                with self.daemon() as devdaemon:
                    child = self.spawn("bare", f"debugpy-{mode}", "idle")
                    ready = child.next()
                    add(f"{mode} import", ready["t_import"] + ready["t_import_server"])
                    add(f"{mode} listen", ready["t_listen"])
                    first = self.register(devdaemon, child.pid, ready["port"])
                    if first is not None:
                        add(f"{mode} attach", first[0])
                        add(f"{mode} detach", self.unregister(devdaemon, first[1]))
                        time.sleep(0.3)
                        again = self.register(devdaemon, child.pid, ready["port"])
                        if again is not None:
                            add(f"{mode} re-attach", again[0])
                    child.stop()
        self.results["latency"] = res
        self.status_in_process()

    def cycle(
        self, impl: str, url: str, res: dict[str, list[float]], add: Callable[[str, Any], None]
    ) -> None:
        for i in range(self.cfg.status_requests + 1):
            code, _, elapsed = request(url, "GET", "/detrix/status")
            if code == 200:
                # The first request loads the HTTP handling and the client lazily.
                add(f"{impl} status {'first' if i == 0 else 'idle'}", elapsed)
        code, body, elapsed = request(url, "POST", "/detrix/wake")
        if code != 200:
            log(f"warning: {impl} wake answered {code}: {body}")
            return
        add(f"{impl} wake cold", elapsed)
        time.sleep(0.3)
        code, body, elapsed = request(url, "POST", "/detrix/sleep")
        add(f"{impl} sleep", elapsed)
        time.sleep(0.4)  # past the daemon double's re-attach grace
        code, body, elapsed = request(url, "POST", "/detrix/wake")
        if code == 200:
            add(f"{impl} re-wake", elapsed)
        time.sleep(0.3)
        code, body, elapsed = request(url, "POST", "/detrix/sleep")
        add(f"{impl} sleep", elapsed)

    @staticmethod
    def polled_wake(impl: str, url: str, add: Callable[[str, Any], None]) -> None:
        """A cold wake while GET /detrix/status is asked back to back (``Hammer``)."""
        request(url, "GET", "/detrix/status")  # the lazy loading is not what is measured
        with Hammer(url) as hammer:
            code, body, elapsed = request(url, "POST", "/detrix/wake")
        if code != 200:
            log(f"warning: {impl} polled wake answered {code}: {body}")
            return
        add(f"{impl} wake cold, status polled", elapsed)
        add(f"{impl} status during wake", hammer.latencies)
        add(f"{impl} status errors during wake", float(hammer.errors))
        request(url, "POST", "/detrix/sleep")

    @staticmethod
    def register(devdaemon: Any, pid: int, port: int) -> tuple[float, str] | None:
        body = {
            "host": "127.0.0.1",
            "port": port,
            "language": "python",
            "name": f"floor-{pid}",
            "workspaceRoot": os.getcwd(),
            "hostname": socket.gethostname(),
            "pid": pid,
        }
        code, reply, elapsed = request(devdaemon.url, "POST", "/api/v1/connections", body)
        if code != 201:
            log(f"warning: floor register answered {code}: {reply}")
            return None
        return elapsed, str(reply["connectionId"])

    @staticmethod
    def unregister(devdaemon: Any, cid: str) -> float:
        _, _, elapsed = request(devdaemon.url, "DELETE", f"/api/v1/connections/{cid}")
        return elapsed

    def status_in_process(self) -> None:
        res: dict[str, list[float]] = {}
        count = 2000 if self.cfg.quick else 20000
        impls = ["api"] + (["orig"] if self.envs.orig is not None else [])
        log("in-process status() latency")
        for _ in range(1 if self.cfg.quick else 3):
            for impl in impls:
                with self.daemon() as devdaemon:
                    which = "auto" if impl == "api" else "orig"
                    env = clean_env(BENCH_DAEMON_URL=devdaemon.url, DETRIX_HOME=str(self.home))
                    child = self.spawn(which, impl, "statusbench", str(count), env=env)
                    child.next()
                    out = child.next(timeout=120)
                    if "error" in out:
                        log(f"warning: {impl} in-process wake failed: {out['error']}")
                    res.setdefault(f"{impl} idle", []).extend(x / 1e9 for x in out["idle"])
                    res.setdefault(f"{impl} during", []).extend(x / 1e9 for x in out["during"])
                    res.setdefault(f"{impl} wake", []).append(out.get("wake", float("nan")))
                    child.stop()
        self.results["status_in_process"] = res

    # -- runtime overhead -----------------------------------------------------------------

    def overhead(self) -> None:
        """Runtime cost of each phase against a bare interpreter computing in turn with it.

        Live processes, the bare interpreter, the controls and the one measured,
        compute one block each in turn (best of 5 runs per block, best block of
        the phase), so all see the same machine: separate runs one after the
        other differed by up to 40% here with whatever else the machine did.

        detrix-auto imports debugpy at the wake, not at start-up; an import moves
        where CPython's small-object allocator puts the host's objects, and that
        alone changes the speed of an int-heavy loop by several per cent (either
        way, from process to process) without changing one instruction it runs.
        So detrix-auto's runs carry a second control that imports debugpy at the
        wake and does nothing else, and a lane of runs repeats them with the
        system allocator (``PYTHONMALLOC=malloc``, every process), where the
        after-sleep division shows what the sleep leaves without that layout.
        """
        res: dict[str, dict[str, list[float]]] = {}
        k = self.cfg.phase_blocks
        impls = ["auto"] + (["orig"] if self.envs.orig is not None else [])
        malloc_runs = self.cfg.malloc_runs
        log(
            f"runtime overhead: {self.cfg.overhead_runs} run(s), {k} blocks a phase in turn, "
            f"then {malloc_runs} with {SYSTEM_MALLOC}"
        )
        for _ in range(self.cfg.overhead_runs):
            for impl in impls:
                self.overhead_run(impl, res, {})
                self.busy_wake(impl)
            for label, impl, extra in SLICED_VARIANTS:
                if impl in impls:
                    self.sliced_status(label, impl, **extra)
        for _ in range(malloc_runs):
            self.overhead_run("auto", res, {"PYTHONMALLOC": "malloc"})
        self.results["overhead"] = res

    def overhead_run(
        self, impl: str, res: dict[str, dict[str, list[float]]], extra: dict[str, str]
    ) -> None:
        """One run of the phases for ``impl``, its controls and the bare interpreter."""
        from detrix_auto.devdaemon import MetricSpec

        k = self.cfg.phase_blocks
        prefix = f"{SYSTEM_MALLOC}: " if extra else ""
        with self.daemon() as devdaemon:
            bare = self.spawn("bare", "bare", "onrequest", self.cfg.work, env=clean_env(**extra))
            bare.next()
            # The control: debugpy and pydevd imported, never listening (which on
            # 3.10/3.11 would trace), never changed. Its ratio moves between the
            # phases only by the machine's noise.
            still = self.spawn(
                "bare", "debugpy-imported", "onrequest", self.cfg.work, env=clean_env(**extra)
            )
            still.next()
            procs = {"bare": bare, "still": still}
            if impl == "auto":  # detrix-py imports debugpy at init(), before any phase
                later = self.spawn(
                    "bare", "debugpy-later", "onrequest", self.cfg.work, env=clean_env(**extra)
                )
                later.next()
                procs["later"] = later
            child = self.spawn_impl(impl, "onrequest", devdaemon.url, **extra)
            url = self.control_url(child, child.next())
            request(url, "GET", "/detrix/status")  # its HTTP side is loaded, as in use
            procs["impl"] = child
            same_cpu(*procs.values())
            seen: list[dict[str, dict[str, float]]] = []

            def phase() -> dict[str, float]:
                best: dict[str, dict[str, float]] = {name: {} for name in procs}
                for _ in range(k):
                    for name, proc in procs.items():
                        block = proc.ask()
                        for w in ("loop", "calls"):
                            best[name][w] = min(best[name].get(w, math.inf), block[w])
                seen.append(
                    {
                        name: {w: best[name][w] / best["bare"][w] for w in ("loop", "calls")}
                        for name in procs
                    }
                )
                return seen[-1]["impl"]

            def stop_all() -> None:
                for proc in procs.values():
                    proc.stop()

            phases = {"never woken": phase()}
            code, body, _ = request(url, "POST", "/detrix/wake")
            if code != 200:
                log(f"warning: {impl} wake answered {code}: {body}")
                stop_all()
                return
            if "later" in procs:
                procs["later"].send("import")
            phases["awake, no logpoint"] = phase()
            devdaemon.add_metric(MetricSpec("cold", str(self.app), COLD_LINE, ("block",)))
            deadline = time.monotonic() + 30
            while len(devdaemon.hits("cold")) < 2 and time.monotonic() < deadline:
                child.ask()  # the cold line runs once per block
                time.sleep(0.05)
            if len(devdaemon.hits("cold")) < 2:
                log(f"warning: {impl}: the logpoint did not report within 30 s")
            phases["awake, logpoint on a cold line"] = phase()
            request(url, "POST", "/detrix/sleep")
            time.sleep(0.2)
            phases["after sleep"] = phase()
            stop_all()

        def drift(name: str) -> dict[str, float]:
            return {w: seen[-1][name][w] / seen[0][name][w] for w in ("loop", "calls")}

        divided = {
            # The same process before any wake and after a sleep: what is left of
            # the wake, without the luck of this process's memory layout that
            # every phase's ratio to the bare interpreter shares.
            AFTER_VS_NEVER: drift("impl"),
            # The same division for the control, which changed nothing: how far
            # this machine alone moves a process between the two phases.
            CONTROL_DRIFT: drift("still"),
        }
        if "later" in procs:
            # ... and for the process that imported debugpy at the wake, nothing else.
            divided[IMPORT_DRIFT] = drift("later")
        if extra:
            phases = {f"{prefix}{name}": value for name, value in divided.items()}
        else:
            # After the sleep against debugpy loaded and never attached, in the
            # same phase: what sleep leaves beyond what a loaded debugpy costs.
            divided[AFTER_VS_LOADED] = {
                w: seen[-1]["impl"][w] / seen[-1]["still"][w] for w in ("loop", "calls")
            }
            phases.update(divided)
        for name, ratios in phases.items():
            for w in ("loop", "calls"):
                res.setdefault(f"{impl}|{name}|{w}", {}).setdefault("ratio", []).append(ratios[w])

    # -- forks ---------------------------------------------------------------------------

    def forks(self) -> None:
        """Time the host's main thread spends in ``os.fork()``, sleeping against bare.

        On 3.12+ the idle control thread steps aside for every fork (so that
        CPython's "multi-threaded fork" warning is not raised) and comes back
        after: that is the cost measured here. Three live processes take turns,
        each doing a batch of forks from its main module; the figure is the
        median fork of a batch, median over batches; warnings are counted.
        """
        count = 20 if self.cfg.quick else 50
        rounds = 5 if self.cfg.quick else 15
        log(f"forks: {rounds} interleaved batches of {count} forks each")
        children = {"bare interpreter": self.spawn("bare", "bare", "forks", str(count))}
        children["detrix-auto sleeping, control plane never used"] = self.spawn(
            "auto", "hook", "forks", str(count), env=self.hook_env()
        )
        used = self.spawn("auto", "hook", "forks", str(count), env=self.hook_env())
        children["detrix-auto sleeping, after one status request"] = used
        for child in children.values():
            ready = child.next()
            if child is used:
                request(self.control_url(child, ready), "GET", "/detrix/status")
        time.sleep(0.2)  # the status connection is closed and the loop idle again
        res: dict[str, list[float]] = {}
        names = list(children)
        for round_no in range(rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                out = children[name].ask()
                res.setdefault(name, []).append(out["fork"])
                res.setdefault(f"{name}|warnings", []).append(out["warned"] / count)
        for child in children.values():
            child.stop()
        self.results["forks"] = res

    def spawn_impl(
        self, impl: str, mode: str, daemon_url: str, work: str | None = None, **extra: str
    ) -> Child:
        """detrix-auto (through its hook) or detrix-py (``init()``), told where the daemon is.

        ``work``: the mode's argument; the configured block by default."""
        if work is None:
            work = "" if mode == "idle" else self.cfg.work
        if impl == "auto":
            env = self.hook_env(DETRIX_DAEMON_URL=daemon_url, **extra)
            return self.spawn("auto", "hook", mode, work, env=env)
        env = clean_env(BENCH_DAEMON_URL=daemon_url, **extra)
        return self.spawn("orig", "orig", mode, work, env=env)

    def sliced_status(self, label: str, impl: str, **extra: str) -> None:
        """GET /detrix/status of a sleeping process whose main thread computes in
        ~2 ms slices with a system call between them (README, "Known limits")."""
        sliced = self.results.setdefault("status_sliced", {})
        with self.daemon() as devdaemon:
            child = self.spawn_impl(impl, "slices", devdaemon.url, SLICE_LOOP, **extra)
            url = self.control_url(child, child.next())
            time.sleep(0.3)  # computing by now
            try:
                _, _, elapsed = request(url, "GET", "/detrix/status", timeout=SLICED_LIMIT)
            except TimeoutError:
                sliced.setdefault(f"{label} unanswered", []).append(1.0)
            else:
                sliced.setdefault(f"{label} unanswered", []).append(0.0)
                sliced.setdefault(label, []).append(elapsed)
            child.stop()

    def busy_wake(self, impl: str) -> None:
        """Wake and sleep while the host's main thread computes without pause."""
        busy = self.results.setdefault("latency_busy", {})
        with self.daemon() as devdaemon:
            child = self.spawn_impl(impl, "work", devdaemon.url)
            url = self.control_url(child, child.next())
            child.next()  # computing
            code, body, elapsed = request(url, "POST", "/detrix/wake")
            if code != 200:
                log(f"warning: {impl} wake answered {code}: {body}")
            else:
                busy.setdefault(f"{impl} wake cold", []).append(elapsed)
                time.sleep(0.3)
                _, _, elapsed = request(url, "POST", "/detrix/sleep")
                busy.setdefault(f"{impl} sleep", []).append(elapsed)
            child.stop()


def timed_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, user+system CPU seconds) of one run to completion."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


# -- report -------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def headline(r: dict[str, Any]) -> list[str]:
    """detrix-auto against detrix-py on the figures issue 6 names, from this run."""
    rows: list[list[str]] = []

    def add(label: str, auto: float, orig: float, unit: str, digits: int = 1) -> None:
        if math.isnan(auto) or math.isnan(orig):
            return
        scale = 1000.0 if unit == "ms" else 1 / 1024
        rows.append(
            [
                label,
                f"{auto * scale:.{digits}f} {unit}",
                f"{orig * scale:.{digits}f} {unit}",
                ratio(orig, auto),
            ]
        )

    def med(group: dict[str, list[Any]], key: str, index: int | None = None) -> float:
        values = group.get(key, [])
        if index is not None:
            values = [v[index] for v in values]
        return median(values) if values else float("nan")

    s = r.get("startup", {})
    if s:
        bare = med(s, "bare interpreter", 0)
        orig_bare = med(s, "detrix-py env, bare interpreter", 0)
        orig = med(s, "detrix-py imported + init()", 0) - orig_bare
        add(
            "start-up added: zero-code, enabled and sleeping",
            med(s, "detrix-auto enabled, sleeping", 0) - bare,
            orig,
            "ms",
        )
        add(
            "start-up added: `init()` from code (detrix-py's only way)",
            med(s, "detrix-auto init() (API)", 0) - bare,
            orig,
            "ms",
        )
    lat = r.get("latency", {})
    if lat:
        add(
            "wake, cold (request to `awake`)",
            med(lat, "auto wake cold"),
            med(lat, "orig wake cold"),
            "ms",
        )
        add("wake again after sleep", med(lat, "auto re-wake"), med(lat, "orig re-wake"), "ms")
        for q in (50, 99):
            auto_s, orig_s = lat.get("auto status during wake"), lat.get("orig status during wake")
            if auto_s and orig_s:
                add(
                    f"GET /detrix/status during a wake, p{q}",
                    pct(auto_s, q),
                    pct(orig_s, q),
                    "ms",
                    2,
                )
        auto_s, orig_s = lat.get("auto status during wake"), lat.get("orig status during wake")
        if auto_s and orig_s:
            add(
                "GET /detrix/status during a wake, mean",
                statistics.fmean(auto_s),
                statistics.fmean(orig_s),
                "ms",
                2,
            )
            add("GET /detrix/status during a wake, worst", max(auto_s), max(orig_s), "ms", 2)
        busy = r.get("latency_busy", {})
        add(
            "wake, cold, host's main thread computing",
            med(busy, "auto wake cold"),
            med(busy, "orig wake cold"),
            "ms",
        )
    mem = r.get("memory", {})
    if mem:
        base = med(mem, "bare interpreter")
        add(
            "memory added, sleeping (after a status request)",
            med(mem, "detrix-auto sleeping, after one status request") - base,
            med(mem, "detrix-py sleeping") - base,
            "MiB",
        )
        adapter = med(mem, "detrix-py awake: its adapter process")
        add(
            "memory added, awake (detrix-py: + its adapter process)",
            med(mem, "detrix-auto awake") - base,
            med(mem, "detrix-py awake") - base + (0.0 if math.isnan(adapter) else adapter),
            "MiB",
        )
    if not rows:
        return []
    return [
        "**detrix-auto against detrix-py** (this run; the last column is how many times "
        "more detrix-py takes)",
        "",
        table(["figure", "detrix-auto", "detrix-py", "detrix-py / detrix-auto"], rows),
        "",
    ]


def report(bench: Bench | Measured, cfg: Config, elapsed: float) -> str:
    envs, r = bench.envs, bench.results
    out = [f"### Python {envs.full_version}", ""]
    pkgs = ", ".join(f"{k} {v}" for k, v in envs.packages.items())
    out.append(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{'--quick' if cfg.quick else 'full run'}, {elapsed / 60:.1f} min. {pkgs}."
    )
    out.append("")

    if bench.envs.orig is not None:
        out += headline(r)
    elif bench.envs.orig_missing:
        out += [f"detrix-py is not measured here: {bench.envs.orig_missing}.", ""]

    if "startup" in r:
        s = r["startup"]
        bare = [x[0] for x in s["bare interpreter"]]
        b_med = median(bare)
        noise = pct(bare, 75) - pct(bare, 25)
        b_cpu = median([x[1] for x in s["bare interpreter"]])
        rows = []
        for name, samples in s.items():
            wall = [x[0] for x in samples]
            cpu = [x[1] for x in samples]
            ref = b_med
            if name == "detrix-py imported + init()" and "detrix-py env, bare interpreter" in s:
                ref = median([x[0] for x in s["detrix-py env, bare interpreter"]])
            rows.append(
                [
                    name,
                    ms(median(wall)),
                    ms(min(wall)),
                    ms(max(wall)),
                    f"{(median(wall) - ref) * 1000:+.1f}",
                    ratio(median(wall), ref),
                    ms(median(cpu)),
                    f"{(median(cpu) - b_cpu) * 1000:+.1f}",
                ]
            )
        out.append(
            f"**Start-up** (`python -c pass` to exit; {len(bare)} interleaved runs each; "
            f"bare interquartile range {ms(noise, 2)} ms)"
        )
        out.append("")
        out.append(
            table(
                [
                    "variant",
                    "median ms",
                    "min",
                    "max",
                    "added ms",
                    "vs bare",
                    "CPU ms",
                    "added CPU ms",
                ],
                rows,
            )
        )
        out.append("")

    if "latency" in r:
        lat = r["latency"]

        def m(key: str) -> float:
            return median(lat.get(key, []))

        def mm(key: str) -> str:
            values = lat.get(key, [])
            if not values:
                return "n/a"
            return f"{ms(median(values))} ({ms(min(values))}-{ms(max(values))})"

        busy = r.get("latency_busy", {})

        def mmb(key: str) -> str:
            values = busy.get(key, [])
            if not values:
                return "n/a"
            return f"{ms(median(values))} ({ms(min(values))}-{ms(max(values))})"

        cold_floor = m("tuned import") + m("tuned listen") + m("tuned attach")
        warm_floor = m("tuned listen") + m("tuned attach")
        rows = [
            [
                "wake, cold (request to `awake`, incl. DAP attach)",
                mm("auto wake cold"),
                mm("orig wake cold"),
                ratio(m("orig wake cold"), m("auto wake cold")),
                f"{ms(cold_floor)} (import + listen + attach; "
                f"detrix-auto {ratio(m('auto wake cold'), cold_floor)} of it)",
            ],
            [
                "wake, cold, with GET /detrix/status asked back to back",
                mm("auto wake cold, status polled"),
                mm("orig wake cold, status polled"),
                ratio(m("orig wake cold, status polled"), m("auto wake cold, status polled")),
                "",
            ],
            [
                "wake after `warm`",
                mm("auto wake after warm"),
                "n/a (no warm state)",
                ratio(m("orig wake cold"), m("auto wake after warm")),
                f"{ms(warm_floor)} (listen + attach; "
                f"detrix-auto {ratio(m('auto wake after warm'), warm_floor)} of it)",
            ],
            [
                "wake again after sleep",
                mm("auto re-wake"),
                mm("orig re-wake"),
                ratio(m("orig re-wake"), m("auto re-wake")),
                f"{ms(m('tuned re-attach'))} (re-attach; "
                f"detrix-auto {ratio(m('auto re-wake'), m('tuned re-attach'))} of it)",
            ],
            [
                "sleep (request to `sleeping`, incl. unregister)",
                mm("auto sleep"),
                mm("orig sleep"),
                ratio(m("orig sleep"), m("auto sleep")),
                f"{ms(m('tuned detach'))} (unregister alone)",
            ],
            [
                "wake, cold, while the host's main thread is CPU-bound",
                mmb("auto wake cold"),
                mmb("orig wake cold"),
                ratio(
                    median(busy.get("orig wake cold", [])), median(busy.get("auto wake cold", []))
                ),
                "(GIL contention: see below)",
            ],
            [
                "sleep, host CPU-bound",
                mmb("auto sleep"),
                mmb("orig sleep"),
                ratio(median(busy.get("orig sleep", [])), median(busy.get("auto sleep", []))),
                "",
            ],
            [
                "process exit after wake + sleep",
                mm("auto exit after sleep"),
                mm("orig exit after sleep"),
                ratio(m("orig exit after sleep"), m("auto exit after sleep")),
                "",
            ],
        ]
        out.append(
            f"**Wake and sleep latency** (ms, median (min-max) over {cfg.cycles} "
            "interleaved cycles; each cold wake is a fresh process)"
        )
        out.append("")
        out.append(
            table(
                [
                    "",
                    "detrix-auto",
                    "detrix-py",
                    "detrix-py / detrix-auto",
                    "floor (debugpy alone, tuned)",
                ],
                rows,
            )
        )
        out.append("")

        def p(key: str, q: float) -> str:
            return ms(pct(lat.get(key, []), q), 2)

        rows = [
            [
                "GET /detrix/status, first request (lazy loading)",
                mm("auto status first"),
                "",
                mm("orig status first"),
                "",
            ],
            [
                "GET /detrix/status, idle",
                p("auto status idle", 50),
                p("auto status idle", 99),
                p("orig status idle", 50),
                p("orig status idle", 99),
            ],
            [
                "GET /detrix/status, during a wake",
                p("auto status during wake", 50),
                p("auto status during wake", 99),
                p("orig status during wake", 50),
                p("orig status during wake", 99),
            ],
        ]
        si = r.get("status_in_process", {})
        rows += [
            [
                "`status()` in-process, idle",
                ms(pct(si.get("api idle", []), 50), 4),
                ms(pct(si.get("api idle", []), 99), 4),
                ms(pct(si.get("orig idle", []), 50), 4),
                ms(pct(si.get("orig idle", []), 99), 4),
            ],
            [
                "`status()` in-process, during a wake",
                ms(pct(si.get("api during", []), 50), 4),
                ms(pct(si.get("api during", []), 99), 4),
                ms(pct(si.get("orig during", []), 50), 4),
                ms(pct(si.get("orig during", []), 99), 4),
            ],
        ]
        n_auto = len(lat.get("auto status during wake", []))
        n_orig = len(lat.get("orig status during wake", []))
        out.append(
            f"**Status latency** (ms; HTTP on a fresh connection each; "
            f"{n_auto} vs {n_orig} requests completed during wakes)"
        )
        out.append("")
        out.append(table(["", "detrix-auto p50", "p99", "detrix-py p50", "p99"], rows))
        out.append("")

        rows = []
        for mode, label in (
            ("inproc", "in-process (`in_process_debug_adapter=True`)"),
            ("adapter", "separate adapter process (debugpy's default)"),
            ("tuned", "in-process + the two fixes detrix-auto applies (below)"),
        ):
            rows.append(
                [
                    label,
                    mm(f"{mode} import"),
                    mm(f"{mode} listen"),
                    mm(f"{mode} attach"),
                    mm(f"{mode} re-attach"),
                    ms(m(f"{mode} listen") + m(f"{mode} attach")),
                ]
            )
        out.append(
            "**Floor: bare debugpy by adapter mode** (ms; attach = the daemon double's "
            "whole DAP attach, as in a registration)"
        )
        out.append("")
        out.append(
            table(
                [
                    "adapter mode",
                    "import debugpy + server",
                    "listen()",
                    "attach",
                    "re-attach",
                    "listen + attach",
                ],
                rows,
            )
        )
        out.append("")

    if "memory" in r:
        mem = r["memory"]
        base = median(mem.get("bare interpreter", []))
        rows = []
        for name, values in mem.items():
            value = median(values)
            added = value - base if "adapter process" not in name else value
            shown = "n/a" if math.isnan(added) else f"{added / 1024:+.1f}"
            rows.append([name, mib(value), shown])
        out.append(
            f"**Memory** (VmRSS MiB of the process in that state, median of "
            f"{cfg.mem_runs}; added vs the bare interpreter; the adapter process of "
            "detrix-py is a second process, shown on its own)"
        )
        out.append("")
        out.append(table(["state", "RSS MiB", "added MiB"], rows))
        out.append("")

    if "forks" in r:
        fk = r["forks"]
        base = median(fk.get("bare interpreter", []))
        rows = []
        for name, values in fk.items():
            if name.endswith("|warnings"):
                continue
            value = median(values)
            warned = fk.get(f"{name}|warnings", [])
            rows.append(
                [
                    name,
                    f"{value * 1e6:.0f}",
                    f"{min(values) * 1e6:.0f}-{max(values) * 1e6:.0f}",
                    f"{(value - base) * 1e6:+.0f}",
                    f"{median(warned):.2f}" if warned else "n/a",
                ]
            )
        out.append(
            f"**Forks** (µs the parent spends in `os.fork()` from its main module; median of "
            f"{len(fk.get('bare interpreter', []))} interleaved batches, each the median fork "
            "of its batch; DeprecationWarnings raised per fork)"
        )
        out.append("")
        out.append(table(["process", "fork µs", "batch range", "added µs", "warnings"], rows))
        out.append("")

    if "overhead" in r:
        ov = r["overhead"]
        phases = [
            "never woken",
            "awake, no logpoint",
            "awake, logpoint on a cold line",
            "after sleep",
        ]
        rows = []
        for name in [*phases, *DIVIDED_ROWS]:
            row = [name]
            for impl in ("auto", "orig"):
                for w in ("loop", "calls"):
                    values = ov.get(f"{impl}|{name}|{w}", {}).get("ratio", [])
                    cell = f"{median(values):.2f}x" if values else "n/a"
                    if name in DIVIDED_ROWS and len(values) > 1:
                        cell += f" ({min(values):.2f}-{max(values):.2f})"
                    row.append(cell)
            rows.append(row)
        out.append(
            "**Runtime overhead** (time of a CPU-bound block relative to a bare "
            "interpreter, without detrix-auto or detrix-py, computing the same block in "
            f"turn with it; best of {cfg.phase_blocks} blocks a phase, median of "
            f"{cfg.overhead_runs} run(s); 1.00x = no cost. `loop`: arithmetic loop, no "
            "calls; `calls`: a loop calling a small function. The rows after the phases "
            "divide two ratios of one run, in brackets the runs' range: after sleep by never "
            "woken, both of the same process (cancels that process's own layout); the same "
            "for a control process computing in turn with them (debugpy and pydevd "
            "imported at start, never listening), which changes nothing: how far the machine "
            "alone moves that division, the noise any after-sleep figure carries; after "
            "sleep by the control in the same phase (what a sleep leaves beyond an imported "
            "debugpy); the same division for a process without detrix-auto that imports "
            "debugpy at the wake and does nothing else (what the import alone leaves: it "
            "moves where CPython's small-object allocator puts the host's objects); and, "
            f"from {cfg.malloc_runs} more run(s) of detrix-auto's processes "
            "with the system allocator (`PYTHONMALLOC=malloc`, every process), the "
            "divisions without that layout: what the sleep itself leaves)"
        )
        out.append("")
        out.append(
            table(
                [
                    "phase",
                    "detrix-auto loop",
                    "detrix-auto calls",
                    "detrix-py loop",
                    "detrix-py calls",
                ],
                rows,
            )
        )
        out.append("")
    out += sliced_report(r)
    return "\n".join(out)


def sliced_report(r: dict[str, Any]) -> list[str]:
    """The status of a sleeping process beside a main thread computing in short slices."""
    sliced = r.get("status_sliced", {})
    rows = []
    for label, _, _ in SLICED_VARIANTS:
        tries = sliced.get(f"{label} unanswered", [])
        if not tries:
            continue
        answered = sliced.get(label, [])
        spread = (
            f"{ms(median(answered))} ({ms(min(answered))}-{ms(max(answered))})" if answered else "-"
        )
        rows.append([label, f"{len(answered)} of {len(tries)}", spread])
    if not rows:
        return []
    return [
        "**GET /detrix/status beside a main thread that computes in ~2 ms slices with a "
        "system call between them** (a fresh sleeping process each time, given "
        f"{SLICED_LIMIT:g} s without a byte: CPython may never give another thread the GIL "
        'there; README, "Known limits")',
        "",
        table(["", "answered", "ms of those answered, median (min-max)"], rows),
        "",
    ]


DEFAULT_INTRO = """# Performance

How much detrix-auto costs, measured against the original client (`detrix-py`)
and against the floor (what the interpreter and debugpy themselves cost).

Rerun: `python bench/performance.py [--pythons 3.10,3.11,3.12,3.13] [--runs N] [--quick]`
(with pyenv, expose the interpreters first, as `.ci/run` does); add `--chroot` to
take 3.14 and 3.15 from the Debian sid chroot `.ci/sid-chroot` builds (root; only
start-up and runtime overhead are measured there). The script builds
its virtual environments under `bench/.venvs/` (git-ignored), measures, prints the
tables and rewrites the generated sections below; everything outside the
`bench:` markers is hand-written and kept.
"""

#: Headings of the generated sections that are not one Python's.
SUMMARY_HEADINGS = {"startup-pythons": "Start-up on every Python"}

BEGIN = "<!-- bench:{key}:begin -->"
END = "<!-- bench:{key}:end -->"


def _whole(block: str, _match: re.Match[str]) -> str:
    return block


def write_doc(sections: dict[str, str]) -> None:
    text = DOC.read_text() if DOC.exists() else DEFAULT_INTRO + "\n## Results\n\n"
    for key, body in sections.items():
        begin, end = BEGIN.format(key=key), END.format(key=key)
        block = f"{begin}\n{body}\n{end}"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(text):
            # A function, not the text: the block's backslashes are not escapes.
            text = pattern.sub(functools.partial(_whole, block), text)
        elif not re.fullmatch(r"py[\d.]+", key):
            # A table across Pythons: its own section, before the per-Python ones.
            heading = SUMMARY_HEADINGS.get(key, key)
            marker = "## Results\n"
            if marker in text:
                text = text.replace(marker, f"## {heading}\n\n{block}\n\n{marker}", 1)
            else:
                text = text.rstrip() + f"\n\n## {heading}\n\n{block}\n"
        else:
            # New Python: insert in version order among the existing result sections.
            keys = re.findall(r"<!-- bench:(py[\d.]+):begin -->", text)
            later = [k for k in keys if _vkey(k) > _vkey(key)]
            if later:
                anchor = BEGIN.format(key=min(later, key=_vkey))
                text = text.replace(anchor, f"{block}\n\n{anchor}", 1)
            elif keys:
                last_end = END.format(key=max(keys, key=_vkey))
                text = text.replace(last_end, f"{last_end}\n\n{block}", 1)
            else:
                marker = "## Results\n"
                if marker in text:
                    text = text.replace(marker, f"{marker}\n{block}\n", 1)
                else:
                    text = text.rstrip() + f"\n\n## Results\n\n{block}\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def _vkey(key: str) -> tuple[int, ...]:
    return tuple(int(x) for x in key[2:].split("."))


def startup_table(measured: dict[str, tuple[str, dict[str, list[tuple[float, float]]]]]) -> str:
    """Disabled and sleeping start-up against the bare interpreter, one row per Python.

    Each ratio comes from the interleaved runs of one Python (medians of the
    same run); the interquartile range of the bare runs shows that run's noise.
    """
    rows = []
    for version in sorted(measured, key=lambda v: tuple(int(x) for x in v.split("."))):
        full, s = measured[version]
        bare = [x[0] for x in s["bare interpreter"]]
        disabled = [x[0] for x in s["detrix-auto installed, disabled"]]
        sleeping = [x[0] for x in s["detrix-auto enabled, sleeping"]]
        cpu_bare = median([x[1] for x in s["bare interpreter"]])
        cpu_disabled = median([x[1] for x in s["detrix-auto installed, disabled"]])
        rows.append(
            [
                full,
                ms(median(bare)),
                ms(pct(bare, 75) - pct(bare, 25), 2),
                ms(median(disabled)),
                ratio(median(disabled), median(bare)),
                ratio(cpu_disabled, cpu_bare),
                ms(median(sleeping)),
                ratio(median(sleeping), median(bare)),
                str(len(bare)),
            ]
        )
    return "\n".join(
        [
            f"`python -c pass` to exit, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs; the variants of one Python interleaved, medians. "
            "3.14 and 3.15 are Debian sid's builds, run in the chroot of `.ci/sid-chroot` "
            "(`--chroot`); the others pyenv's.",
            "",
            table(
                [
                    "Python",
                    "bare ms",
                    "bare IQR",
                    "disabled ms",
                    "disabled / bare",
                    "CPU: disabled / bare",
                    "sleeping ms",
                    "sleeping / bare",
                    "runs",
                ],
                rows,
            ),
        ]
    )


def run_in_chroot(
    version: str, wheel: Path, cfg: Config, only: set[str]
) -> tuple[Envs, dict[str, Any], float]:
    """Measure start-up and runtime overhead on a Python of the sid chroot: run this very
    script inside it (with the checkout's ``detrix_auto`` beside it, for the embedded
    daemon the overhead phases attach with)."""
    here_only = only & CHROOT_PARTS
    if not here_only:
        raise SystemExit(
            f"Python {version} comes from the chroot, where only {', '.join(sorted(CHROOT_PARTS))} "
            "are measured"
        )
    if here_only != only:
        log(f"Python {version} (chroot): measuring {', '.join(sorted(here_only))} only")
    chroot = run(["bash", str(ROOT / ".ci" / "sid-chroot"), "ensure"]).stdout.strip()
    here = Path(chroot + CHROOT_DIR)
    (here / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(__file__), here / "bench" / "performance.py")
    shutil.copy2(Path(__file__).with_name("_control.py"), here / "bench" / "_control.py")
    if (here / "detrix_auto").exists():
        shutil.rmtree(here / "detrix_auto")
    shutil.copytree(ROOT / "detrix_auto", here / "detrix_auto",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    wheels = here / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir()
    shutil.copy2(wheel, wheels / wheel.name)
    out = here / f"result-{version}.json"
    out.unlink(missing_ok=True)
    argv = (
        [
            "bash",
            str(ROOT / ".ci" / "sid-chroot"),
            "exec",
            chroot,
            f"python{version}",
            f"{CHROOT_DIR}/bench/performance.py",
            "--pythons",
            version,
            "--only",
            ",".join(sorted(here_only)),
            "--no-original",
            "--no-write",
            "--runs",
            str(cfg.runs),
            "--wheel",
            f"{CHROOT_DIR}/wheels/{wheel.name}",
            "--json-out",
            f"{CHROOT_DIR}/result-{version}.json",
        ]
        + (["--quick"] if cfg.quick else [])
        + (["--startup-core"] if cfg.startup_core else [])
    )
    log(f"Python {version}: into the chroot {chroot}")
    done = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"the start-up run in the chroot failed for Python {version}")
    data = json.loads(out.read_text())
    envs = Envs(version, data["full_version"], Path("bare"), Path("auto"), None)
    envs.packages = dict(data["packages"])
    envs.orig_missing = "the Debian chroot has no detrix-py"
    return envs, dict(data["results"]), float(data["elapsed"])


class Measured:
    """What :func:`report` needs of a run made elsewhere (in the chroot)."""

    def __init__(self, envs: Envs, results: dict[str, Any]) -> None:
        self.envs = envs
        self.results = results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pythons",
        default=f"{sys.version_info[0]}.{sys.version_info[1]}",
        help="comma-separated versions, e.g. 3.10,3.11,3.12,3.13",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=0,
        help="start-up runs per variant (at least 30; default 40, 30 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer cycles: a few minutes")
    parser.add_argument("--no-original", action="store_true", help=f"skip {ORIGINAL}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--only", default="", help="comma-separated subset: startup,memory,latency,forks,overhead"
    )
    parser.add_argument(
        "--chroot",
        action="store_true",
        help="take Pythons this machine lacks (3.14, 3.15) from .ci/sid-chroot's Debian "
        "chroot (root; start-up and overhead only)",
    )
    parser.add_argument(
        "--startup-core",
        action="store_true",
        help="start-up: only bare, disabled and sleeping (many more runs in the same time)",
    )
    # Used by --chroot for the run inside the chroot.
    parser.add_argument("--wheel", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("the benchmark reads /proc: run it on Linux")
    cfg = config(args)
    versions = [v.strip() for v in args.pythons.split(",") if v.strip()]
    for version in versions:
        if not re.fullmatch(r"3\.\d+", version):
            raise SystemExit(f"--pythons wants versions like 3.11, not {version!r}")
    phases = ("startup", "memory", "latency", "forks", "overhead")
    only = {x.strip() for x in args.only.split(",") if x.strip()} or set(phases)
    VENVS.mkdir(parents=True, exist_ok=True)
    wheel = Path(args.wheel) if args.wheel else build_wheel()
    sections = {}
    startups: dict[str, tuple[str, dict[str, list[tuple[float, float]]]]] = {}
    for version in versions:
        started = time.perf_counter()
        in_chroot = args.chroot and host_python(version) is None and version in CHROOT_PYTHONS
        if in_chroot:
            envs, results, elapsed = run_in_chroot(version, wheel, cfg, only)
            measured = Measured(envs, results)
            text = report(measured, cfg, elapsed)
            complete = True  # start-up and overhead are all the chroot measures
        else:
            envs = prepare(version, wheel, with_original=not args.no_original)
            log(f"Python {envs.full_version}: measuring")
            with tempfile.TemporaryDirectory(prefix="detrix-bench-") as tmp:
                bench = Bench(envs, cfg, Path(tmp))
                for name in phases:
                    if name in only:
                        getattr(bench, name)()
            elapsed = time.perf_counter() - started
            results = bench.results
            text = report(bench, cfg, elapsed)
            complete = only == set(phases)
        if args.json_out:
            Path(args.json_out).write_text(
                json.dumps(
                    {
                        "full_version": envs.full_version,
                        "packages": envs.packages,
                        "results": results,
                        "elapsed": elapsed,
                    }
                )
            )
        print(text)
        print()
        if complete:
            sections[f"py{version}"] = text
        if "startup" in results:
            startups[version] = (envs.full_version, results["startup"])
    if len(startups) > 1:
        summary = startup_table(startups)
        print(summary)
        print()
        sections["startup-pythons"] = summary
    if not args.no_write:
        write_doc(sections)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
