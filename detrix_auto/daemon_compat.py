"""The original client's daemon API: ``DaemonClient`` and ``HttpDaemonClient`` of detrix-py 1.2.0.

detrix-py 1.2.0 exports these at the top level, and code written for it may
talk to the daemon through them (``health_check()``, ``register()`` returning
``(connection_id, advertise_url)``, a best-effort ``unregister()``, ``close()``
and use as a context manager), or through the one-call helpers of its
``detrix.daemon`` module (``check_daemon_health``, ``register_connection``,
``unregister_connection``). They are offered here with the same names,
signatures and results, implemented on :class:`detrix_auto.daemon.HttpDaemonClient`
(``http.client``, or urllib3 for ``https://``, instead of httpx, and a hard deadline
per call).

They are not what detrix-auto itself uses: its lifecycle depends on
:class:`detrix_auto.daemon.DaemonClient`, a different protocol. This module is
loaded only when ``detrix_auto.DaemonClient`` or ``detrix_auto.HttpDaemonClient``
is first used, never at start-up.
"""

from __future__ import annotations

import os
import socket
from typing import Protocol, runtime_checkable

from . import _log
from .config import daemon_url_problem
from .daemon import HttpDaemonClient as _Transport
from .daemon import Registration
from .errors import ConfigError, DaemonError

__all__ = [
    "DaemonClient",
    "DaemonConnectionError",
    "HttpDaemonClient",
    "check_daemon_health",
    "register_connection",
    "unregister_connection",
]

#: The original's historical name for :class:`DaemonError`.
DaemonConnectionError = DaemonError


@runtime_checkable
class DaemonClient(Protocol):
    """What detrix-py 1.2.0 calls a daemon client (``isinstance`` works on it)."""

    def health_check(self, timeout: float = 2.0) -> bool: ...

    def register(
        self,
        host: str,
        port: int,
        connection_id: str,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> tuple[str, str | None]: ...

    def unregister(
        self, connection_id: str, token: str | None = None, timeout: float = 2.0
    ) -> None: ...

    def fetch_advertise_url(self, timeout: float = 2.0) -> str | None: ...


class HttpDaemonClient:
    """The Detrix daemon over HTTP(S), with detrix-py 1.2.0's interface.

    ``connect_timeout`` and ``default_timeout`` are accepted for compatibility;
    every call takes its own ``timeout``, a deadline for the whole call.
    A ``ca_bundle`` that does not exist is a :class:`ConfigError` at once; a
    malformed ``base_url`` makes every call fail with :class:`DaemonError`
    (``health_check()`` returns False), as the original's calls did.
    """

    def __init__(
        self,
        base_url: str,
        connect_timeout: float = 2.0,
        default_timeout: float = 5.0,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
    ) -> None:
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise ConfigError(f"CA bundle not found: {ca_bundle}")
        self.base_url = str(base_url).strip().rstrip("/")
        self._connect_timeout = connect_timeout
        self._default_timeout = default_timeout
        self._problem = daemon_url_problem(base_url)
        self._transport = (
            None
            if self._problem
            else _Transport(self.base_url, verify_ssl=verify_ssl, ca_bundle=ca_bundle)
        )

    def __enter__(self) -> HttpDaemonClient:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (the client may still be used; it reconnects)."""
        if self._transport is not None:
            self._transport.close()

    def _ready(self) -> _Transport:
        if self._transport is None:
            raise DaemonError(self._problem or f"Invalid daemon_url format: {self.base_url!r}")
        return self._transport

    def health_check(self, timeout: float = 2.0) -> bool:
        """True when a Detrix daemon answers; False for any failure (logged at debug)."""
        try:
            self._ready().health(timeout)
        except DaemonError as exc:
            _log.debug("Health check failed: %s", exc)
            return False
        return True

    def fetch_advertise_url(self, timeout: float = 2.0) -> str | None:
        """The daemon's advertised URL from its health answer; None if none or unreachable."""
        try:
            transport = self._ready()
            transport.health(timeout)
        except DaemonError as exc:
            _log.debug("Failed to fetch advertise URL: %s", exc)
            return None
        return transport.advertise_url

    def register(  # noqa: PLR0917 - the original's positional signature
        self,
        host: str,
        port: int,
        connection_id: str,
        token: str | None = None,
        timeout: float = 5.0,
        control_plane_url: str | None = None,
        workspace_root: str | None = None,
    ) -> tuple[str, str | None]:
        """Register a debug listener; returns ``(connection_id, advertise_url)``.

        ``connection_id`` is the name to register under (the original's naming);
        the id the daemon assigns is returned. ``workspace_root`` defaults to
        ``DETRIX_WORKSPACE_ROOT``, else the current directory. Raises
        :class:`DaemonError` when the daemon cannot be reached or refuses.
        """
        transport = self._ready()
        root = workspace_root or os.environ.get("DETRIX_WORKSPACE_ROOT", "") or _cwd()
        try:
            hostname = socket.gethostname()
        except OSError:
            hostname = "unknown"
        registration = Registration(
            host=host,
            port=port,
            name=connection_id,
            workspace_root=root,
            hostname=hostname,
            control_plane_url=control_plane_url,
        )
        assigned = transport.register(registration, token, timeout)
        return assigned, transport.advertise_url

    def unregister(
        self, connection_id: str, token: str | None = None, timeout: float = 2.0
    ) -> None:
        """Best effort, as in the original: a failure is logged at debug, never raised."""
        try:
            self._ready().unregister(connection_id, token, timeout)
        except DaemonError as exc:
            _log.debug("Unregister failed: %s", exc)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"


# -- the original's one-call helpers: a client per call, closed afterwards ----------


def check_daemon_health(
    daemon_url: str,
    timeout: float = 2.0,
    verify_ssl: bool = True,
    ca_bundle: str | None = None,
) -> bool:
    """True when a Detrix daemon answers at ``daemon_url``."""
    with HttpDaemonClient(daemon_url, verify_ssl=verify_ssl, ca_bundle=ca_bundle) as client:
        return client.health_check(timeout=timeout)


def register_connection(  # noqa: PLR0917 - the original's positional signature
    daemon_url: str,
    host: str,
    port: int,
    connection_id: str,
    token: str | None,
    timeout: float = 5.0,
    verify_ssl: bool = True,
    ca_bundle: str | None = None,
    control_plane_url: str | None = None,
) -> tuple[str, str | None]:
    """Register once; ``(connection_id, advertise_url)``; :class:`DaemonError` on failure."""
    with HttpDaemonClient(daemon_url, verify_ssl=verify_ssl, ca_bundle=ca_bundle) as client:
        return client.register(host, port, connection_id, token, timeout, control_plane_url)


def unregister_connection(  # noqa: PLR0917 - the original's positional signature
    daemon_url: str,
    connection_id: str,
    token: str | None,
    timeout: float = 2.0,
    verify_ssl: bool = True,
    ca_bundle: str | None = None,
) -> None:
    """Unregister once, best effort (never raises for the daemon's sake)."""
    with HttpDaemonClient(daemon_url, verify_ssl=verify_ssl, ca_bundle=ca_bundle) as client:
        client.unregister(connection_id, token, timeout)
