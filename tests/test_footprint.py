"""What detrix-auto does to the host's resources: nothing that is not its own.

Every test runs a real application as a subprocess, started with
``DETRIX_ENABLE=1`` (or 0 for the baseline), and compares what the application
itself sees: its descriptors, threads, signal handlers, stdio, environment,
working directory, ``sys.path``, hooks and warning filters, in every phase:
disabled, sleeping, after a status request, awake, after sleep. The table in
docs/host-footprint.md is what these tests check.

The fork tests run on 3.12 and 3.13 (pyenv's interpreters, through the
``sitecustomize`` shim that ``detrix-auto run`` uses): CPython warns there about
every fork of a multi-threaded process, and a sleeping process must not make
the host's forks warn.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT, clean_env, examples, http_json, wait_for_record, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

#: Prints a snapshot of the host's resources as it sees them, once at start
#: and then for every line on stdin. Imports nothing that detrix-auto might
#: otherwise be the one to load (no threading, json is loaded before the
#: first snapshot so that it does not count).
SNAPSHOT_APP = textwrap.dedent(
    """\
    import json, os, signal, sys, warnings

    def fds():
        out = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink("/proc/self/fd/" + name)
            except OSError:
                continue  # the directory's own descriptor, gone by now
            kind = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:")) else target
            out[name] = kind
        return out

    def snapshot():
        handlers = {}
        for signum in sorted(signal.valid_signals()):
            try:
                handlers[str(int(signum))] = repr(signal.getsignal(signum))
            except (ValueError, OSError):
                pass
        threading = sys.modules.get("threading")
        return {
            "signals": handlers,
            "sigmask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "stdio": [id(sys.stdin), id(sys.stdout), id(sys.stderr),
                      id(sys.__stdout__), id(sys.__stderr__)],
            "stdio_types": [type(sys.stdout).__name__, type(sys.stderr).__name__],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "sys_path": list(sys.path),
            "fds": fds(),
            "os_threads": len(os.listdir("/proc/self/task")),
            "py_threads": None if threading is None else sorted(
                t.name for t in threading.enumerate()),
            "warning_filters": [repr(f) for f in warnings.filters],
            "hooks": [repr(sys.excepthook), repr(sys.displayhook),
                      repr(sys.gettrace()), repr(sys.getprofile())],
            "modules": sorted(sys.modules),
        }

    print(json.dumps(snapshot()), flush=True)
    for _ in sys.stdin:
        print(json.dumps(snapshot()), flush=True)
    """
)

#: Modules a status request must not load into a sleeping process (megabytes
#: each, or threading, which before 3.13 belongs to whoever imports it first).
HEAVY = (
    "threading",
    "socket",
    "selectors",
    "json",
    "dataclasses",
    "inspect",
    "typing",
    "hashlib",
    "hmac",
    "_hashlib",
    "ctypes",
    "logging",
    "queue",
    "re",
    "enum",
    "detrix_auto.lifecycle",
    "detrix_auto.debugger",
)

#: What a wake leaves in the environment, though not ours to set (reported,
#: not hidden): debugger.py's setdefault, and debugpy's own import.
WAKE_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION", "PYDEVD_USE_FRAME_EVAL"}


class SnapshotApp:
    def __init__(self, tmp_path: Path, home: Path, enable: str, **env: str) -> None:
        script = tmp_path / "snapshot_app.py"
        script.write_text(SNAPSHOT_APP)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=clean_env(home, DETRIX_ENABLE=enable, **env),
            cwd=str(tmp_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the app ended: {self.proc.communicate()[1]}"
        return dict(json.loads(line))

    def snap(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err


def _listeners(snapshot: dict[str, Any]) -> set[str]:
    return {fd for fd, kind in snapshot["fds"].items() if kind == "socket"}


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The host's snapshot in each phase: a disabled run, then one enabled process
    sleeping, after a status request, awake and after sleep (real daemon double)."""
    from detrix_auto.devdaemon import DevDaemon

    tmp_path = tmp_path_factory.mktemp("phases")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    daemon = DevDaemon().start()
    try:
        baseline = SnapshotApp(tmp_path, home, "0", DETRIX_DAEMON_URL=daemon.url)
        disabled = baseline.first
        baseline.finish()

        app = SnapshotApp(tmp_path, home, "1", DETRIX_DAEMON_URL=daemon.url)
        sleeping = app.first
        url = wait_for_record(home, app.proc.pid, app.proc)["control_url"]
        code, _ = http_json(url, "GET", "/detrix/status")
        assert code == 200
        # The connection is closed; the loop then returns to idle: same descriptors.
        after_status = wait_until(
            lambda: (s := app.snap())["fds"] == sleeping["fds"] and s, timeout=10
        )
        code, body = http_json(url, "POST", "/detrix/wake")
        assert code == 200, body
        awake = app.snap()
        code, body = http_json(url, "POST", "/detrix/sleep")
        assert code == 200, body
        # The worker that ran the sleep ends right after handing its answer over.
        after_sleep = wait_until(
            lambda: "detrix-worker" not in ((s := app.snap())["py_threads"] or []) and s,
            timeout=10,
        )
        app.finish()
    finally:
        daemon.stop()
    return {
        "disabled": disabled,
        "sleeping": sleeping,
        "after status": after_status,
        "awake": awake,
        "after sleep": after_sleep,
    }


