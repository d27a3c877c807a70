"""``POST /detrix/files/read``: only regular source files inside the workspace, ever.

The daemon fetches source files through this route when it cannot see the
application's file system (containers). Each containment rule of
``detrix_auto/control/files.py`` is a test here, most of them with the files
planted by another local user in a directory of the workspace that user can
write. The control plane is a real one in this process (no wake is needed, so
debugpy never starts here); its working directory is the workspace.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sechelpers import TOKEN, as_other_user
from support import wait_until

import detrix_auto
from detrix_auto.control import files as files_module
from detrix_auto.control.files import MAX_FILE_SIZE

SOURCE = "def handler(request):\n    return 'héllo wörld'  # non-ASCII, still UTF-8\n"


def _scratch(prefix: str) -> Path:
    """A directory outside pytest's private tree, so that the other user can reach it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The app's working directory, with a drop box the other user can write."""
    root = _scratch("detrix-files-")
    try:
        (root / "src").mkdir()
        (root / "src" / "app.py").write_text(SOURCE)
        uploads = root / "uploads"
        uploads.mkdir()
        uploads.chmod(0o1777)  # another user may plant anything here
        monkeypatch.chdir(root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A secret next to the workspace, not in it."""
    root = _scratch("detrix-outside-")
    try:
        (root / "secret.txt").write_text("not for the daemon\n")
        yield root / "secret.txt"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def plane(workspace: Path, tmp_path: Path) -> Iterator[int]:
    home = workspace / ".detrix-home"
    detrix_auto.init(
        detrix_home=str(home),
        name="files",
        daemon_url="http://127.0.0.1:9",
        token=TOKEN,
        log_level="info",
    )
    try:
        yield int(detrix_auto.status()["control_port"])
    finally:
        detrix_auto.shutdown()


