"""The zero-code front door: the .pth hook, run as real subprocesses.

These run the interpreter the suite runs under, in whose site-packages the
wheel (and so ``detrix_auto.pth``) is installed by tox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import clean_env, http_json, wait_for_record, wait_until

PROBE = textwrap.dedent(
    """\
    import json, os, sys, threading
    def listening_sockets():
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and parts[9] in inodes:
                        count += 1
        return count
    print(json.dumps({
        "loaded": sorted(m for m in sys.modules if m.startswith("detrix_auto")),
        "threads": threading.active_count(),
        "listening": listening_sockets(),
        "heavy": [m for m in ("urllib3", "debugpy", "logging", "socket", "selectors",
                              "detrix_auto.lifecycle", "detrix_auto.control.loop")
                  if m in sys.modules],
    }))
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    """
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def run_probe(
    tmp_path: Path,
    home: Path,
    *flags: str,
    exit_code: int = 0,
    python: str | None = None,
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], dict]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run(
        [python or sys.executable, *flags, str(script), str(exit_code)],
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    return proc, out


def test_hook_is_installed_in_site_packages():
    import site
    import sysconfig

    candidates = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    assert any(os.path.exists(os.path.join(p, "detrix_auto.pth")) for p in candidates)


def test_disabled_is_indistinguishable_from_not_installed(tmp_path, home):
    proc, out = run_probe(tmp_path, home, exit_code=3)
    assert proc.returncode == 3 and proc.stderr == ""
    assert out["loaded"] == [] and out["listening"] == 0
    for value in ("0", "false", "off", "no", ""):
        proc, out = run_probe(tmp_path, home, DETRIX_ENABLE=value)
        assert out["loaded"] == [] and proc.stderr == ""


def test_enabled_sleeping_binds_one_socket_and_loads_nothing_heavy(tmp_path, home):
    proc, out = run_probe(tmp_path, home, exit_code=4, DETRIX_ENABLE="1")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr == ""
    # One control plane, although a venv processes site-packages twice (gh-75723).
    assert out["listening"] == 1
    assert out["heavy"] == []
    assert "detrix_auto._boot" in out["loaded"]


def test_unknown_enable_word_warns_once_and_stays_off(tmp_path, home):
    proc, out = run_probe(tmp_path, home, exit_code=5, DETRIX_ENABLE="maybe")
    assert proc.returncode == 5
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrix-auto: ")
    assert "DETRIX_ENABLE='maybe'" in lines[0]
    assert out["listening"] == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DETRIX_CONTROL_PORT", "abc"),
        ("DETRIX_REGISTER_TIMEOUT", "nan"),
        ("DETRIX_DAEMON_URL", "localhost:8090"),
        ("DETRIX_CA_BUNDLE", "/nonexistent.pem"),
        ("DETRIX_START_STATE", "running"),
    ],
)
def test_bad_variable_is_one_stderr_line_and_the_app_runs_unchanged(
    tmp_path, home, variable, value
):
    reference, ref_out = run_probe(tmp_path, home, exit_code=7)
    proc, out = run_probe(tmp_path, home, exit_code=7, DETRIX_ENABLE="1", **{variable: value})
    assert proc.returncode == 7
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("detrix-auto: ") and variable in lines[0]
    assert out["listening"] == 0
    assert proc.stdout.count("\n") == reference.stdout.count("\n")


def test_an_unknown_verify_ssl_word_is_one_line_and_verification_stays_on(tmp_path, home):
    # As in detrix-py: only 0/false/no/off turn TLS verification off. The word is
    # said once, and detrix-auto starts (it is a safe reading, not an error).
    proc, out = run_probe(
        tmp_path, home, exit_code=7, DETRIX_ENABLE="1", DETRIX_VERIFY_SSL="perhaps"
    )
    assert proc.returncode == 7
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "DETRIX_VERIFY_SSL='perhaps'" in lines[0] and "verification stays on" in lines[0]
    assert out["listening"] == 1


def test_control_port_taken_is_one_line_and_the_app_runs(tmp_path, home):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        proc, out = run_probe(
            tmp_path, home, exit_code=0, DETRIX_ENABLE="1", DETRIX_CONTROL_PORT=port
        )
    assert proc.returncode == 0
    assert len(proc.stderr.splitlines()) == 1 and "DETRIX_CONTROL_PORT" in proc.stderr


def test_strict_mode_stops_the_process(tmp_path, home):
    proc, out = run_probe(
        tmp_path, home, DETRIX_ENABLE="1", DETRIX_STRICT="1", DETRIX_CONTROL_PORT="70000"
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "DETRIX_CONTROL_PORT" in proc.stderr and "DETRIX_STRICT" in proc.stderr


def test_strict_mode_without_errors_changes_nothing(tmp_path, home):
    proc, out = run_probe(tmp_path, home, DETRIX_ENABLE="1", DETRIX_STRICT="1")
    assert proc.returncode == 0 and proc.stderr == "" and out["listening"] == 1


@pytest.mark.parametrize(("flag", "runs"), [("-E", True), ("-I", True), ("-S", False)])
def test_interpreter_flags(tmp_path, home, flag, runs):
    """-E and -I still process site-packages (.pth), -S does not (documented)."""
    proc, out = run_probe(tmp_path, home, flag, DETRIX_ENABLE="1")
    assert proc.returncode == 0, proc.stderr
    assert (out["listening"] == 1) is runs


def test_default_name_is_the_script_and_pid(spawn):
    app = spawn(name="billing_worker.py")
    assert app.record["name"] == f"billing_worker-{app.pid}"
    assert app.status()["name"] == app.record["name"]


def test_detrix_name_overrides_the_base(spawn):
    app = spawn(env={"DETRIX_NAME": "svc"})
    assert app.status()["name"] == f"svc-{app.pid}"


def test_module_run_names_the_module(tmp_path, home):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("import time; time.sleep(30)\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mypkg"], cwd=str(tmp_path), env=clean_env(home, DETRIX_ENABLE="1")
    )
    try:
        record = wait_for_record(home, proc.pid, proc)
        assert record["name"] == f"mypkg-{proc.pid}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("where", "activates"),
    [
        ("pydevd-notes/app.py", True),  # once taken for pydevd: off, and not a word why
        ("debugpy/adapter-tests/app.py", True),
        ("work/pydevd.py", False),  # pydevd run as a program
        ("vendor/debugpy/adapter/__main__.py", False),  # how debugpy starts its adapter
        ("vendor/debugpy/launcher/__main__.py", False),
    ],
)
def test_only_debugpys_own_helpers_stay_off(tmp_path, home, where, activates):
    """A program whose path only contains "pydevd" or "debugpy" is the user's: it
    activates. debugpy's adapter and launcher, and pydevd run as a program, do not."""
    script = tmp_path / where
    script.parent.mkdir(parents=True)
    script.write_text(PROBE)
    target = script.parent if script.name == "__main__.py" else script
    proc = subprocess.run(
        [sys.executable, str(target), "0"],
        env=clean_env(home, DETRIX_ENABLE="1"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["listening"] == (1 if activates else 0), out


def test_discovery_record_is_private_and_removed_at_exit(spawn, home):
    app = spawn()
    path = home / "clients" / f"{app.pid}.json"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert ((home / "clients").stat().st_mode & 0o777) == 0o700
    assert app.record["pid"] == app.pid
    assert app.record["control_url"].startswith("http://127.0.0.1:")
    assert "token" not in json.dumps(app.record).lower().replace("token_required", "")
    app.proc.terminate()  # SIGTERM without a handler: no atexit, record stays ...
    app.proc.wait(10)
    from detrix_auto.discovery import iter_records

    assert all(r["pid"] != app.pid for r in iter_records(str(home)))  # ... and is pruned
    assert not path.exists()


def test_normal_exit_removes_the_record(spawn, home):
    app = spawn(
        textwrap.dedent("""\
        import time
        time.sleep(0.5)
    """)
    )
    app.proc.wait(20)
    assert not (home / "clients" / f"{app.pid}.json").exists()


def test_read_only_home_falls_back_and_never_fails_the_host(tmp_path):
    if os.geteuid() == 0:
        ro = Path("/proc/self")  # not writable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    script = tmp_path / "s.py"
    script.write_text("import time; time.sleep(30)\n")
    env = clean_env(ro, DETRIX_ENABLE="1", XDG_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        path = runtime / "detrix-auto" / "clients" / f"{proc.pid}.json"
        wait_until(path.exists, timeout=20)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert err == ""


def test_sitecustomize_shim_chains_to_the_next_one(tmp_path, home):
    """PYTHONPATH mode: our sitecustomize must not shadow one further down sys.path."""
    shim = Path(__file__).resolve().parent.parent / "sitecustomize_shim"
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text(
        "import os; os.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n"
    )
    script = tmp_path / "s.py"
    script.write_text(
        "import os, sys; print(os.environ.get('OTHER_SITECUSTOMIZE'), "
        "'detrix_auto._boot' in sys.modules)\n"
    )
    env = clean_env(home, DETRIX_ENABLE="1", PYTHONPATH=f"{shim}{os.pathsep}{other}")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "ran True", proc.stderr
    assert proc.stderr == ""


def test_children_inherit_activation_unless_told_not_to(tmp_path, home):
    parent = tmp_path / "parent.py"
    parent.write_text(
        textwrap.dedent("""\
        import subprocess, sys
        child = subprocess.run([sys.executable, "-c",
            "import sys; print('detrix_auto._boot' in sys.modules and "
            "__import__('detrix_auto._runtime').__dict__ is not None and "
            "__import__('detrix_auto')._runtime.is_started())"],
            capture_output=True, text=True)
        print(child.stdout.strip())
    """)
    )
    on = subprocess.run(
        [sys.executable, str(parent)],
        env=clean_env(home, DETRIX_ENABLE="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert on.stdout.strip() == "True", on.stderr
    off = subprocess.run(
        [sys.executable, str(parent)],
        env=clean_env(home, DETRIX_ENABLE="1", DETRIX_CHILDREN="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert off.stdout.strip() == "False", off.stderr


def test_fork_child_gets_its_own_control_plane_and_name(spawn, home):
    app = spawn(
        textwrap.dedent("""\
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            print("child", os.getpid(), flush=True)
            time.sleep(30)
            os._exit(0)
        print("parent", pid, flush=True)
        time.sleep(30)
    """)
    )
    child_pid = int(wait_until(lambda: _child_pid(app), timeout=20))
    child = wait_for_record(home, child_pid)
    assert child["control_port"] != app.record["control_port"]
    assert child["name"] == f"app-{child_pid}" != app.record["name"]
    code, status = http_json(child["control_url"], "GET", "/detrix/status")
    assert code == 200 and status["state"] == "sleeping" and status["name"] == child["name"]
    os.kill(child_pid, 9)


def _child_pid(app):
    try:
        with open(f"/proc/{app.pid}/task/{app.pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return kids[0] if kids else None


# -- which hook file runs, per Python version (PEP 829) ---------------------------------

HOOK_FILES_PROBE = (
    "import json, sys; rt = sys.modules.get('detrix_auto._runtime'); print(json.dumps({"
    "'loaded': sorted(m for m in sys.modules if m.startswith('detrix_auto') or m == 'pkgutil'),"
    "'started': bool(rt and rt.is_started())}))"
)


def _installed_dirs() -> list[str]:
    """Where this interpreter imports detrix_auto, debugpy and urllib3 from (an editable
    install keeps detrix_auto in the source tree)."""
    import debugpy
    import urllib3

    import detrix_auto

    dirs: list[str] = []
    for module in (detrix_auto, debugpy, urllib3):
        parent = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
        if parent not in dirs:
            dirs.append(parent)
    return dirs


def _venv_with_hook_files(where: Path, *, start: bool) -> tuple[str, Path]:
    """A fresh venv holding the installed ``detrix_auto.pth`` (and a ``.start`` if asked)."""
    import sysconfig

    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120
    )
    python = str(where / "bin" / "python")
    site_dir = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    installed_pth = Path(sysconfig.get_paths()["purelib"]) / "detrix_auto.pth"
    (site_dir / "detrix_auto.pth").write_text(installed_pth.read_text())
    # plain path lines, read before detrix_auto.pth: the dependencies become
    # importable, their own .pth files do not run
    (site_dir / "a_test_deps.pth").write_text("\n".join(_installed_dirs()) + "\n")
    if start:
        (site_dir / "detrix_auto.start").write_text("detrix_auto._boot:start_from_site\n")
    return python, site_dir


def _probe_hook_files(python: str, home: Path, cwd: Path, **env: str) -> dict:
    proc = subprocess.run(
        [python, "-c", HOOK_FILES_PROBE],
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(cwd),
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_wheel_ships_the_pth_hook_and_no_start_file():
    """A .start file would cost every interpreter start on 3.15 (see _boot's docstring)."""
    import site
    import sysconfig

    candidates = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    assert not any(os.path.exists(os.path.join(p, "detrix_auto.start")) for p in candidates)


@pytest.mark.parametrize("start", [False, True], ids=["pth-only", "pth-and-start"])
def test_doctor_tells_which_hook_file_runs_on_this_python(tmp_path, home, start):
    """What doctor says about detrix_auto.start is what this interpreter really does."""
    python, site_dir = _venv_with_hook_files(tmp_path / "venv", start=start)
    disabled = _probe_hook_files(python, home, tmp_path)
    enabled = _probe_hook_files(python, home, tmp_path, DETRIX_ENABLE="1")
    assert enabled["started"] is True  # the hook runs either way
    result = subprocess.run(
        [python, "-m", "detrix_auto", "doctor", "--json"],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "pep829"]
    levels = [f["level"] for f in findings]
    start_runs = start and sys.version_info >= (3, 15)
    if start_runs:
        # 3.15 calls the .start entry in every interpreter, even disabled ...
        assert "detrix_auto._boot" in disabled["loaded"] and "pkgutil" in disabled["loaded"]
        assert levels == ["warn"] and "even with DETRIX_ENABLE unset" in findings[0]["text"]
        assert f"rm {site_dir / 'detrix_auto.start'}" in findings[0]["fix"]
    else:
        # ... while the .pth line alone imports nothing, on every version
        assert disabled["loaded"] == [], disabled
        if sys.version_info >= (3, 15):
            assert levels == ["ok"] and "import line" in findings[0]["text"]
        elif start:
            assert levels == ["ok"] and "is not read by Python" in findings[0]["text"]
        else:
            assert levels == []
    assert not any(f["level"] == "error" and f["check"] in ("hook", "pep829") for f in findings)


@pytest.mark.parametrize(
    ("version", "pth", "start", "expected"),
    [
        ((3, 10), True, False, []),
        ((3, 14), True, True, ["ok"]),
        ((3, 15), True, False, ["ok"]),
        ((3, 17), True, True, ["warn"]),
        ((3, 15), False, True, ["warn"]),
        ((3, 18), True, False, ["error"]),
        ((3, 18), True, True, ["ok"]),
        ((3, 18), False, False, []),
    ],
)
def test_doctor_hook_file_rules_per_version(version, pth, start, expected):
    """The same rules for versions this machine may not have (3.18 drops .pth import lines)."""
    from detrix_auto.cli._doctor import check_start_files

    found = check_start_files(version, ["/site"] if pth else [], ["/site"] if start else [])
    assert [f.level for f in found] == expected
    for finding in found:
        assert f"Python {version[0]}.{version[1]}" in finding.text
        assert finding.level == "ok" or finding.fix
