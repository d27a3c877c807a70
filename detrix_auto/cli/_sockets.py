"""Which TCP sockets a process listens on, read from ``/proc`` (Linux).

``doctor PID`` uses this to find the control plane of a process that is
instrumented but has no discovery record (a read-only home, discovery off):
the socket inodes in ``/proc/PID/fd`` are matched against the listening
entries of ``/proc/PID/net/tcp`` and ``tcp6``. Both need the right to read
the process's fds, which a user has for their own processes only.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

__all__ = ["Listener", "listening_sockets", "socket_inodes"]

#: ``st`` column of /proc/net/tcp for a listening socket (TCP_LISTEN).
_LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket of a process."""

    fd: int
    host: str  # as bound: "127.0.0.1", "0.0.0.0", "::1", "::"
    port: int
    inode: int

    @property
    def url(self) -> str:
        """Where a client on this machine connects to it."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


def socket_inodes(pid: int) -> dict[int, int] | None:
    """``{inode: fd}`` of every socket ``pid`` holds; None when its fds cannot be read."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    inodes: dict[int, int] = {}
    for name in names:
        try:
            link = os.readlink(os.path.join(base, name))
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:[") and link.endswith("]"):
            try:
                inodes.setdefault(int(link[8:-1]), int(name))
            except ValueError:
                continue
    return inodes


def listening_sockets(pid: int) -> list[Listener] | None:
    """The TCP listeners among ``pid``'s fds, lowest fd first; None when unreadable."""
    inodes = socket_inodes(pid)
    if inodes is None:
        return None
    found: list[Listener] = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii", errors="replace") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            try:
                inode = int(fields[9])
                host, port = _decode(fields[1], family)
            except (ValueError, OSError):
                continue
            if inode in inodes:
                found.append(Listener(inodes[inode], host, port, inode))
    found.sort(key=lambda listener: listener.fd)
    return found


def _decode(text: str, family: int) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): each 32-bit word is in host order."""
    address, _, port = text.partition(":")
    raw = bytes.fromhex(address)
    if len(raw) not in (4, 16):
        raise ValueError(f"bad address {text!r}")
    step = -1 if sys.byteorder == "little" else 1
    words = b"".join(raw[i : i + 4][::step] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words), int(port, 16)
