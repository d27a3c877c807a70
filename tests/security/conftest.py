"""Fixtures of the security tests: apps under attack, the naive twin, another user."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sechelpers import TOKEN, FaultDaemon, NaiveServer, Target, start_app  # noqa: E402


@pytest.fixture(scope="module")
def honest_daemon() -> Iterator[FaultDaemon]:
    """The configured daemon of the app under attack: healthy, refuses registration."""
    with FaultDaemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def attacker_daemon() -> Iterator[FaultDaemon]:
    """A "daemon" the attacker controls, to catch redirected wakes and tokens."""
    with FaultDaemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def ours(
    tmp_path_factory: pytest.TempPathFactory,
    honest_daemon: FaultDaemon,
    attacker_daemon: FaultDaemon,
) -> Iterator[Target]:
    """detrix-auto in a real subprocess on 127.0.0.1, token configured, audit on."""
    app = start_app(
        tmp_path_factory.mktemp("ours"),
        allow=[honest_daemon.url, attacker_daemon.url],
        DETRIX_DAEMON_URL=honest_daemon.url,
        DETRIX_TOKEN=TOKEN,
        DETRIX_LOG_LEVEL="info",
        DETRIX_NAME="victim",
    )
    try:
        yield Target("ours", False, "127.0.0.1", app.port, honest_daemon, TOKEN, app=app)
    finally:
        app.stop()


@pytest.fixture(scope="module")
def naive() -> Iterator[Target]:
    with FaultDaemon() as daemon:
        server = NaiveServer(daemon.url, TOKEN)
        try:
            yield Target("naive", True, "127.0.0.1", server.port, daemon, TOKEN)
        finally:
            server.stop()


@pytest.fixture(params=["naive", "ours"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each attack runs twice: against the naive server (must be fooled) and ours (must not)."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
