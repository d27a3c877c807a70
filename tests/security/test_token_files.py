"""The token files: ``auth-token`` then ``mcp-token``, and nothing planted there can hang us.

The client reads the token file on the control plane's only I/O thread, on
every request that is not ``health``. Before, the file was opened with a plain
blocking ``open``: a FIFO planted as the token file by another user who can
write ``DETRIX_HOME`` blocked that thread forever, ``health`` included. Now
it is opened with ``O_NOFOLLOW | O_NONBLOCK`` after an ``lstat``, and checked
with ``fstat`` before any read: anything but a private regular file of ours is
refused at once, with a message.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sechelpers import as_other_user, raw_http, start_app
from support import wait_until

from detrix_auto.token import (
    TokenFileError,
    find_token_file,
    load_token,
    read_token_file,
    token_file_candidates,
)

AUTH = "auth-token-value-1"
MCP = "mcp-token-value-2"


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text + "\n")
    path.chmod(mode)


def test_auth_token_is_read_before_mcp_token(tmp_path):
    files = token_file_candidates(str(tmp_path))
    assert [os.path.basename(p) for p in files] == ["auth-token", "mcp-token"]
    assert find_token_file(files) == (None, "")
    _write(tmp_path / "mcp-token", MCP)
    assert find_token_file(files) == (MCP, str(tmp_path / "mcp-token"))
    _write(tmp_path / "auth-token", AUTH)
    assert find_token_file(files) == (AUTH, str(tmp_path / "auth-token"))
    assert load_token(None, files) == AUTH
    assert load_token("explicit", files) == "explicit"


def test_an_unsafe_first_file_is_refused_not_skipped(tmp_path):
    # Fail closed and predictably: the file in use is the first that exists,
    # the one `doctor` names; a bad one is an error, never a silent fallback.
    _write(tmp_path / "mcp-token", MCP)
    _write(tmp_path / "auth-token", AUTH, mode=0o644)
    with pytest.raises(TokenFileError, match="auth-token is readable by other users"):
        load_token(None, token_file_candidates(str(tmp_path)))


def _plant(kind: str, path: Path, target: Path) -> socket.socket | None:
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(1)
        os.chmod(path, 0o600)
        return sock
    elif kind == "device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null
    elif kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "symlink":
        _write(target, AUTH)
        path.symlink_to(target)
    return None


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("fifo", "a FIFO"),
        ("socket", "a socket"),
        ("device", "a character device"),
        ("directory", "a directory"),
        ("symlink", "a symbolic link"),
    ],
)
def test_anything_but_a_regular_file_is_refused_at_once(tmp_path, kind, what):
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    path = tmp_path / "auth-token"
    listener = _plant(kind, path, tmp_path / "elsewhere")
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(read_token_file(str(path)))
        except TokenFileError as exc:
            outcome.append(exc)

    # A thread, so that a reader that blocks (the old behaviour with a FIFO)
    # fails this test instead of hanging the run.
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    try:
        assert not reader.is_alive(), "reading the token file blocked"
        assert len(outcome) == 1 and isinstance(outcome[0], TokenFileError), outcome
        assert f"is {what}" in str(outcome[0])
        assert str(path) in str(outcome[0])
    finally:
        if listener is not None:
            listener.close()
        if kind == "fifo" and reader.is_alive():  # release a blocked reader
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


# -- another user plants a FIFO in a DETRIX_HOME it can write --------------------------


@pytest.fixture
def shared_workdir() -> Iterator[Path]:
    """A work directory whose DETRIX_HOME any local user can write (the mistake we survive).

    Outside pytest's private temporary tree so that the other user can reach it.
    """
    workdir = Path(tempfile.mkdtemp(prefix="detrix-token-", dir="/tmp"))
    try:
        workdir.chmod(0o755)
        home = workdir / "home"
        home.mkdir()
        home.chmod(0o777)
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_fifo_planted_by_another_user_never_blocks_the_control_plane(other_user, shared_workdir):
    # A DETRIX_HOME others can write holds no record of ours: it goes to the fallback.
    fallback = Path(os.environ["TMPDIR"]) / f"detrix-auto-{os.getuid()}" / "clients"
    app = start_app(shared_workdir, record_dir=fallback, DETRIX_LOG_LEVEL="info")
    try:
        address = ("127.0.0.1", app.port)
        planted = as_other_user(
            other_user,
            """
            path = job["path"]
            os.mkfifo(path, 0o600)
            st = os.lstat(path)
            print(json.dumps({"uid": st.st_uid, "fifo": (st.st_mode & 0o170000) == 0o010000}))
            """,
            path=str(app.home / "auth-token"),
        )
        assert planted == {"uid": other_user[0], "fifo": True}
        # A request that makes the server read the token file: refused, at once.
        reply = raw_http(address, "GET", "/detrix/status", headers={"Authorization": "Bearer x"})
        assert reply.status == 401, reply
        # ...and the single I/O thread is free: health and a local status answer.
        assert raw_http(address, "GET", "/detrix/health").status == 200
        local = raw_http(address, "GET", "/detrix/status")
        assert local.status == 200 and local.body["state"] == "sleeping"
        message = f"token file {app.home / 'auth-token'} is a FIFO (named pipe)"
        assert wait_until(lambda: message in app.stderr(), timeout=10), app.stderr()
        assert app.proc.poll() is None
    finally:
        app.stop()
