"""``run`` (exec with activation on) and ``demo`` (the README's first command)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from cli_support import (
    APP,
    OBSERVE_LINE,
    clean_env,
    cli_argv,
    json_lines,
    one_error_line,
    wait_for_record,
)

REPORT = textwrap.dedent(
    """\
    import json, os, signal, sys, time
    import detrix_auto._runtime as runtime
    if len(sys.argv) > 1:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(5))
    print(json.dumps({
        "pid": os.getpid(),
        "enable": os.environ.get("DETRIX_ENABLE"),
        "started": runtime.is_started(),
        "auto_path": os.environ.get("DETRIX_AUTO_PATH"),
        "pythonpath": os.environ.get("PYTHONPATH"),
    }), flush=True)
    if len(sys.argv) > 1:
        time.sleep(30)
    sys.exit(3)
    """
)


def test_run_execs_the_command_with_activation_on(home, tmp_path):
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    proc = subprocess.Popen(
        cli_argv("run", "--", sys.executable, str(script)),
        env=clean_env(home),
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3  # the command's own exit status
    report = json.loads(out)
    assert report["pid"] == proc.pid  # exec'd: same process, no wrapper in between
    assert report["enable"] == "1" and report["started"] is True
    assert report["pythonpath"].split(os.pathsep)[0].endswith(("_shim", "sitecustomize_shim"))
    # ours first, then wherever the dependencies are (the same site-packages for a wheel)
    auto_path = report["auto_path"].split(os.pathsep)
    assert os.path.isdir(os.path.join(auto_path[0], "detrix_auto"))
    for dependency in ("debugpy", "urllib3"):
        assert any(os.path.isdir(os.path.join(p, dependency)) for p in auto_path), auto_path

    # signals reach the command itself
    proc = subprocess.Popen(
        cli_argv("run", sys.executable, str(script), "wait"),
        env=clean_env(home),
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    assert json.loads(proc.stdout.readline())["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 5

    # an explicit DETRIX_ENABLE is respected
    proc = subprocess.run(
        cli_argv("run", "--", sys.executable, str(script)),
        env=clean_env(home, DETRIX_ENABLE="0"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=str(tmp_path),
    )
    report = json.loads(proc.stdout)
    assert report["enable"] == "0" and report["started"] is False


def test_run_activates_an_interpreter_without_detrix_auto(cli, home, tmp_path, bare_python, procs):
    script = tmp_path / "app.py"
    script.write_text(APP)
    # from "/", so that the installed package (next to debugpy and urllib3) is the one
    # DETRIX_AUTO_PATH names, not a source checkout in the working directory
    proc = procs(cli_argv("run", "--", bare_python, str(script)), cwd="/")
    wait_for_record(home, proc.pid, proc)
    result = cli(
        "observe",
        str(proc.pid),
        "--at",
        f"{script}:{OBSERVE_LINE}",
        "--expr",
        "value",
        "--count",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert len(json_lines(result.stdout)) == 2


def test_run_errors(cli):
    missing = cli("run", "--", "no-such-command-xyz")
    assert missing.returncode == 127
    assert "command not found: no-such-command-xyz" in one_error_line(missing)
    empty = cli("run")
    assert empty.returncode == 2
    assert "run needs a command" in one_error_line(empty)


def _demo_env(home, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return clean_env(home, TMPDIR=str(scratch)), scratch


def test_demo_shows_live_values_and_leaves_nothing_behind(home, tmp_path):
    env, scratch = _demo_env(home, tmp_path)
    result = subprocess.run(
        cli_argv("demo", "--seconds", "1.5"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("detrix-auto demo: watch a value change inside a separate")
    assert "with DETRIX_ENABLE=1" in out and "found     detrix-demo-" in out
    values = [line for line in out.splitlines() if "tick=" in line]
    assert len(values) >= 3
    assert all("temperature=" in line for line in values)
    ticks = [int(line.split("tick=")[1].split()[0]) for line in values]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    assert f"Saw {len(values)} value(s)" in out
    assert "nothing is left running" in out
    assert "detrix-auto observe app --at app.py:LINE" in out
    assert list(scratch.iterdir()) == []  # its temporary home is gone
    assert result.stderr == ""


def test_demo_ctrl_c_cleans_up(home, tmp_path):
    env, scratch = _demo_env(home, tmp_path)
    proc = subprocess.Popen(
        cli_argv("demo", "--seconds", "30"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "tick=" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, "".join(seen) + out + err
    assert "nothing is left running" in out and "Traceback" not in err
    assert list(scratch.iterdir()) == []


def test_demo_falls_back_to_the_shim_without_the_pth(home, tmp_path, bare_python):
    """A fresh interpreter whose site-packages lack the hook still runs the demo."""
    # Where detrix_auto, debugpy and urllib3 are imported from: one site-packages for
    # a wheel, the source tree plus the environment's site-packages when editable.
    roots = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, detrix_auto, debugpy, urllib3\n"
            "for m in (detrix_auto, debugpy, urllib3):\n"
            "    print(os.path.dirname(os.path.dirname(m.__file__)))",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
        timeout=30,
    ).stdout.split()
    env, scratch = _demo_env(home, tmp_path)
    # importable, but not site dirs: their .pth files do not run
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots))
    argv = cli_argv("demo", "--seconds", "1")
    argv[0] = bare_python
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd="/"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sitecustomize shim (no .pth hook in this interpreter)" in result.stdout
    assert "tick=" in result.stdout
