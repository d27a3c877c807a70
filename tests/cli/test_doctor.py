"""``doctor``: one test per finding, each against the real condition it reports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import APP, clean_env, cli_argv, wait_until
from doubles import Fault, FaultDaemon

ROOT = Path(__file__).resolve().parents[2]


def _installed_parent() -> str:
    """Where the installed detrix_auto lives (the tests may import the source tree)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import detrix_auto, os; print(os.path.dirname(os.path.dirname(detrix_auto.__file__)))",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def doctor(home, *args, env=None, python=None, cwd="/", pre=()):
    full = clean_env(home)
    full.update(env or {})
    argv = cli_argv("doctor", *args, "--json")
    if python:
        argv[0] = python
    argv[1:1] = list(pre)
    result = subprocess.run(
        argv, env=full, capture_output=True, text=True, timeout=60, cwd=str(cwd), check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert result.returncode == (0 if report["ok"] else 1)
    by_check: dict[str, list[dict]] = {}
    for finding in report["findings"]:
        assert set(finding) == {"check", "level", "text", "fix"}
        assert finding["level"] in ("ok", "warn", "error")
        if finding["level"] != "ok":
            assert finding["fix"], finding  # every problem comes with a fix
        by_check.setdefault(finding["check"], []).append(finding)
    return report, by_check


def level(by_check, check):
    return [f["level"] for f in by_check[check]]


def test_report_shape_and_a_healthy_setup(home, tmp_path):
    report, found = doctor(home, env={"DETRIX_ENABLE": "1", "HOME": str(tmp_path)})
    assert set(report) == {
        "python",
        "python_version",
        "pid",
        "ok",
        "errors",
        "warnings",
        "findings",
    }
    assert report["ok"] is True and report["errors"] == 0
    assert level(found, "hook") == ["ok"]
    assert "detrix_auto.pth is installed" in found["hook"][0]["text"]
    # 3.15-3.17 run the .pth import line (said as ok); before 3.15 nothing to say
    pep829 = [f["level"] for f in found.get("pep829", [])]
    assert pep829 == (["ok"] if sys.version_info >= (3, 15) else [])
    assert level(found, "debugpy") == ["ok"] and level(found, "urllib3") == ["ok"]
    assert level(found, "enable") == ["ok"]
    assert level(found, "activation") == ["ok"]  # the hook ran in doctor's own process
    assert level(found, "config") == ["ok"]
    assert level(found, "token-file") == ["ok"]
    assert level(found, "discovery") == ["ok"]
    assert level(found, "daemon") == ["warn"]  # none running under this HOME
    assert "daemon.pid does not exist" in found["daemon"][0]["text"]
    human = subprocess.run(
        cli_argv("doctor"),
        env=clean_env(home, HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert human.returncode == 0
    assert "warn   DETRIX_ENABLE is not set here" in human.stdout
    assert "fix: start the program with DETRIX_ENABLE=1" in human.stdout
    assert human.stdout.rstrip().endswith("0 error(s), 2 warning(s)")


def test_enable_values(home):
    _, found = doctor(home)
    assert level(found, "enable") == ["warn"]
    # the advice names the interpreter doctor runs in (it has the hook), not any `python`
    assert f"DETRIX_ENABLE=1 {sys.executable} app.py" in found["enable"][0]["fix"]
    report, found = doctor(home, env={"DETRIX_ENABLE": "maybe"})
    assert level(found, "enable") == ["error"] and not report["ok"]
    assert "'maybe' is not understood" in found["enable"][0]["text"]
    # an error, and then "settings are valid", would contradict it: never both
    assert not any(f["level"] == "ok" for f in found.get("config", []))


def test_a_healthy_process_gets_no_warning_about_this_shell(home, spawn, tmp_path):
    app = spawn(APP)
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    env = {"HOME": str(tmp_path), "PATH": os.pathsep.join([str(bare_path), "/usr/bin", "/bin"])}
    report, found = doctor(home, str(app.pid), env=env)
    assert report["ok"]
    # DETRIX_ENABLE of this shell does not matter to a process that runs already
    assert level(found, "enable") == ["ok"]
    assert f"process {app.pid} runs with its own environment" in found["enable"][0]["text"]
    assert level(found, "process") == ["ok"] and level(found, "process-control") == ["ok"]
    # no daemon: a true warning, whose advice names only what exists here
    assert level(found, "daemon") == ["warn"]
    daemon = found["daemon"][0]
    assert "127.0.0.1:8090" in daemon["text"] and "daemon.pid does not exist" in daemon["text"]
    assert "not installed here (no `detrix` on PATH)" in daemon["fix"]
    assert "detrix-auto observe" in daemon["fix"]
    warnings = [f for fs in found.values() for f in fs if f["level"] != "ok"]
    assert [f["check"] for f in warnings] == ["daemon"], warnings

    detrix = bare_path / "detrix"
    detrix.write_text("#!/bin/sh\nexit 0\n")
    detrix.chmod(0o755)
    _, found = doctor(home, str(app.pid), env=env)
    assert found["daemon"][0]["fix"].startswith("start the Detrix daemon with `detrix serve`")


def test_invalid_and_unknown_settings(home, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    report, found = doctor(
        home,
        env={"DETRIX_CONTROL_PORT": "99999", "DETRIX_START_STATE": "asleep", "DETRIX_ENABLED": "1"},
    )
    assert not report["ok"]
    assert level(found, "config:DETRIX_CONTROL_PORT") == ["error"]
    assert "Invalid DETRIX_CONTROL_PORT='99999'" in found["config:DETRIX_CONTROL_PORT"][0]["text"]
    assert level(found, "config:DETRIX_START_STATE") == ["error"]
    assert level(found, "config:DETRIX_ENABLED") == ["warn"]
    assert "did you mean DETRIX_ENABLE?" in found["config:DETRIX_ENABLED"][0]["fix"]
    # each value valid alone; together the CA bundle wins (as in the original), said as a warning
    report, found = doctor(
        home, env={"DETRIX_VERIFY_SSL": "false", "DETRIX_CA_BUNDLE": str(bundle)}
    )
    assert level(found, "config") == ["warn", "ok"]
    assert "the CA bundle wins" in found["config"][0]["text"]


def test_hook_and_dependencies_missing_in_another_interpreter(home, tmp_path, bare_python):
    # the package alone (no debugpy, no urllib3) on the path of a bare interpreter
    lib = tmp_path / "lib"
    shutil.copytree(os.path.join(_installed_parent(), "detrix_auto"), lib / "detrix_auto")
    report, found = doctor(home, python=bare_python, env={"PYTHONPATH": str(lib)})
    assert not report["ok"]
    assert level(found, "hook") == ["error"]
    assert "detrix_auto.pth is not in any site-packages" in found["hook"][0]["text"]
    assert "detrix-auto run" in found["hook"][0]["fix"]
    assert level(found, "debugpy") == ["error"] and level(found, "urllib3") == ["warn"]
    assert "https://" in found["urllib3"][0]["text"]
    assert "pip install debugpy" in found["debugpy"][0]["fix"]


def test_dash_s_means_no_hook_runs(home):
    report, found = doctor(home, pre=["-S"], env={"PYTHONPATH": _installed_parent()})
    assert level(found, "site") == ["error"] and not report["ok"]


def test_sitecustomize_shim_and_a_shadowing_one(home, tmp_path):
    from detrix_auto.cli._run import shim_dir

    installed_shim = subprocess.run(
        [sys.executable, "-c", "from detrix_auto.cli._run import shim_dir; print(shim_dir())"],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
        timeout=30,
    ).stdout.strip()
    assert shim_dir()  # the source tree has one too
    _, found = doctor(home, env={"PYTHONPATH": installed_shim})
    assert level(found, "sitecustomize") == ["ok"]
    assert "first on PYTHONPATH" in found["sitecustomize"][0]["text"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("")
    _, found = doctor(home, env={"PYTHONPATH": os.pathsep.join([str(other), installed_shim])})
    assert level(found, "sitecustomize") == ["warn"]
    assert str(other / "sitecustomize.py") in found["sitecustomize"][0]["text"]

    _, found = doctor(home, env={"PYTHONPATH": str(other)})
    assert level(found, "sitecustomize") == ["ok"]  # not ours, and nothing it shadows


def test_a_source_checkout_that_shadows_the_installed_package(home):
    installed = Path(_installed_parent()) / "detrix_auto"
    if installed.resolve() == (ROOT / "detrix_auto").resolve():
        pytest.skip("the package is installed from this checkout (editable)")
    _, found = doctor(home, cwd=ROOT)  # `python -m` puts the cwd first on sys.path
    assert level(found, "package") == ["warn"]


def test_daemon_found_through_env_through_daemon_pid_or_answering_wrongly(home, tmp_path, daemon):
    _, found = doctor(home, env={"DETRIX_DAEMON_URL": daemon.url})
    assert level(found, "daemon") == ["ok"]
    assert "DETRIX_DAEMON_URL" in found["daemon"][0]["text"]

    fake_home = tmp_path / "user"
    (fake_home / "detrix").mkdir(parents=True)
    pid_file = fake_home / "detrix" / "daemon.pid"
    pid_file.write_text(
        json.dumps(
            {"pid": os.getpid(), "host": "127.0.0.1", "ports": {"http": daemon.port, "grpc": 1}}
        )
    )
    _, found = doctor(home, env={"HOME": str(fake_home)})
    assert level(found, "daemon") == ["ok"]
    assert f"127.0.0.1:{daemon.port}" in found["daemon"][0]["text"]
    assert "daemon.pid" in found["daemon"][0]["text"]

    with FaultDaemon() as other:
        other.faults["health"] = Fault(status=200, body=b'{"service": "nginx"}')
        report, found = doctor(home, env={"DETRIX_DAEMON_URL": other.url})
    assert level(found, "daemon") == ["error"] and not report["ok"]
    assert "not as a Detrix daemon" in found["daemon"][0]["text"]

    _, found = doctor(home, env={"DETRIX_DAEMON_URL": "http://127.0.0.1:9"})
    assert level(found, "daemon") == ["warn"]
    assert "connection refused" in found["daemon"][0]["text"]


def test_token_file_permissions_and_location(home, tmp_path):
    token = home / "mcp-token"
    token.write_text("abc\n")
    token.chmod(0o644)
    report, found = doctor(home)
    assert level(found, "token-file") == ["error"] and not report["ok"]
    assert f"chmod 600 {token}" == found["token-file"][0]["fix"]
    token.chmod(0o600)
    _, found = doctor(home, env={"DETRIX_TOKEN": "xyz"})
    assert level(found, "token-file") == ["ok"] and level(found, "token") == ["ok"]
    assert "private" in found["token-file"][0]["text"]
    token.unlink()

    fake_home = tmp_path / "user"
    (fake_home / "detrix").mkdir(parents=True)
    (fake_home / "detrix" / "mcp-token").write_text("abc")
    _, found = doctor(home, env={"HOME": str(fake_home)})
    assert level(found, "token-file") == ["ok", "warn"]
    assert "the daemon's token is at" in found["token-file"][1]["text"]


def test_doctor_names_the_token_file_in_use(home):
    # auth-token (detrix-py 1.2.0's name) is read before mcp-token (the daemon's)
    mcp = home / "mcp-token"
    mcp.write_text("daemon-token\n")
    mcp.chmod(0o600)
    _, found = doctor(home)
    assert found["token-file"][0]["text"].startswith(f"the token file used is {mcp} ")
    auth = home / "auth-token"
    auth.write_text("client-token\n")
    auth.chmod(0o600)
    _, found = doctor(home)
    text = found["token-file"][0]["text"]
    assert text.startswith(f"the token file used is {auth} ")
    assert f"{mcp} is not read while it exists" in text
    # something that is not a regular file in its place: an error, at once
    auth.unlink()
    os.mkfifo(auth, 0o600)
    report, found = doctor(home)
    assert level(found, "token-file") == ["error"] and not report["ok"]
    assert "is a FIFO (named pipe), not a regular file" in found["token-file"][0]["text"]
    assert str(auth) in found["token-file"][0]["fix"]


def test_an_instrumented_process(home, spawn, procs):
    app = spawn(APP, env={"DETRIX_DAEMON_URL": "http://127.0.0.1:9"})
    report, found = doctor(home, str(app.pid))
    assert report["pid"] == app.pid
    assert level(found, "process") == ["ok"] and level(found, "process-control") == ["ok"]
    assert "state sleeping" in found["process-control"][0]["text"]
    # a failed wake is remembered and reported
    assert app.request("POST", "/detrix/wake")[0] == 503
    report, found = doctor(home, str(app.pid))
    assert level(found, "process-error") == ["error"] and not report["ok"]
    assert "127.0.0.1:9" in found["process-error"][0]["text"]

    locked = spawn(APP, env={"DETRIX_TOKEN": "t0k", "DETRIX_REQUIRE_TOKEN": "1"}, name="locked.py")
    _, found = doctor(home, str(locked.pid))
    assert level(found, "process-control") == ["warn"]
    assert "DETRIX_TOKEN" in found["process-control"][0]["fix"]

    # a record whose control plane does not answer
    mute = procs([sys.executable, "-c", "import time; time.sleep(60)"])
    clients = home / "clients"
    (clients / f"{mute.pid}.json").write_text(
        json.dumps(
            {"pid": mute.pid, "name": f"mute-{mute.pid}", "control_url": "http://127.0.0.1:9"}
        )
    )
    report, found = doctor(home, str(mute.pid))
    assert level(found, "process-control") == ["error"] and not report["ok"]


def _uninstrumented(home, procs, argv, env=None):
    proc = procs(argv, env=env)
    wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().count(b"\0") >= len(argv))
    report, found = doctor(home, str(proc.pid))
    assert not report["ok"]
    assert level(found, "process") == ["error"]
    return found


def test_processes_that_did_not_activate(home, tmp_path, procs, bare_python):
    script = tmp_path / "app.py"
    script.write_text(APP)
    py = [sys.executable]

    found = _uninstrumented(home, procs, [*py, str(script)])
    assert level(found, "process-enable") == ["error"]
    assert "without DETRIX_ENABLE" in found["process-enable"][0]["text"]

    found = _uninstrumented(home, procs, [*py, "-S", str(script)], {"DETRIX_ENABLE": "1"})
    assert level(found, "process-site") == ["error"]

    found = _uninstrumented(
        home, procs, [*py, str(script)], {"DETRIX_ENABLE": "1", "DETRIX_CONTROL_PORT": "x"}
    )
    assert level(found, "process-config") == ["error"]
    assert "DETRIX_CONTROL_PORT='x'" in found["process-config"][0]["text"]

    found = _uninstrumented(
        home, procs, [*py, str(script)], {"DETRIX_ENABLE": "1", "DETRIX_ONLY_PID": "1"}
    )
    assert level(found, "process-children") == ["error"]

    found = _uninstrumented(home, procs, [bare_python, str(script)], {"DETRIX_ENABLE": "1"})
    assert level(found, "process-hook") == ["error"]
    assert "no detrix_auto.pth" in found["process-hook"][0]["text"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        found = _uninstrumented(
            home, procs, [*py, str(script)], {"DETRIX_ENABLE": "1", "DETRIX_CONTROL_PORT": port}
        )
    assert level(found, "process-start") == ["warn"]
    assert "detrix-auto:" in found["process-start"][0]["text"]

    found = _uninstrumented(home, procs, ["sleep", "30"])
    assert "does not look like a Python interpreter" in found["process"][0]["text"]


def test_no_such_pid(home):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    report, found = doctor(home, str(gone.pid))
    assert level(found, "process") == ["error"] and not report["ok"]
    assert f"no process with pid {gone.pid}" in found["process"][0]["text"]


def _listening(pid):
    from detrix_auto.cli._sockets import listening_sockets

    return listening_sockets(pid)


def _found_by_socket(home, proc):
    """doctor PID on a process without a record: found through its socket, and said so."""
    wait_until(lambda: _listening(proc.pid), timeout=20)
    report, found = doctor(home, str(proc.pid))
    assert report["ok"], report  # warnings only: it works, it is just not listed
    assert level(found, "process") == ["warn"]
    text = found["process"][0]["text"]
    assert f"pid {proc.pid} is instrumented" in text
    assert "found through its listening socket" in text and f"/proc/{proc.pid}/fd" in text
    url = text.split("control plane at ")[1].split(",")[0]
    assert f"detrix-auto status {url}" in found["process"][0]["fix"]
    assert level(found, "process-control") == ["ok"]
    assert "state sleeping" in found["process-control"][0]["text"]
    assert level(found, "process-discovery") == ["warn"]
    assert "process-start" not in found  # nothing blames a start-up failure
    return url, found["process-discovery"][0]


def test_processes_without_a_record_are_found_by_their_socket(home, tmp_path, procs, cli):
    script = tmp_path / "app.py"
    script.write_text(APP)
    argv = [sys.executable, str(script)]

    off = procs(argv, env={"DETRIX_ENABLE": "1", "DETRIX_DISCOVERY": "0"})
    url, why = _found_by_socket(home, off)
    assert "DETRIX_DISCOVERY off" in why["text"]
    status = cli("status", url, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == off.pid

    elsewhere = tmp_path / "elsewhere"
    moved = procs(argv, env={"DETRIX_ENABLE": "1", "DETRIX_HOME": str(elsewhere)})
    _, why = _found_by_socket(home, moved)
    assert f"DETRIX_HOME={elsewhere}" in why["text"]
    assert f"DETRIX_HOME={elsewhere} detrix-auto" in why["fix"]

    # the socket the control plane shares with nobody is the one asked: a listener the
    # process inherited from its parent (this test) is left alone
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        inherited.set_inheritable(True)
        proc = subprocess.Popen(
            argv,
            env=clean_env(home, DETRIX_ENABLE="1", DETRIX_DISCOVERY="0"),
            pass_fds=[inherited.fileno()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _found_by_socket(home, proc)
            inherited.setblocking(False)
            with pytest.raises(BlockingIOError):
                inherited.accept()  # doctor never connected to it
        finally:
            proc.kill()
            proc.wait()


READ_ONLY_APP = 'mount -t tmpfs -o ro,size=64k tmpfs "$DETRIX_HOME" || exit 97\nexec "$@"\n'


def _read_only_home_supported() -> bool:
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def test_read_only_home_one_stderr_line_and_doctor_finds_it(home, tmp_path, spawn):
    """Issue 13: no record can be written, yet the process is instrumented and reachable."""
    if shutil.which("unshare") is None or not _read_only_home_supported():
        pytest.skip("needs `unshare -m` and mount (root) to give the app a read-only home")
    script = tmp_path / "app.py"
    script.write_text(APP)
    # the app sees DETRIX_HOME (and TMPDIR, the last fallback) as an empty read-only
    # file system; this test and doctor see the ordinary directory
    env = clean_env(home, DETRIX_ENABLE="1", TMPDIR=str(home))
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", READ_ONLY_APP, "sh", sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url, why = _found_by_socket(home, proc)
        assert "could not write a record" in why["text"]
        assert "no discovery record could be written" in why["text"]
        assert not list(home.rglob("*.json"))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, at start-up, and nothing else
    assert lines[0].startswith("detrix-auto: no discovery record could be written under ")
    assert url in lines[0] and f"detrix-auto doctor {proc.pid}" in lines[0]

    # only then: a process that could write its record says nothing
    app = spawn(APP)
    _, err = app.stop()
    assert "detrix-auto" not in err


def test_a_process_in_another_network_namespace_is_not_declared_uninstrumented(home, tmp_path):
    """Its sockets cannot be reached from here: doctor says so instead of guessing."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip to start a process in its own network namespace")
    script = tmp_path / "app.py"
    script.write_text(APP)
    proc = subprocess.Popen(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            'ip link set lo up || exit 97; exec "$@"',
            "sh",
            sys.executable,
            str(script),
        ],
        env=clean_env(home, DETRIX_ENABLE="1", DETRIX_DISCOVERY="0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_until(lambda: proc.poll() is not None or _listening(proc.pid), timeout=20)
        except AssertionError:
            pass
        if proc.poll() is not None:
            pytest.skip(f"cannot make a network namespace here: {proc.stderr.read().strip()}")
        report, found = doctor(home, str(proc.pid))
        assert level(found, "process") == ["warn"]
        assert "another network namespace" in found["process"][0]["text"]
        assert ": it is not instrumented" not in found["process"][0]["text"]
        assert "start-up failed inside it" not in json.dumps(report)
    finally:
        proc.kill()
        proc.wait()


def test_doctor_shows_what_this_debugpy_offers(cli):
    """The capability record of the installed debugpy, probed in a fresh interpreter."""
    result = cli("doctor", "--json")
    findings = {f["check"]: f for f in json.loads(result.stdout)["findings"]}
    line = findings["debugger"]
    assert line["level"] == "ok", line
    assert "every part detrix-auto uses is there" in line["text"]


def test_doctor_names_a_missing_capability_and_what_it_costs(monkeypatch):
    """A debugpy without the gate: an error that says wake is refused, and why."""
    from detrix_auto.cli._doctor import daemon

    record = {"debugpy": "9.9.9", "tracing": "settrace", "missing": {"gate": "moved"}}
    monkeypatch.setattr(daemon, "_DEBUGGER_PROBE", f"print({json.dumps(record)!r})")
    (finding,) = daemon.check_debugger()
    assert finding.check == "debugger:gate" and finding.level == "error"
    assert "debugpy 9.9.9 lacks" in finding.text and "wake is refused" in finding.text
