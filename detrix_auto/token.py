"""Finding the bearer token: ``DETRIX_TOKEN``, else a token file in ``DETRIX_HOME``.

The files are looked for in order: ``auth-token`` (what detrix-py 1.2.0 reads)
and then ``mcp-token`` (what the Detrix daemon writes). The first one that
exists decides: when it may not be used, nobody authenticates with a file
(fail closed) rather than silently falling back to the other one, so that the
file in use is always the one ``doctor`` names.

A token file is refused, not merely warned about, when whoever can write
``DETRIX_HOME`` could have put it there for us or read it back: it must be a
regular file (never a link, FIFO, socket or device), owned by us and private
to us. It is opened without following links and without blocking (a FIFO
planted as the token file must not hang the control plane's I/O thread, which
reads the file on every request), and checked with ``fstat`` before any read.
The token is never written to a log, an error, status or a discovery record.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import ConfigError

__all__ = [
    "TOKEN_FILE_NAMES",
    "TokenFileError",
    "find_token_file",
    "load_token",
    "read_token_file",
    "token_file_candidates",
]

MAX_TOKEN_FILE = 4096
#: Looked for in this order under ``DETRIX_HOME``.
TOKEN_FILE_NAMES = ("auth-token", "mcp-token")

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class TokenFileError(ConfigError):
    """The token file exists but may not be used."""


def token_file_candidates(detrix_home: str) -> tuple[str, ...]:
    """The token files under ``detrix_home``, in the order they are looked for."""
    return tuple(os.path.join(detrix_home, name) for name in TOKEN_FILE_NAMES)


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for the message; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, what in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def _refuse_kind(path: str, mode: int) -> None:
    what = _kind(mode)
    if what is not None:
        raise TokenFileError(f"token file {path} is {what}, not a regular file; refusing it")


def read_token_file(path: str) -> str | None:
    """The token in ``path``; None if the file is absent; TokenFileError if unsafe.

    Never blocks and never opens anything but a regular file on purpose:
    ``lstat`` first (so a FIFO or device is not even opened), then an open
    with ``O_NOFOLLOW | O_NONBLOCK`` (something swapped in meanwhile cannot
    block us either), then ``fstat`` on what was really opened, before any read.
    """
    try:
        _refuse_kind(path, os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenFileError(f"token file {path} is a symbolic link; refusing it") from None
        if exc.errno == errno.ENXIO:
            raise TokenFileError(f"token file {path} is a socket; refusing it") from None
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        _refuse_kind(path, info.st_mode)
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise TokenFileError(
                f"token file {path} is owned by uid {info.st_uid}, not by you; refusing it"
            )
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"token file {path} is readable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); refusing it: run chmod 600 {path}"
            )
        if info.st_size > MAX_TOKEN_FILE:
            raise TokenFileError(f"token file {path} is larger than {MAX_TOKEN_FILE} bytes")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    except BlockingIOError:
        raise TokenFileError(f"token file {path} could not be read without waiting") from None
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise TokenFileError(f"token file {path} is larger than {MAX_TOKEN_FILE} bytes")
    token = data.decode("utf-8", "replace").strip()
    return token or None


def find_token_file(candidates: str | tuple[str, ...] | list[str]) -> tuple[str | None, str]:
    """(token, path of the file it came from) for the first candidate that exists.

    ``(None, "")`` when none exists (or the one that exists is empty: then its
    path is still returned, since it is the file in use). Raises
    :class:`TokenFileError` for the first existing file when it is unsafe.
    """
    paths = (candidates,) if isinstance(candidates, str) else tuple(candidates)
    for path in paths:
        try:
            os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError:
            pass  # let read_token_file say what is wrong with it
        return read_token_file(path), path
    return None, ""


def load_token(explicit: str | None, token_files: str | tuple[str, ...] | list[str]) -> str | None:
    """The configured token, or the first token file's; TokenFileError for an unsafe file."""
    if explicit:
        return explicit
    return find_token_file(token_files)[0]
