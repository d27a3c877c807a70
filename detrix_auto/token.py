"""Finding the bearer token: ``DETRIX_TOKEN``, else ``<DETRIX_HOME>/mcp-token``.

A token file that other users could read (or that another user owns) is
refused, not merely warned about: whoever can read it can drive the debugger.
The token is never written to a log, an error, status or a discovery record.
"""

from __future__ import annotations

import os
import stat

from .errors import ConfigError

__all__ = ["TokenFileError", "load_token", "read_token_file"]

MAX_TOKEN_FILE = 4096


class TokenFileError(ConfigError):
    """The token file exists but may not be used."""


def read_token_file(path: str) -> str | None:
    """The token in ``path``; None if the file is absent; TokenFileError if unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"token file {path} is not a regular file")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise TokenFileError(
                f"token file {path} is owned by uid {info.st_uid}, not by you; refusing it"
            )
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"token file {path} is readable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); refusing it: run chmod 600 {path}"
            )
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise TokenFileError(f"token file {path} is larger than {MAX_TOKEN_FILE} bytes")
    token = data.decode("utf-8", "replace").strip()
    return token or None


def load_token(explicit: str | None, token_file: str) -> str | None:
    """The configured token, or the file's; raises TokenFileError for an unsafe file."""
    if explicit:
        return explicit
    return read_token_file(token_file)