#: Sleeping, before and after the control plane answered a request.
SLEEPING = ("sleeping", "after status")


@pytest.mark.parametrize("key", ["signals", "sigmask", "cwd", "sys_path"])
def test_signals_cwd_and_sys_path_are_never_touched(phases, key):
    """Signal handlers, the signal mask, the working directory and ``sys.path``
    are what they are without detrix-auto, in every phase, awake included."""
    for name, snap in phases.items():
        assert snap[key] == phases["disabled"][key], name


def test_the_environment_gains_only_what_a_wake_documents(phases):
    """Sleeping: nothing but what the test set. A wake adds two ``PYDEVD_*``
    variables (debugger.py's setdefault and debugpy's own import); they stay."""
    disabled = phases["disabled"]["env"]
    for name, snap in phases.items():
        added = {k for k, v in snap["env"].items() if disabled.get(k) != v}
        allowed = WAKE_ENV if name in ("awake", "after sleep") else set()
        assert added <= {"DETRIX_ENABLE"} | allowed, (name, added)
        assert not set(disabled) - set(snap["env"]), name


def test_stdio_and_hooks_are_the_hosts(phases):
    """The very same stdio objects, ``excepthook``, ``displayhook``, no trace or
    profile function, except that pydevd may redirect output while awake."""
    disabled, sleeping = phases["disabled"], phases["sleeping"]
    for name in (*SLEEPING, "after sleep"):
        snap = phases[name]
        assert snap["stdio"] == sleeping["stdio"], name
        assert snap["stdio_types"] == disabled["stdio_types"], name
        assert snap["hooks"] == disabled["hooks"], name
    assert phases["awake"]["stdio"][0] == sleeping["stdio"][0]  # stdin
    assert phases["awake"]["hooks"][:2] == disabled["hooks"][:2]


def test_sleeping_holds_one_socket_and_one_os_thread(phases):
    """Before and after a status request: one listening socket and one OS thread
    more than when disabled; no Python-level thread (threading is not loaded)."""
    disabled = phases["disabled"]
    for name in SLEEPING:
        snap = phases[name]
        assert set(snap["fds"]) - set(disabled["fds"]) == _listeners(snap) - _listeners(disabled)
        assert len(_listeners(snap) - _listeners(disabled)) == 1, name
        assert snap["os_threads"] == disabled["os_threads"] + 1, name
        assert snap["py_threads"] is None, name


def test_a_status_request_loads_nothing_heavy(phases):
    """No ``json``, ``threading``, ``socket``, ``typing``, ``hmac``, lifecycle, ...:
    what a status request loads stays loaded, in a process nobody woke."""
    disabled = set(phases["disabled"]["modules"])
    for name in SLEEPING:
        loaded = set(phases[name]["modules"]) - disabled
        assert not loaded & set(HEAVY), (name, sorted(loaded & set(HEAVY)))


def test_warning_filters_are_never_changed(phases):
    """Sleeping, awake and after sleep: the host's warning filters are untouched (an
    http:// daemon needs no urllib3, whose import appends filters for its own
    warning classes: only an https:// daemon's first call loads it)."""
    disabled = phases["disabled"]["warning_filters"]
    for name in (*SLEEPING, "awake", "after sleep"):
        assert phases[name]["warning_filters"] == disabled, name


# -- descriptors the host closed and reused --------------------------------------

#: The one line detrix-auto prints when it finds its listener closed by the host.
LOST = "detrix-auto: the control plane's listening socket was closed by the application"