def read(
    port: int,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/detrix/files/read",
) -> tuple[int, str, bytes]:
    """(status, content type, body bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def error_of(reply: tuple[int, str, bytes]) -> str:
    status, ctype, data = reply
    assert ctype == "application/json", reply
    return str(json.loads(data)["error"])


# -- what is served ------------------------------------------------------------------


def test_a_source_file_inside_the_workspace_is_served_as_text(plane, workspace, caplog):
    caplog.set_level(logging.INFO, logger="detrix_auto.audit")
    for path in ("src/app.py", "./src/../src/app.py", str(workspace / "src" / "app.py")):
        status, ctype, data = read(plane, {"path": path})
        assert (status, ctype) == (200, "text/plain; charset=utf-8"), data
        assert data.decode("utf-8") == SOURCE
    # workspace_root narrows the workspace and anchors relative paths
    status, _, data = read(plane, {"path": "app.py", "workspace_root": "src", "commit": "abc"})
    assert status == 200 and data.decode() == SOURCE
    # an audit line per read, naming the resolved file and its size
    size = len(SOURCE.encode())
    assert wait_until(
        lambda: any(
            f"read {str(workspace / 'src' / 'app.py')!r} ({size} bytes)" in r.getMessage()
            for r in caplog.records
        ),
        timeout=5,
    )
    assert any(r.getMessage().startswith("read peer=127.0.0.1:") for r in caplog.records)


def test_a_missing_file_is_404_with_a_json_error(plane):
    reply = read(plane, {"path": "src/nope.py"})
    assert reply[0] == 404 and "no such file" in error_of(reply)


# -- containment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "src/../../etc/hostname", "/tmp", "uploads/../.."],
)
def test_paths_outside_the_workspace_are_refused(plane, path):
    reply = read(plane, {"path": path})
    assert reply[0] == 403 and "outside the workspace" in error_of(reply)


def test_workspace_root_must_lie_inside_the_working_directory(plane, workspace):
    for root in ("/", "..", "/etc", str(workspace.parent)):
        reply = read(plane, {"path": "passwd", "workspace_root": root})
        assert reply[0] == 403 and "outside the application's working" in error_of(reply)


def test_a_link_planted_by_another_user_cannot_lead_out(plane, workspace, outside, other_user):
    as_other_user(
        other_user,
        """
        os.symlink(job["secret"], job["out"])
        os.symlink(job["inside"], job["in"])
        print("null")
        """,
        secret=str(outside),
        inside=str(workspace / "src" / "app.py"),
        out=str(workspace / "uploads" / "notes.py"),
        **{"in": str(workspace / "uploads" / "alias.py")},
    )
    reply = read(plane, {"path": "uploads/notes.py"})
    assert reply[0] == 403 and "outside the workspace" in error_of(reply)
    # a link that stays inside resolves to a file inside: served (as the original did)
    status, _, data = read(plane, {"path": "uploads/alias.py"})
    assert status == 200 and data.decode() == SOURCE


def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(workspace):
    # The race: the path was resolved, then a directory on it became a link.
    # Opening walks from / with O_NOFOLLOW, so the link is refused, not followed.
    (workspace / "uploads" / "pkg").symlink_to(workspace / "src")
    result = files_module._read(str(workspace / "uploads" / "pkg" / "app.py"), ())
    assert result.status == 403 and "changed into a link" in result.message


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_anything_but_a_regular_file_is_refused_at_once(plane, workspace, other_user, kind):
    target = workspace / "uploads" / f"planted-{kind}"
    if kind == "device":
        os.mknod(target, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: never ends
    else:
        as_other_user(
            other_user,
            """
            import socket
            path, kind = job["path"], job["kind"]
            if kind == "fifo":
                os.mkfifo(path, 0o666)
            elif kind == "socket":
                socket.socket(socket.AF_UNIX).bind(path)
            else:
                os.mkdir(path)
            print("null")
            """,
            path=str(target),
            kind=kind,
        )
    reply = read(plane, {"path": f"uploads/{target.name}"})
    assert reply[0] == 403, reply
    assert "not a regular file" in error_of(reply) or "socket" in error_of(reply)
    assert read(plane, None, method="GET", path="/detrix/health")[0] == 200


def test_a_file_over_the_size_limit_is_413(plane, workspace):
    big = workspace / "src" / "big.py"
    with open(big, "wb") as handle:  # sparse: costs no disk
        handle.truncate(MAX_FILE_SIZE + 1)
    reply = read(plane, {"path": "src/big.py"})
    assert reply[0] == 413 and "larger than" in error_of(reply)


def test_a_file_that_is_not_utf8_text_is_400(plane, workspace):
    (workspace / "src" / "blob.bin").write_bytes(b"\xff\xfe\x00binary")
    reply = read(plane, {"path": "src/blob.bin"})
    assert reply[0] == 400 and "UTF-8" in error_of(reply)


def test_detrix_home_and_the_token_files_are_never_served(plane, workspace, monkeypatch):
    home = workspace / ".detrix-home"
    token = home / "auth-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    for path in (".detrix-home/auth-token", str(token), ".detrix-home/clients"):
        reply = read(plane, {"path": path})
        assert reply[0] == 403 and "DETRIX_HOME" in error_of(reply), (path, reply)
    # ... nor through a hard link made elsewhere in the workspace
    os.link(token, workspace / "src" / "innocent.py")
    reply = read(plane, {"path": "src/innocent.py"})
    assert reply[0] == 403 and "token file" in error_of(reply)
    # ... nor the daemon's own ~/detrix (its mcp-token), wherever DETRIX_HOME points
    fake_user = workspace / "user"
    (fake_user / "detrix").mkdir(parents=True)
    (fake_user / "detrix" / "mcp-token").write_text("daemon-token")
    monkeypatch.setenv("HOME", str(fake_user))
    reply = read(plane, {"path": "user/detrix/mcp-token"})
    assert reply[0] == 403 and "DETRIX_HOME" in error_of(reply)


def test_process_state_under_proc_is_never_served(plane, monkeypatch):
    monkeypatch.chdir("/")  # a workspace of / covers /proc: /proc/self/environ is a "file"
    for path in ("/proc/self/environ", "proc/self/cmdline", "/sys/kernel/hostname", "/dev/zero"):
        reply = read(plane, {"path": path})
        assert reply[0] == 403 and "are not served" in error_of(reply), (path, reply)


# -- authorisation and requests ------------------------------------------------------


def test_the_same_authorisation_as_wake(plane, other_user, caplog):
    caplog.set_level(logging.INFO, logger="detrix_auto.audit")
    status = as_other_user(
        other_user,
        """
        body = json.dumps({"path": "src/app.py"}).encode()
        head = (f"POST /detrix/files/read HTTP/1.1\\r\\nHost: 127.0.0.1:{job['port']}\\r\\n"
                f"Content-Type: application/json\\r\\nContent-Length: {len(body)}\\r\\n"
                "Connection: close\\r\\n\\r\\n").encode()
        reply = exchange(("127.0.0.1", job["port"]), head + body)
        print(json.dumps(int(reply.split(b" ", 2)[1])))
        """,
        port=plane,
    )
    assert status == 401
    assert wait_until(
        lambda: any(
            "read peer=" in r.getMessage() and "refused (unauthorized)" in r.getMessage()
            for r in caplog.records
        ),
        timeout=5,
    )
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert read(plane, {"path": "src/app.py"}, headers=proxied)[0] == 401
    with_token = {**proxied, "Authorization": f"Bearer {TOKEN}"}
    assert read(plane, {"path": "src/app.py"}, headers=with_token)[0] == 200


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (None, {}, 400),
        (b"not json", {}, 400),
        ([1, 2], {}, 400),
        ({}, {}, 400),
        ({"path": ""}, {}, 400),
        ({"path": 5}, {}, 400),
        ({"path": "a", "workspace_root": 7}, {}, 400),
        ({"path": "a\u0000b"}, {}, 400),
        ({"path": "x" * 5000}, {}, 400),
        (b"path=src/app.py", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
def test_malformed_requests_are_named_4xx(plane, body, headers, status):
    reply = read(plane, body, headers=headers)
    assert reply[0] == status, reply
    assert error_of(reply)


def test_a_slow_read_never_delays_health_or_status(plane, monkeypatch):
    # A hung file system cannot be made here; a read that waits on an event
    # stands in for it. The read runs on a worker: the I/O thread stays free.
    release = threading.Event()
    real = files_module.read_source_file

    def slow(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(files_module, "read_source_file", slow)
    done: list[int] = []
    reader = threading.Thread(target=lambda: done.append(read(plane, {"path": "src/app.py"})[0]))
    reader.start()
    try:
        with socket.create_connection(("127.0.0.1", plane), timeout=5):
            pass
        assert read(plane, None, method="GET", path="/detrix/health")[0] == 200
        assert read(plane, None, method="GET", path="/detrix/status")[0] == 200
        assert not done
    finally:
        release.set()
        reader.join(30)
    assert done == [200]
