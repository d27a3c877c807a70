"""Reading a source file for the daemon (``POST /detrix/files/read``), contained.

In container and cloud deployments the daemon cannot see the application's
files, so it asks the application for them (detrix-py 1.2.0 added this).
Handing out files is handing out secrets, so only this is ever read:

* a path inside the *workspace*: the process's current directory, or a
  ``workspace_root`` from the request that lies inside it (else 403). Both the
  workspace and the path are resolved first (``..`` and symbolic links
  included), so a link cannot lead out (403);
* never anything under ``DETRIX_HOME`` or the daemon's ``~/detrix`` (token
  files, discovery records, ``daemon.pid``), nor a token file reached through
  a hard link (compared by device and inode after opening), nor anything in
  ``/proc``, ``/sys`` or ``/dev`` (``/proc/self/environ`` is a "regular file"
  holding ``DETRIX_TOKEN``): 403;
* only a regular file: it is opened one path component at a time from ``/``
  with ``O_NOFOLLOW`` (a directory swapped for a link after the check is not
  followed, 403) and ``O_NONBLOCK`` (a FIFO cannot block the worker), and
  ``fstat`` decides before any byte is read (a FIFO, socket, device or
  directory is 403);
* at most :data:`MAX_FILE_SIZE` bytes (413) of UTF-8 text (400 otherwise).

A missing file is 404. Everything here runs on a worker thread, never on the
control plane's I/O thread: a slow or hung file system delays only this read.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

__all__ = ["MAX_FILE_SIZE", "FileRead", "read_source_file"]

#: The original client's limit.
MAX_FILE_SIZE = 10 * 1024 * 1024
#: Longer request paths are refused outright (Linux's PATH_MAX).
MAX_PATH = 4096
#: Pseudo file systems: "regular files" there are process state, not source.
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")

_DIR_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_FILE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


@dataclass(frozen=True)
class FileRead:
    """The outcome: ``status`` 200 with ``content``, or an error ``message``."""

    status: int
    content: bytes = b""
    message: str = ""
    #: What happened, for the audit line (the resolved path when there is one).
    outcome: str = ""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _refuse(status: int, message: str, path: str = "") -> FileRead:
    shown = f" {path!r}" if path else ""
    return FileRead(status, message=message, outcome=f"refused ({status}){shown}: {message}")


def read_source_file(
    path: object,
    workspace_root: object,
    *,
    forbidden_dirs: tuple[str, ...],
    forbidden_files: tuple[str, ...],
) -> FileRead:
    """Read ``path`` under the rules above.

    ``forbidden_dirs``: directories nothing may be read from (``DETRIX_HOME``,
    ``~/detrix``); ``forbidden_files``: files refused even through a hard link
    (the token files).
    """
    if not isinstance(path, str) or not path.strip():
        return _refuse(400, "'path' must be a non-empty string")
    if "\0" in path or len(path) > MAX_PATH:
        return _refuse(400, f"'path' must be at most {MAX_PATH} characters, without NUL")
    if workspace_root is not None and not isinstance(workspace_root, str):
        return _refuse(400, "'workspace_root' must be a string")
    root = workspace_root or ""
    if "\0" in root or len(root) > MAX_PATH:
        return _refuse(400, f"'workspace_root' must be at most {MAX_PATH} characters, without NUL")
    try:
        boundary = os.path.realpath(os.getcwd())
    except OSError as exc:
        return _refuse(403, f"the current directory cannot be resolved ({exc.strerror})")
    workspace = boundary
    if root.strip():
        workspace = os.path.realpath(os.path.join(boundary, root))
        if not _inside(workspace, boundary):
            return _refuse(403, "workspace_root is outside the application's working directory")
    target = os.path.realpath(os.path.join(workspace, path))
    if not _inside(target, workspace):
        return _refuse(403, "path is outside the workspace", target)
    for root in _PSEUDO_ROOTS:
        if _inside(target, root):
            return _refuse(403, f"files under {root} are not served", target)
    for directory in forbidden_dirs:
        if _inside(target, os.path.realpath(directory)):
            return _refuse(403, "files under DETRIX_HOME are not served", target)
    return _read(target, forbidden_files)


def _open_without_links(target: str) -> int:
    """Open the resolved ``target`` from ``/``, never following a link on the way."""
    parts = [p for p in target.split("/") if p]
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory")
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _read(target: str, forbidden_files: tuple[str, ...]) -> FileRead:
    try:
        fd = _open_without_links(target)
    except FileNotFoundError:
        return FileRead(404, message="no such file", outcome=f"not found {target!r}")
    except PermissionError:
        return _refuse(403, "permission denied", target)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            return _refuse(403, "the path changed into a link while it was opened", target)
        if exc.errno == errno.ENXIO:
            return _refuse(403, "not a regular file (a socket)", target)
        return _refuse(403, f"cannot open it ({exc.strerror})", target)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _refuse(403, "not a regular file", target)
        for name in forbidden_files:
            try:
                other = os.lstat(name)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return _refuse(403, "that file is a token file", target)
        if info.st_size > MAX_FILE_SIZE:
            return _refuse(413, f"file is larger than {MAX_FILE_SIZE} bytes", target)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_SIZE:
            chunk = os.read(fd, min(1 << 20, MAX_FILE_SIZE + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return _refuse(403, f"cannot read it ({exc.strerror})", target)
    finally:
        os.close(fd)
    if size > MAX_FILE_SIZE:
        return _refuse(413, f"file is larger than {MAX_FILE_SIZE} bytes", target)
    content = b"".join(chunks)
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return _refuse(400, "file is not valid UTF-8 text", target)
    return FileRead(200, content=content, outcome=f"read {target!r} ({size} bytes)")