CLOSERANGE_APP = textwrap.dedent(
    """\
    import os, sys, time
    os.closerange(3, 1024)  # what daemonizers do
    log = open(sys.argv[1], "w")  # takes the lowest free number: the listener's
    log.write("the last line\\n")  # buffered: reaches the file at exit
    print(time.time(), flush=True)
    """
)


def test_closerange_then_a_log_file_loses_nothing_and_exit_is_not_slower(tmp_path, home):
    """The listener's number reused by the host's log file: at exit the file is
    neither shut down nor closed by us (its buffered line is written), and exit
    takes no longer than with detrix-auto disabled (it waited 2 s before)."""
    script = tmp_path / "closer.py"
    script.write_text(CLOSERANGE_APP)
    exits: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(3):
        for enable in ("0", "1"):
            log = tmp_path / f"app-{enable}.log"
            log.unlink(missing_ok=True)
            proc = subprocess.run(
                [sys.executable, str(script), str(log)],
                env=clean_env(home, DETRIX_ENABLE=enable),
                cwd=str(tmp_path),
                capture_output=True,
                text=True,
                timeout=60,
            )
            ended = time.time()
            assert proc.returncode == 0, proc.stderr
            # If our thread looked before the host's log file took the number, it
            # says once that the control plane is gone; nothing else is printed.
            lines = proc.stderr.splitlines()
            assert len(lines) <= 1 and all(LOST in line for line in lines), proc.stderr
            assert log.read_text() == "the last line\n"
            exits[enable].append(ended - float(proc.stdout.split()[-1]))
    # Generous: the defect cost 2 s; noise on a loaded machine is far below 1 s.
    assert statistics.median(exits["1"]) < statistics.median(exits["0"]) + 1.0, exits


REUSE_APP = textwrap.dedent(
    """\
    import fcntl, os, socket, sys, time

    def control_thread_in_accept():
        for tid in os.listdir("/proc/self/task"):
            if int(tid) == os.getpid():
                continue
            try:
                with open(f"/proc/self/task/{tid}/wchan") as f:
                    wchan = f.read()
                with open(f"/proc/self/task/{tid}/syscall") as f:
                    call = f.read().split()[0]
            except OSError:
                continue
            # accept4/accept: 288/43 on x86_64, 242/202 on aarch64
            if "accept" in wchan or call in ("288", "43", "242", "202"):
                return True
        return False

    # The premise: the control thread is blocked in accept() when the listener's
    # number is closed (before it gets there, closing it closes the listener).
    deadline = time.monotonic() + 10
    while not control_thread_in_accept() and time.monotonic() < deadline:
        time.sleep(0.005)

    def is_socket(fd):
        try:
            return os.readlink("/proc/self/fd/" + fd).startswith("socket:")
        except OSError:
            return False  # the directory's own descriptor, gone by now

    ours = [int(fd) for fd in os.listdir("/proc/self/fd") if is_socket(fd)]
    assert len(ours) == 1, ours  # the control plane's listener: the app has no socket
    os.closerange(3, 1024)
    pair = socket.socketpair()
    a, b = (socket.socket(fileno=fcntl.fcntl(s.detach(), fcntl.F_DUPFD_CLOEXEC, 100))
            for s in pair)  # both out of the way of the number we want
    os.dup2(a.fileno(), ours[0])  # the host's own socket, on the listener's old number
    a.close()
    mine = socket.socket(fileno=ours[0])
    print("ready", flush=True)
    sys.stdin.readline()  # meanwhile a client connects to the old control port
    b.sendall(b"ping")
    got = mine.recv(4)
    mine.sendall(b"pong")
    print(got.decode(), b.recv(4).decode(), flush=True)
    """
)


