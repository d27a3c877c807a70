"""Registrations made and unregistrations owed: whom to ask to let go of us.

A registration can succeed on the daemon's side after it failed on ours (the
call timed out while the daemon was still attaching), and a daemon that
restarts re-attaches to every connection it stored. So the client remembers
the last few (daemon, connection id, token) it registered with, to ask them to
detach when a DAP client is found attached while it sleeps, and the
unregistrations it still owes, to retry until they are done.

Both lists are replaced, never changed in place: the keeper reads them without
a lock while a wake may write them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .daemon import DaemonClient

__all__ = ["Link", "Links"]

#: How many recent links (and owed unregistrations) are kept.
MAX_LINKS = 4


class Link(NamedTuple):
    daemon: DaemonClient
    connection_id: str
    token: str | None


class Links:
    def __init__(self, keep: int = MAX_LINKS) -> None:
        self._keep = keep
        self._recent: tuple[Link, ...] = ()
        self._owed: tuple[Link, ...] = ()

    @property
    def recent(self) -> tuple[Link, ...]:
        """Registrations attempted, newest first (a daemon URL and id at most once)."""
        return self._recent

    @property
    def owed(self) -> tuple[Link, ...]:
        """Unregistrations still to be done, oldest first."""
        return self._owed

    def remember(self, link: Link) -> None:
        key = _key(link)
        others = tuple(old for old in self._recent if _key(old) != key)
        self._recent = (link, *others)[: self._keep]

    def owe(self, link: Link) -> None:
        if not any(
            o.daemon is link.daemon and o.connection_id == link.connection_id for o in self._owed
        ):
            self._owed = (*self._owed, link)[-self._keep :]

    def paid(self, connection_id: str, daemon: DaemonClient | None = None) -> None:
        """An owed unregistration is no longer owed: done, or re-registered (any daemon)."""
        self._owed = tuple(
            o
            for o in self._owed
            if o.connection_id != connection_id or (daemon is not None and o.daemon is not daemon)
        )

    def still_owed(self, links: tuple[Link, ...]) -> None:
        self._owed = links

    def nothing_owed(self) -> None:
        self._owed = ()


def _key(link: Link) -> tuple[str | None, str]:
    return getattr(link.daemon, "url", None), link.connection_id
