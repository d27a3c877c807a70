"""Issue 11, attack 4: the CLI trusts only records the user owns.

The CLI reads discovery records from every candidate directory and sends the
token to each record's ``control_url``. Another user plants records where the
CLI looks: in ``$TMPDIR/detrix-auto-<uid>/clients``, which they can create
first in a world-writable temporary directory, or under a ``DETRIX_HOME``
whose parent they own; or binds the port a record of ours points at. The
"control plane" at the record's URL is the attacker's
:class:`sechelpers.ImpostorDaemon`, which reports every request it gets.

Each test asserts that the impostor receives no request at all (so neither
the token nor anything else), and that ``ps``/``status``/``doctor`` say in
one line why the record was passed over.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sechelpers import TOKEN, ImpostorDaemon, as_other_user, start_app
from support import clean_env

from detrix_auto.cli._common import Target, Untrusted

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ME = os.getuid()

PLANT = """\
os.makedirs(os.path.dirname(job["path"]), exist_ok=True)
with open(job["path"], "w") as handle:
    handle.write(json.dumps(job["record"]))
print(json.dumps("planted"))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable sticky directory (like /tmp) that both users can reach."""
    path = Path(tempfile.mkdtemp(prefix="detrix-trust-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def impostor(other_user) -> Iterator[ImpostorDaemon]:
    with ImpostorDaemon(other_user) as server:
        yield server


def _record(pid: int, url: str) -> dict:
    return {
        "pid": pid,
        "name": f"victim-{pid}",
        "control_url": url,
        "started_at": time.time(),
        "argv": ["python", "app.py"],
    }


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = clean_env(home, DETRIX_TOKEN=TOKEN, **env)
    full.pop("XDG_RUNTIME_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "detrix_auto", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )


def _own_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def _assert_nothing_reached(impostor: ImpostorDaemon) -> None:
    time.sleep(0.2)  # a request in flight would have been reported by now
    assert impostor.requests == [], "the impostor received a request"
    assert impostor.tokens() == []


# -- a planted fallback directory ---------------------------------------------------------


def test_a_fallback_directory_another_user_made_first_is_not_read(
    tmp_path, other_user, shared_dir, impostor
):
    planted = shared_dir / f"detrix-auto-{ME}" / "clients" / f"{impostor.proc.pid}.json"
    as_other_user(
        other_user, PLANT, path=str(planted), record=_record(impostor.proc.pid, impostor.url)
    )
    home = _own_home(tmp_path)
    env = {"TMPDIR": str(shared_dir)}
    why = (
        f"records in {planted.parent} are ignored: directory {planted.parent.parent} is owned "
        f"by uid {other_user[0]} (detrixsec), not by you"
    )

    ps = _cli(home, "ps", "--json", **env)
    assert ps.returncode == 0, ps.stderr
    assert json.loads(ps.stdout) == []
    assert f"detrix-auto: {why}" in ps.stderr.splitlines()

    status = _cli(home, "status", str(impostor.proc.pid), **env)
    assert status.returncode != 0
    wake = _cli(home, "wake", f"victim-{impostor.proc.pid}", **env)
    assert wake.returncode != 0

    doctor = _cli(home, "doctor", "--json", **env)
    assert why in doctor.stdout
    _assert_nothing_reached(impostor)
    assert planted.exists(), "a reader removed a file it does not own"


# -- a DETRIX_HOME whose parent another user owns -------------------------------------------


@pytest.mark.parametrize("planted_by", ["the other user", "us, before the parent changed hands"])
def test_records_below_a_parent_another_user_owns_are_not_read(
    other_user, shared_dir, impostor, planted_by
):
    parent = shared_dir / "theirs"
    home = parent / "detrix"
    record = _record(impostor.proc.pid, impostor.url)
    path = home / "clients" / f"{impostor.proc.pid}.json"
    if planted_by == "the other user":
        as_other_user(other_user, "os.makedirs(job['parent'])\nprint(1)\n", parent=str(parent))
        as_other_user(other_user, PLANT, path=str(path), record=record)
    else:
        # Every file of ours, root-owned and private: only the parent is theirs,
        # and with it the power to swap our home for another.
        path.parent.mkdir(parents=True, mode=0o700)
        home.chmod(0o700)
        path.write_text(json.dumps(record))
        path.chmod(0o600)
        os.chown(parent, *other_user)
    # The first directory on the way down that is not ours is what is named.
    why = f"directory {parent} is owned by uid {other_user[0]} (detrixsec), not by you"
    private_tmp = shared_dir / "private"
    private_tmp.mkdir(mode=0o700)
    ps = _cli(home, "ps", "--json", TMPDIR=str(private_tmp))
    assert json.loads(ps.stdout) == [], ps.stderr
    assert f"detrix-auto: records in {home / 'clients'} are ignored: {why}" in ps.stderr
    _assert_nothing_reached(impostor)


def test_the_writer_makes_nothing_below_a_parent_another_user_owns(
    tmp_path, other_user, shared_dir
):
    parent = shared_dir / "theirs"
    as_other_user(
        other_user,
        "os.makedirs(job['parent'])\nos.chmod(job['parent'], 0o777)\nprint(1)\n",
        parent=str(parent),
    )
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir(mode=0o700)
    fallback = private_tmp / f"detrix-auto-{ME}" / "clients"
    app = start_app(
        tmp_path / "victim",
        record_dir=fallback,
        DETRIX_HOME=str(parent / "detrix"),
        TMPDIR=str(private_tmp),
        XDG_RUNTIME_DIR="",
    )
    try:
        assert (fallback / f"{app.pid}.json").exists()
        assert list(parent.iterdir()) == [], "the writer created something in their directory"
    finally:
        app.stop()


# -- a record of ours whose port another user holds -----------------------------------------


def test_a_record_whose_port_another_user_holds_gets_nothing(tmp_path, impostor, other_user):
    home = _own_home(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        clients = home / "clients"
        clients.mkdir(mode=0o700)
        path = clients / f"{sleeper.pid}.json"
        path.write_text(json.dumps(_record(sleeper.pid, impostor.url)))
        path.chmod(0o600)
        why = (
            f"{path} is ignored: {impostor.url} is held by uid {other_user[0]} (detrixsec), "
            f"not by pid {sleeper.pid}"
        )
        ps = _cli(home, "ps", "--json")
        assert json.loads(ps.stdout) == [], ps.stderr
        assert f"detrix-auto: {why}" in ps.stderr.splitlines()
        status = _cli(home, "status", str(sleeper.pid))
        assert status.returncode != 0
        assert why in status.stderr
        _assert_nothing_reached(impostor)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_port_taken_over_after_the_listing_gets_nothing_either(impostor, other_user):
    """The record passed, then its process died and the other user bound the port:
    the connection that would carry the token is checked itself."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = _record(sleeper.pid, impostor.url)
        target = Target(url=impostor.url, pid=sleeper.pid, name="victim", record=record)
        with pytest.raises(Untrusted, match=f"held by uid {other_user[0]} .*nothing was sent"):
            target.call("GET", "/detrix/status")
        _assert_nothing_reached(impostor)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_our_own_processes_are_still_listed_and_reached_with_the_token(tmp_path):
    app = start_app(tmp_path / "ours", DETRIX_TOKEN=TOKEN, DETRIX_CONTROL_HOST="0.0.0.0")
    try:
        ps = _cli(app.home, "ps", "--json")
        rows = json.loads(ps.stdout)
        assert [row["pid"] for row in rows] == [app.pid], ps.stderr
        assert rows[0]["state"] == "sleeping"
        assert "ignored" not in ps.stderr
        status = _cli(app.home, "status", str(app.pid), "--json")
        assert status.returncode == 0, status.stderr
    finally:
        app.stop()