def test_a_client_after_closerange_never_touches_the_hosts_socket(tmp_path, home):
    """The thread blocked in accept() on the vanished listener is woken by a client:
    it sees the number names another socket now, leaves it alone, says so once."""
    script = tmp_path / "reuse.py"
    script.write_text(REUSE_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=clean_env(home, DETRIX_ENABLE="1"),
        cwd=str(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        record = wait_for_record(home, proc.pid, proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        with socket.create_connection(("127.0.0.1", record["control_port"]), timeout=10) as c:
            c.sendall(b"GET /detrix/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:  # closed, unanswered: there is no control plane now
                assert c.recv(100) == b""
            except ConnectionResetError:
                pass  # closed with the request unread
        out, err = proc.communicate("go\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.split() == ["ping", "pong"]
    lines = err.splitlines()
    assert len(lines) == 1 and LOST in lines[0], err


# -- forks on 3.12+ ---------------------------------------------------------------------


def _pyenv(version: str) -> str | None:
    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}"))
    if not found and f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    return found[-1] if found else None


FORK_VERSIONS = [
    pytest.param(v, marks=pytest.mark.skipif(_pyenv(v) is None, reason=f"no Python {v} here"))
    for v in ("3.12", "3.13")
]

#: Forks from its main module; before each fork it does what the test asks on
#: stdin. Reports the warnings recorded around each fork and what stderr got.
FORK_APP = textwrap.dedent(
    """\
    import os, sys, time, warnings
    warnings.simplefilter("always")  # every DeprecationWarning, wherever raised
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command == "sleep-after":
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            time.sleep(1.0)  # in C: a pending call waits for this
            os.waitpid(pid, 0)
            print("forked", flush=True)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        print(" | ".join(str(w.message) for w in caught) or "quiet", flush=True)
    """
)


class ForkApp:
    def __init__(self, tmp_path: Path, home: Path, python: str) -> None:
        script = tmp_path / "forker.py"
        script.write_text(FORK_APP)
        env = clean_env(
            home,
            DETRIX_ENABLE="1",
            PYTHONPATH=os.pathsep.join([str(ROOT / "sitecustomize_shim"), str(ROOT)]),
        )
        self.proc = subprocess.Popen(
            [python, "-W", "always::DeprecationWarning", str(script)],
            env=env,
            cwd=str(tmp_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.record = wait_for_record(home, self.proc.pid, self.proc)
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, command: str = "fork") -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.readline()

    def finish(self) -> str:
        _, err = self.proc.communicate("quit\n", timeout=30)
        assert self.proc.returncode == 0, err
        return err

    def idle(self) -> bool:
        """One OS thread of ours and no connection: what a fork sees when we are idle."""
        sockets = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                sockets += os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass  # closed meanwhile
        return sockets == 1 and len(os.listdir(f"/proc/{self.proc.pid}/task")) == 2


@pytest.mark.parametrize("version", FORK_VERSIONS)
def test_forks_of_a_sleeping_process_are_silent(tmp_path, home, version):
    """No "multi-threaded, use of fork() may lead to deadlocks" warning: not before
    any request, not after status requests, not on repeated forks; the control
    plane answers between and after them."""
    app = ForkApp(tmp_path, home, str(_pyenv(version)))
    try:
        assert app.ask() == "quiet"
        assert app.ask() == "quiet"
        for _ in range(2):
            code, body = http_json(app.record["control_url"], "GET", "/detrix/status")
            assert code == 200 and body["state"] == "sleeping", body
            wait_until(app.idle, timeout=10)
            assert app.ask() == "quiet"
        code, _ = http_json(app.record["control_url"], "GET", "/detrix/health")
        assert code == 200
    finally:
        err = app.finish()
    assert "DeprecationWarning" not in err and "detrix-auto" not in err, err


@pytest.mark.parametrize("version", FORK_VERSIONS)
def test_a_fork_with_a_request_in_flight_warns_truthfully(tmp_path, home, version):
    """A connection being served keeps our thread busy: the process is
    multi-threaded, and CPython's warning says so. Nothing is suppressed.

    "Being served" is made certain by one answered request on a kept-alive
    connection. A connection only seen in the process's descriptor table is
    not enough: one accepted a moment before the fork is set aside and served
    after it (a client come during a fork), the thread steps aside, and
    "quiet" is then the truth (seen once on a loaded CI).
    """
    app = ForkApp(tmp_path, home, str(_pyenv(version)))
    try:
        with socket.create_connection(("127.0.0.1", app.record["control_port"]), timeout=10) as s:
            s.sendall(b"GET /detrix/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert b"connection: close" not in answer.lower(), answer
            assert not app.idle()  # the serving loop waits for the next request
            assert "is multi-threaded" in app.ask()
        wait_until(app.idle, timeout=10)
        assert app.ask() == "quiet"
    finally:
        err = app.finish()
    assert "detrix-auto" not in err, err


@pytest.mark.parametrize("version", FORK_VERSIONS)
def test_the_control_plane_comes_back_when_the_main_thread_sat_in_c_after_a_fork(
    tmp_path, home, version
):
    """On 3.13+ the thread is restarted by a pending call of the main thread (the
    after-fork hooks run before CPython counts threads): a request made while the
    main thread sleeps in C waits in the backlog and is answered once it returns."""
    app = ForkApp(tmp_path, home, str(_pyenv(version)))
    try:
        assert app.proc.stdin is not None
        app.proc.stdin.write("sleep-after\n")
        app.proc.stdin.flush()
        time.sleep(0.3)  # the main thread is in time.sleep(1.0) now
        code, body = http_json(app.record["control_url"], "GET", "/detrix/status", timeout=20)
        assert code == 200 and body["state"] == "sleeping", body
        assert app.readline() == "forked"
    finally:
        err = app.finish()
    assert "detrix-auto" not in err and "DeprecationWarning" not in err, err


PAUSE_APP = textwrap.dedent(
    """\
    import os, sys
    from detrix_auto import _runtime
    server = _runtime._server
    paused = server.pause_for_fork()  # what the before-fork hook does
    tid = server._native_id
    gone = not os.path.exists(f"/proc/self/task/{tid}")
    print(paused, gone, flush=True)
    sys.stdin.readline()  # meanwhile a client connects and asks
    server.resume_after_fork(later=None)  # what the after-fork hook does (3.12)
    sys.stdin.readline()
    """
)


def test_a_client_that_comes_during_a_pause_is_answered_after_it(tmp_path, home):
    """While the thread is away for a fork, the listener stays open: a client's
    request waits in the backlog, unanswered, and is answered once it is back."""
    script = tmp_path / "pause.py"
    script.write_text(PAUSE_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=clean_env(home, DETRIX_ENABLE="1"),
        cwd=str(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        record = wait_for_record(home, proc.pid, proc)
        assert proc.stdout.readline().split() == ["True", "True"]  # paused, OS thread gone
        with socket.create_connection(("127.0.0.1", record["control_port"]), timeout=0.5) as c:
            c.sendall(b"GET /detrix/health HTTP/1.0\r\n\r\n")
            with pytest.raises(TimeoutError):
                c.recv(100)  # nobody serves while paused
            proc.stdin.write("\n")
            proc.stdin.flush()
            c.settimeout(10)
            assert c.recv(100).startswith(b"HTTP/1.1 200 ")
        _, err = proc.communicate("\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and err == "", err


# -- the status answered without building the client ---------------------------------


def test_a_status_without_the_client_says_what_a_fresh_client_says(home):
    """``status`` and ``info`` of a never-woken process come from the settings
    (building the client costs megabytes): the same documents, key for key and
    in the same order, as a freshly built client gives."""
    from detrix_auto import _runtime
    from detrix_auto.config import resolve
    from detrix_auto.control.server import ControlServer
    from detrix_auto.lifecycle import Client

    for overrides in (
        {},
        {"daemon_url": "http://127.0.0.1:9", "name": "view", "control_host": "127.0.0.1"},
    ):
        settings = resolve({"detrix_home": str(home), **overrides}, environ={})
        server = ControlServer(settings.control_host, 0, lambda: None)
        try:
            client = Client(settings)
            client.control = server
            view = _runtime._ClientView(settings, server)
            assert list(view.fresh_status().items()) == list(client.status().items())
            assert list(view.fresh_info().items()) == list(client.info().items())
        finally:
            server.close()


# -- JSON without json ------------------------------------------------------------------


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text() | st.integers() | st.none()
    return (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=5)
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    _containers,
    max_leaves=30,
)


@settings(max_examples=examples(300), deadline=None)
@given(_JSON)
def test_responses_are_written_exactly_as_json_writes_them(value):
    """``http.dumps`` (no ``json`` loaded for a status answer) is ``json.dumps`` with
    compact separators, character for character, on every kind of value."""
    from detrix_auto.control.http import dumps

    assert dumps(value) == json.dumps(value, separators=(",", ":"))


def test_a_request_compares_and_prints_like_the_dataclass_it_was():
    from detrix_auto.control.http import Request, parse_request

    request, used = parse_request(b"GET /detrix/status?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert used > 0 and request is not None
    same = Request("GET", "/detrix/status?x=1", "/detrix/status", "HTTP/1.1", {"host": "h"})
    assert request == same and request != Request("GET", "/", "/", "HTTP/1.1")
    assert repr(request) == (
        "Request(method='GET', target='/detrix/status?x=1', path='/detrix/status', "
        "version='HTTP/1.1', headers={'host': 'h'}, body=b'')"
    )
    assert Request("GET", "/", "/", "HTTP/1.1").headers == {}
