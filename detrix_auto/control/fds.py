"""Socket descriptors we opened, and proof that a number still names one of them.

A host may close descriptors it never opened: daemonizers call
``os.closerange(3, ...)``, and the kernel hands the freed number to the host's
next ``open()`` or ``socket()``. Anything we then did with "our" number would
hit the host's file or socket: a ``close()`` loses its buffered writes, a
``shutdown()`` cuts its database connection, a ``recv()`` steals its bytes.

So every socket of ours is remembered with the identity the kernel gave it
(``st_dev`` and ``st_ino`` of ``fstat``, unique among live sockets) and checked
before it is used or closed: a number that no longer names that socket is
forgotten (``detach()``), never closed, shut down, read or written.

A check and the call that follows it are two system calls, and a host that
closes and reuses a number exactly between them still wins; that window is a
few microseconds instead of the socket's lifetime.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["forget", "identity", "is_ours", "release"]

#: Windows sockets are not C runtime descriptors: ``fstat`` cannot see them.
_CHECKABLE = os.name != "nt"


def identity(sock: Any) -> tuple[int, int] | None:
    """The kernel's identity of the socket ``sock`` holds now, or None."""
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        return None
    if fd < 0:
        return None
    if not _CHECKABLE:
        return (0, fd)
    try:
        st = os.fstat(fd)
    except (OSError, ValueError):
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)


def is_ours(sock: Any, ident: tuple[int, int] | None) -> bool:
    """Does ``sock``'s number still name the socket we recorded as ``ident``?"""
    return ident is not None and identity(sock) == ident


def release(sock: Any, ident: tuple[int, int] | None) -> bool:
    """Close ``sock`` if its number is still ours, else forget the number. True if closed."""
    if is_ours(sock, ident):
        try:
            sock.close()
        except OSError:
            pass
        return True
    forget(sock)
    return False


def forget(sock: Any) -> None:
    """Let go of the number without closing it (it belongs to someone else now)."""
    try:
        sock.detach()
    except (OSError, ValueError, AttributeError):
        pass
