"""Fixtures: instrumented apps as real subprocesses, and the embedded daemon.

Every test that wakes a client runs that client in its own subprocess started
with ``DETRIX_ENABLE=1`` (debugpy listens once per process, and the hook is
what we ship). The daemon is :class:`detrix_auto.devdaemon.DevDaemon`, which
speaks the daemon's HTTP API and runs the DAP sequence of CONTRACT.md section 3
against the app's real debugpy. Helpers live in ``support.py``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import SAMPLE_APP, App, clean_env, private_tmp, wait_for_record, write_script

LINUX = sys.platform.startswith("linux")

#: ``DETRIX_TEST_DAEMON_DOUBLE=0`` leaves out ``tests/devdaemon``, the daemon double's
#: own tests: pure Python, the same on every Python, and the double itself serves every
#: other test on each. ``.ci/run`` runs them on 3.12 only (a tenth of a suite).
collect_ignore = ["devdaemon"] if os.environ.get("DETRIX_TEST_DAEMON_DOUBLE") == "0" else []
#: ``DETRIX_TEST_INSTALLS=0`` leaves out the tests that make virtual environments and
#: install this checkout into them (pip at work: a fifth of a CLI suite's CPU time).
#: ``.ci/run`` runs them on 3.10, 3.15 and on the editable install (tox.ini).
if os.environ.get("DETRIX_TEST_INSTALLS") == "0":
    collect_ignore += ["cli/test_install_kinds.py", "cli/test_readme_walkthrough.py"]
#: The second, unprivileged local user every attacker test runs as.
OTHER_USER = "detrixsec"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture(autouse=True)
def _private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's own $TMPDIR (and no XDG_RUNTIME_DIR), for in-process record lookups
    and every subprocess alike: the records' last fallback directory lives there, and
    the machine's /tmp is shared with every other test run."""
    monkeypatch.setenv("TMPDIR", private_tmp(tmp_path / "home"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


@pytest.fixture
def spawn(request: pytest.FixtureRequest, tmp_path: Path, home: Path) -> Iterator[Any]:
    """Start an untouched script with DETRIX_ENABLE=1; returns an :class:`App`.

    The apps run with ``PYTHONFAULTHANDLER=1``: when the test fails, each app still
    running is asked for every thread's stack (:func:`pytest_runtest_makereport`).
    """
    apps: list[App] = []
    request.node.detrix_apps = apps

    def start(
        source: str = SAMPLE_APP,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        python: str | None = None,
        name: str = "app.py",
    ) -> App:
        script = write_script(tmp_path / name, source)
        full_env = clean_env(home, DETRIX_ENABLE="1", PYTHONFAULTHANDLER="1")
        full_env.update(env or {})
        proc = subprocess.Popen(
            [python or sys.executable, str(script), *args],
            env=full_env,
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        app = App(proc=proc, home=home, script=script)
        apps.append(app)
        if wait:
            app.record = wait_for_record(home, proc.pid, proc)
        return app

    yield start
    for app in apps:
        app.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's apps that still run: every thread's stack, in the report.

    A hung main thread or a lost logpoint shows up as a timeout in the test; the
    stacks say where the app was (CI's rare failures could not be rerun).
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for app in getattr(item, "detrix_apps", ()):
        stacks = app.stacks()
        if stacks:
            report.sections.append((f"app {app.pid}: every thread's stack at the failure", stacks))


@pytest.fixture
def daemon() -> Iterator[Any]:
    """The embedded daemon, on loopback, in this test process."""
    from detrix_auto.devdaemon import DevDaemon

    d = DevDaemon().start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def other_user() -> tuple[int, int]:
    """(uid, gid) of a second, unprivileged local user, created if need be.

    Needs root (to create the user and to run a process as it) and Linux (the
    owner of a loopback connection is read from /proc/net/tcp). CI runs as
    root on a fresh machine, so there the user is created once with
    ``useradd`` (no home, no login shell) and left for later runs.
    """
    if not LINUX:
        pytest.skip("the peer-uid check reads /proc/net/tcp, which only Linux has")
    if os.geteuid() != 0:
        pytest.skip("running a client as another user needs root (to create and become it)")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            pytest.skip("no useradd on this machine to create a second user")
        result = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(OTHER_USER)
        except KeyError:
            pytest.skip(f"could not create a second user: {result.stderr.strip()}")
    if entry.pw_uid == 0:
        pytest.skip(f"{OTHER_USER} is root here")
    return entry.pw_uid, entry.pw_gid
