"""Each way detrix-auto can be installed, tried for real: which flags run the hook, what
``doctor`` says when they do not, and what an uninstall leaves behind.

Installs are made with pip from a wheel built from this checkout (and one editable
install), into interpreters this module creates: a virtual environment, a copy of
the base interpreter with a site-packages of its own (a "system" install that
touches no shared interpreter), and that copy's user site-packages under a
temporary HOME. The README's table of interpreter flags is read from the README
and compared with what these interpreters do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from cli_support import ROOT_DIR, clean_env, cli_argv, wait_for_record, wait_until

pytestmark = pytest.mark.slow

FLAGS = ["", "-E", "-s", "-I", "-S", "PYTHONNOUSERSITE=1"]
#: The README's row label of each install kind (the first cell of its row).
KINDS = {
    "in a virtual environment": "venv",
    "in the interpreter's own site-packages": "system",
    "in the user site-packages (`pip install --user`)": "user",
    "through `detrix-auto run` (the shim on `PYTHONPATH`)": "run",
}
#: Prints whether the hook started detrix-auto in this interpreter.
PROBE = (
    "import sys; m = sys.modules.get('detrix_auto._runtime'); "
    "print('yes' if m is not None and m.is_started() else 'no')"
)


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd="/",
    )
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT_DIR))
    (built,) = out.glob("detrix_auto-*.whl")
    return built


def _base_interpreter() -> Path:
    return Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def _own_prefix(where: Path) -> Path:
    """A non-venv interpreter whose site-packages is empty and ours alone.

    The base interpreter's binary is copied into ``where/bin`` and its standard
    library linked in entry by entry, except site-packages: CPython finds its
    prefix from the binary's location, so ``where`` becomes its ``sys.prefix``.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    (where / "bin").mkdir(parents=True)
    lib = where / "lib" / version
    (lib / "site-packages").mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    python = where / "bin" / version
    shutil.copy2(_base_interpreter(), python)
    site = subprocess.run(
        [str(python), "-c", "import site, sys; print(sys.prefix, site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.defpath},
    )
    if site.returncode != 0 or site.stdout.split() != [str(where), str(lib / "site-packages")]:
        pytest.skip(f"this interpreter cannot be relocated for a private prefix: {site.stderr}")
    return python


@pytest.fixture(scope="module")
def interpreters(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> dict[str, Any]:
    """One interpreter per install kind, each with detrix-auto installed that way."""
    base = tmp_path_factory.mktemp("kinds")
    venv = base / "venv"
    subprocess.run(
        [str(_base_interpreter()), "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    _pip("--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel))

    system = _own_prefix(base / "system")
    _pip("--python", str(system), "install", "-q", "--no-deps", str(wheel))

    user_home = base / "user-home"
    user_home.mkdir()
    user = _own_prefix(base / "user")
    pip_env = dict(os.environ, HOME=str(user_home))
    pip_env.pop("PYTHONUSERBASE", None)
    _pip("--python", str(user), "install", "-q", "--no-deps", "--user", str(wheel), env=pip_env)

    bare = _own_prefix(base / "bare")  # nothing installed: `detrix-auto run` must inject it
    empty_home = base / "empty-home"  # the HOME of every kind but "user": no user site there
    empty_home.mkdir()
    return {
        "venv": venv / "bin" / "python",
        "system": system,
        "user": user,
        "run": bare,
        "home": user_home,
        "empty_home": empty_home,
    }


def _argv_env(
    kind: str, flag: str, interpreters: dict[str, Any], home: Path, program: list[str]
) -> tuple[list[str], dict[str, str]]:
    user_home = interpreters["home" if kind == "user" else "empty_home"]
    env = clean_env(home, DETRIX_ENABLE="1", HOME=str(user_home))
    env.pop("PYTHONUSERBASE", None)
    flags: list[str] = []
    if flag.startswith("PYTHON"):
        name, _, value = flag.partition("=")
        env[name] = value
    elif flag:
        flags.append(flag)
    argv = [str(interpreters[kind]), *flags, *program]
    if kind == "run":
        argv = [*cli_argv("run", "--"), *argv]
    return argv, env


def _hook_runs(kind: str, flag: str, interpreters: dict[str, Any], home: Path) -> str:
    argv, env = _argv_env(kind, flag, interpreters, home, ["-c", PROBE])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.strip()


def _readme_table() -> dict[str, dict[str, str]]:
    text = (ROOT_DIR / "README.md").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| installed "))
    header = [cell.strip().strip("`") for cell in lines[start].strip("|").split("|")]
    assert header[1:] == ["plain", *FLAGS[1:]], header
    table: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        kind = KINDS[cells[0]]
        table[kind] = dict(zip(FLAGS, cells[1:], strict=True))
    assert set(table) == set(KINDS.values())
    return table


def test_the_readme_flag_table_is_what_each_install_kind_does(interpreters, home):
    claimed = _readme_table()
    seen = {
        kind: {flag: _hook_runs(kind, flag, interpreters, home) for flag in FLAGS}
        for kind in KINDS.values()
    }
    assert seen == claimed
    # the cases issue 13 named: a user-site install and -I/-s never run the hook
    assert seen["user"]["-I"] == seen["user"]["-s"] == "no"
    assert seen["venv"]["-I"] == "yes"


@pytest.mark.parametrize(
    ("kind", "flag", "fragment"),
    [
        ("user", "-I", "it was started with -I, which skips the user site-packages"),
        ("user", "-s", "it was started with -s, which skips the user site-packages"),
        ("user", "PYTHONNOUSERSITE=1", "PYTHONNOUSERSITE is set in its environment"),
        ("run", "-E", "but it was started with -E, which ignores PYTHONPATH"),
    ],
)
def test_doctor_names_the_flag_that_skipped_the_hook(
    interpreters, home, procs, tmp_path, kind, flag, fragment
):
    script = tmp_path / "app.py"
    script.write_text("import time\ntime.sleep(60)\n")
    argv, env = _argv_env(kind, flag, interpreters, home, [str(script)])
    proc = procs(argv, env=env)
    python = str(interpreters[kind]).encode()
    # `detrix-auto run` execs the interpreter: wait until it has
    wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(python + b"\0"))
    result = subprocess.run(
        [*cli_argv("doctor", str(proc.pid), "--json")],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    report = json.loads(result.stdout)
    findings = {f["check"]: f for f in report["findings"]}
    assert "process-start" not in findings  # no longer blamed on a start-up failure
    hook = findings["process-hook"]
    assert hook["level"] == "error" and fragment in hook["text"], hook
    if kind == "user":
        assert "user site-packages" in hook["text"] and str(interpreters["home"]) in hook["text"]
        assert "pip install detrix-auto" in hook["fix"]


def test_doctor_in_a_user_site_install_says_which_flags_skip_it(interpreters, home):
    env = clean_env(home, HOME=str(interpreters["home"]))
    env.pop("PYTHONUSERBASE", None)
    done = subprocess.run(
        [str(interpreters["user"]), "-m", "detrix_auto", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    report = json.loads(done.stdout)
    (hook,) = [f for f in report["findings"] if f["check"] == "hook"]
    assert hook["level"] == "ok"
    assert "in the user site-packages" in hook["text"]
    assert "-I or -s, or with PYTHONNOUSERSITE=1, skip it" in hook["text"]


def _leftovers(site: Path) -> list[str]:
    return sorted(p.name for p in site.iterdir() if p.name.startswith(("detrix_auto", "_detrix")))


def _importable(python: Path) -> bool:
    done = subprocess.run(
        [str(python), "-c", "import detrix_auto"],
        capture_output=True,
        timeout=30,
        check=False,
        cwd="/",
        env={"PATH": os.defpath},
    )
    return done.returncode == 0


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_uninstall_leaves_nothing_importable(tmp_path, wheel, home, editable):
    venv = tmp_path / "venv"
    subprocess.run(
        [str(_base_interpreter()), "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    )
    # something else installed there: pip removes a directory whole when it owns
    # every file in it, and this site-packages would otherwise hold only ours
    (site / "other.pth").write_text("")
    source = ["-e", str(ROOT_DIR)] if editable else [str(wheel)]
    _pip("--python", str(python), "install", "-q", "--no-deps", *source)
    assert _importable(python)
    # use it as people do, so that whatever gets compiled at run time is there too
    env = clean_env(home)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    app = subprocess.Popen(
        [str(venv / "bin" / "detrix-auto"), "run", "--", str(python), "-c", "input()"],
        env=env,
        cwd="/",
        stdin=subprocess.PIPE,
    )
    try:
        wait_for_record(home, app.pid)
    finally:
        app.kill()
        app.wait()
    if editable:
        # the editable install puts nothing under site-packages/detrix_auto/
        assert not (site / "detrix_auto").exists()

    _pip("--python", str(python), "uninstall", "-y", "-q", "detrix-auto")
    assert _leftovers(site) == []
    assert not _importable(python)


def test_readme_rows_match_the_known_kinds():
    """The table's first column names exactly the kinds tested above (and nothing is lost)."""
    rows = _readme_table()
    assert all(set(row.values()) <= {"yes", "no"} for row in rows.values()), (
        "each cell is yes or no"
    )
    assert re.search(r"`doctor PID` names the flag", (ROOT_DIR / "README.md").read_text())