#: A process that keeps every socket handed to it (SCM_RIGHTS) over the link it is given.
KEEPER = """\
import socket, sys
link = socket.socket(fileno=int(sys.argv[1]))
kept = []
while True:
    msg, fds, _, _ = socket.recv_fds(link, 16, 4)
    if not msg:
        break
    kept.extend(fds)
    link.sendall(b"k")
"""


@pytest.mark.parametrize("handed_over", [True, False], ids=["handed-over", "kept-elsewhere"])
def test_a_connection_the_server_installs_late_is_its_own_and_one_it_never_gets_is_not(
    handed_over,
):
    """``accept()`` gives a socket its inode before its descriptor is installed; a
    server preempted in between shows a connection none of its descriptors holds
    yet (a false "held by another process" under load, seen in CI). Here the gap
    is made long: this process accepts and holds the connection, and hands it to
    the target 0.15 s later (or never). Handed over: the request goes out; never:
    it is refused, after the settle time, as before."""
    from detrix_auto.cli._common import ACCEPT_SETTLE, verify_holder

    ours, theirs = socket.socketpair()
    target = subprocess.Popen(
        [sys.executable, "-c", KEEPER, str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            url = f"http://127.0.0.1:{server.getsockname()[1]}"
            with socket.create_connection(server.getsockname(), timeout=10) as client:
                accepted, _ = server.accept()
                with accepted:
                    if handed_over:
                        timer = threading.Timer(
                            0.15,
                            lambda: socket.send_fds(ours, [b"x"], [accepted.fileno()]),
                        )
                        timer.start()
                        verify_holder(client, pid=target.pid, url=url)
                        timer.join()
                        assert ours.recv(1) == b"k"
                    else:
                        started = time.monotonic()
                        with pytest.raises(
                            Untrusted, match=f"held by another process than pid {target.pid}"
                        ):
                            verify_holder(client, pid=target.pid, url=url)
                        assert time.monotonic() - started >= ACCEPT_SETTLE
    finally:
        ours.close()
        target.wait(timeout=10)
