"""Which files and directories we may trust: ours (or root's), and nobody else's to change.

Another local user can create ``/tmp/detrix-auto-<uid>`` before we do, own
the parent of a ``DETRIX_HOME``, or plant a file in any directory they can
write. A file tells us the truth only when neither it nor any directory on
its path can be changed by someone else: every directory from ``/`` down is
owned by us or by root and is not writable by group or others, except a
sticky one (``/tmp``), where others may add entries but cannot rename or
remove ours; and the file itself is a regular file owned by us or by root,
not writable by group or others. Symbolic links are resolved first (the
resolved path is what is checked); a link as the file itself is refused.

Files are opened without following links and without blocking, so a FIFO or
a device planted in their place is refused at once instead of hanging us.

On the start-up path (discovery records are written there): ``os`` and
``stat`` only.
"""

from __future__ import annotations

import os
import stat

__all__ = [
    "Untrusted",
    "make_private_dirs",
    "read_owned_file",
    "read_trusted",
    "trusted_owners",
    "untrusted_dir",
]

#: Group- or world-writable.
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class Untrusted(OSError):
    """A file or directory someone else could have written; the message says why."""


def trusted_owners() -> tuple[int, ...]:
    """Whose files we believe: our effective user and root."""
    if not hasattr(os, "geteuid"):
        return ()
    return (os.geteuid(), 0)


def _owner_text(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError, OverflowError):
        return f"uid {uid}"


def untrusted_dir(path: str) -> str | None:
    """Why directory ``path`` (and every directory above it) cannot be trusted; None if it can.

    Also a reason when ``path`` does not exist. Outside POSIX nothing is
    checked (None).
    """
    if not trusted_owners():
        return None
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return f"cannot resolve {path}"
    return _chain_problem(real)


def _chain_problem(real: str) -> str | None:
    """:func:`untrusted_dir` for a path whose links are already resolved."""
    owners = trusted_owners()
    parts = [p for p in real.split(os.sep) if p]
    current = os.sep
    for index in range(len(parts) + 1):
        if index:
            current = os.path.join(current, parts[index - 1])
        try:
            info = os.lstat(current)
        except OSError as exc:
            return f"{current}: {exc.strerror or exc}"
        if not stat.S_ISDIR(info.st_mode):
            return f"{current} is not a directory"
        if info.st_uid not in owners:
            return f"directory {current} is owned by {_owner_text(info.st_uid)}, not by you"
        if info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX:
            mode = info.st_mode & 0o7777
            return f"directory {current} is writable by other users (mode {mode:o})"
    return None


def read_trusted(path: str, limit: int) -> bytes:
    """The first ``limit`` bytes of ``path``, when it and every directory above it are trusted.

    Raises :class:`Untrusted` (an ``OSError``) saying why not, and
    ``FileNotFoundError`` when the file or its directory does not exist.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(path)
    problem = untrusted_dir(directory)
    if problem is not None:
        raise Untrusted(problem)
    return read_owned_file(path, limit)


def read_owned_file(path: str, limit: int) -> bytes:
    """The first ``limit`` bytes of a regular file of ours (or root's) that others cannot write.

    Only the file is checked (its directory is the caller's business). Opened
    without following a link and without blocking: a FIFO is refused at once.
    """
    owners = trusted_owners()
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise Untrusted(f"{path} is a symbolic link") from None
        raise exc from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Untrusted(f"{path} is not a regular file")
        if owners and info.st_uid not in owners:
            raise Untrusted(f"{path} is owned by {_owner_text(info.st_uid)}, not by you")
        if owners and info.st_mode & _OTHERS_WRITE:
            raise Untrusted(f"{path} is writable by other users (mode {info.st_mode & 0o7777:o})")
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def make_private_dirs(root: str, levels: tuple[str, ...], *, ours_from: int = 0) -> str | None:
    """``root/levels...``, created 0700 where missing, below an existing trusted ``root``.

    ``root`` itself is never created (it is the user's home's parent, the
    runtime directory or the temporary directory: not ours to make). Each
    level must end up a directory of our own, not a link, not writable by
    others. A group/other bit is removed only from levels from ``ours_from`` on
    (directories detrix-auto made for itself, such as ``clients``) or made by
    this call: a directory the user chose (``DETRIX_HOME``) keeps the mode they
    gave it, and is then not used. Returns the path, or None when that cannot
    be had.
    """
    try:
        path = os.path.realpath(root)
    except (OSError, ValueError):
        return None
    if trusted_owners() and _chain_problem(path) is not None:
        return None
    me = os.geteuid() if hasattr(os, "geteuid") else None
    for index, level in enumerate(levels):
        path = os.path.join(path, level)
        made = False
        try:
            os.mkdir(path, 0o700)
            made = True
        except FileExistsError:
            pass
        except OSError:
            return None
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISDIR(info.st_mode):
            return None
        if me is not None and info.st_uid != me:
            return None
        if info.st_mode & 0o077:
            if index < ours_from and not made:
                return None  # the user's directory, open to others: not ours to change
            try:
                os.chmod(path, 0o700)
            except OSError:
                return None
    return path
