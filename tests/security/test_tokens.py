"""Tokens: the mandatory-token switch, exact constant-time comparison, the token
file's permissions, and the token never showing up where it should not."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sechelpers import (
    TOKEN,
    Fault,
    FaultDaemon,
    RunningApp,
    Target,
    build_request,
    exchange,
    parse_responses,
    raw_http,
    start_app,
)
from support import wait_until

import detrix_auto
from detrix_auto.token import TokenFileError, read_token_file

FILE_TOKEN = "f1le70ken0f9c2d4e6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f2a4b6c8d0e1"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def strict(tmp_path_factory, honest_daemon) -> Iterator[Target]:
    """DETRIX_REQUIRE_TOKEN=1, the token read from <DETRIX_HOME>/mcp-token (0600)."""
    workdir = tmp_path_factory.mktemp("strict")
    home = workdir / "home"
    home.mkdir(mode=0o700)
    token_file = home / "mcp-token"
    token_file.write_text(FILE_TOKEN + "\n")
    token_file.chmod(0o600)
    app = start_app(
        workdir,
        allow=[honest_daemon.url],
        DETRIX_DAEMON_URL=honest_daemon.url,
        DETRIX_REQUIRE_TOKEN="1",
        DETRIX_LOG_LEVEL="debug",
    )
    try:
        yield Target(
            "ours",
            False,
            "127.0.0.1",
            app.port,
            honest_daemon,
            FILE_TOKEN,
            app=app,
            extra={"token_file": token_file},
        )
    finally:
        app.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kind", ["naive", "strict"])
def test_require_token_makes_local_callers_need_the_token(request, kind):
    target: Target = request.getfixturevalue(kind)
    before = target.wake_attempts()
    status = raw_http(target.address, "GET", "/detrix/status")
    wake = raw_http(target.address, "POST", "/detrix/wake", headers=JSON, body="{}")
    target.verdict(
        status.status == 200 or target.wake_attempts() > before,
        "a token-less local caller when every caller must show the token",
    )
    if not target.naive:
        assert (status.status, wake.status) == (401, 401)
        assert "DETRIX_REQUIRE_TOKEN" in status.error
        assert raw_http(target.address, "GET", "/detrix/health").status == 200
        ok = raw_http(target.address, "GET", "/detrix/status", headers=_bearer(FILE_TOKEN))
        assert ok.status == 200 and ok.body["state"] == "sleeping"


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (f"Bearer {FILE_TOKEN}", True),
        (f"bearer {FILE_TOKEN}", True),  # the scheme is case-insensitive (RFC 9110)
        (f"Bearer   {FILE_TOKEN}  ", True),
        (f"Bearer {FILE_TOKEN[:-1]}", False),  # a prefix
        (f"Bearer {FILE_TOKEN[:1]}", False),
        (f"Bearer {FILE_TOKEN}0", False),  # an extension
        (f"Bearer {FILE_TOKEN.upper()}", False),
        (f"Bearer {FILE_TOKEN[:-1]}X", False),  # same length, last byte wrong
        (f"Bearer X{FILE_TOKEN[1:]}", False),  # same length, first byte wrong
        ("Bearer ", False),
        ("Bearer", False),
        (f"Basic {FILE_TOKEN}", False),
        (f"Token {FILE_TOKEN}", False),
        (f"Bearer {FILE_TOKEN} {FILE_TOKEN}", False),
        ("Bearer \u00e9\u00e9", False),  # not ASCII (sent as latin-1 bytes)
    ],
)
def test_only_the_exact_token_is_accepted(strict, authorization, accepted):
    response = raw_http(
        strict.address, "GET", "/detrix/status", headers={"Authorization": authorization}
    )
    assert response.status == (200 if accepted else 401), response.body
    if not accepted:
        assert FILE_TOKEN not in json.dumps(response.body)


def test_the_comparison_is_hmac_compare_digest(home, monkeypatch):
    """Behaviour alone cannot show constant time; show that the comparison is the one
    the standard library makes constant-time, and that it sees the whole values.

    ``auth`` takes it from ``_operator`` (what ``hmac`` falls back to, without
    loading OpenSSL into a sleeping process), so the spy sits there."""
    import _operator

    from detrix_auto.control import auth

    assert auth.compare_digest in (hmac.compare_digest, _operator._compare_digest)
    seen: list[tuple[bytes, bytes]] = []
    real = auth.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth, "compare_digest", spy)
    detrix_auto.init(
        detrix_home=str(home),
        name="ct",
        token=TOKEN,
        require_token=True,
        daemon_url="http://127.0.0.1:9",
        discovery=False,
    )
    try:
        port = detrix_auto.status()["control_port"]
        for presented, code in [(TOKEN, 200), (TOKEN[:5], 401), ("x" * len(TOKEN), 401)]:
            response = raw_http(
                ("127.0.0.1", port), "GET", "/detrix/status", headers=_bearer(presented)
            )
            assert response.status == code
    finally:
        detrix_auto.shutdown()
    assert seen == [
        (TOKEN.encode(), TOKEN.encode()),
        (TOKEN[:5].encode(), TOKEN.encode()),
        (b"x" * len(TOKEN), TOKEN.encode()),
    ]


# -- the token file ---------------------------------------------------------------


def _file_token_status(target: Target) -> int:
    return raw_http(target.address, "GET", "/detrix/status", headers=_bearer(FILE_TOKEN)).status


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused(strict, mode):
    token_file: Path = strict.extra["token_file"]
    app = strict.app
    assert app is not None
    try:
        token_file.chmod(mode)
        assert _file_token_status(strict) == 401
        hint = f"chmod 600 {token_file}"
        assert wait_until(lambda: hint in app.stderr(), timeout=5), app.stderr()
        assert f"mode {mode:04o}" in app.stderr()
    finally:
        token_file.chmod(0o600)
    assert _file_token_status(strict) == 200


def test_a_token_file_owned_by_someone_else_is_refused(strict):
    if not hasattr(os, "chown") or os.geteuid() != 0:
        pytest.skip("giving a file to another owner needs root")
    token_file: Path = strict.extra["token_file"]
    app = strict.app
    assert app is not None
    try:
        os.chown(token_file, 54321, 54321)
        assert _file_token_status(strict) == 401
        assert wait_until(lambda: "owned by uid 54321" in app.stderr(), timeout=5), app.stderr()
    finally:
        os.chown(token_file, os.geteuid(), os.getegid())
    assert _file_token_status(strict) == 200


def test_the_token_file_reader_refuses_with_an_actionable_message(tmp_path):
    path = tmp_path / "mcp-token"
    path.write_text(FILE_TOKEN)
    path.chmod(0o644)
    with pytest.raises(TokenFileError) as info:
        read_token_file(str(path))
    assert f"chmod 600 {path}" in str(info.value) and FILE_TOKEN not in str(info.value)
    path.chmod(0o600)
    assert read_token_file(str(path)) == FILE_TOKEN
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(TokenFileError):  # never follows a symlink planted in DETRIX_HOME
        read_token_file(str(link))
    if os.geteuid() == 0:
        os.chown(path, 54321, 54321)
        with pytest.raises(TokenFileError, match="owned by uid 54321"):
            read_token_file(str(path))


# -- the token never leaks ------------------------------------------------------------


@pytest.fixture(scope="module")
def echoing_daemon() -> Iterator[FaultDaemon]:
    """A daemon (or a proxy in front of it) that quotes our Authorization header back."""
    with FaultDaemon() as daemon:
        daemon.faults["register"] = Fault(
            status=500, body=json.dumps({"error": f"refused Bearer {TOKEN} for now"}).encode()
        )
        yield daemon


@pytest.fixture(scope="module")
def chatty(tmp_path_factory, echoing_daemon, attacker_daemon) -> Iterator[RunningApp]:
    app = start_app(
        tmp_path_factory.mktemp("chatty"),
        allow=[echoing_daemon.url, attacker_daemon.url],
        DETRIX_DAEMON_URL=echoing_daemon.url,
        DETRIX_TOKEN=TOKEN,
        DETRIX_LOG_LEVEL="debug",
    )
    try:
        yield app
    finally:
        app.stop()


def test_tokens_never_appear_in_answers_logs_or_records(
    chatty, strict, echoing_daemon, attacker_daemon
):
    answers: list[bytes] = []
    for app, token in ((chatty, TOKEN), (strict.app, FILE_TOKEN)):
        assert app is not None
        address = ("127.0.0.1", app.port)
        port = app.port
        requests = [
            ("GET", "/detrix/status", {}, None),
            ("GET", "/detrix/status", _bearer(token), None),
            ("GET", "/detrix/info", _bearer(token), None),
            ("GET", "/detrix/status", _bearer(token[:-3]), None),
            ("GET", "/detrix/status", {"Origin": "http://x", **_bearer("nope")}, None),
            ("POST", "/detrix/wake", {**JSON, **_bearer(token)}, "{}"),
            (
                "POST",
                "/detrix/wake",
                {**JSON, **_bearer(token), "Via": "1.1 p"},
                json.dumps({"daemon_url": attacker_daemon.url}),
            ),
            ("POST", "/detrix/wake", JSON, json.dumps({"daemon_url": "ftp://nowhere"})),
            ("POST", "/detrix/sleep", _bearer(token), None),
            ("GET", "/detrix/status", _bearer(token), None),
            ("HEAD", "/detrix/status", _bearer(token), None),
        ]
        for method, path, headers, body in requests:
            data = build_request(method, path, host=f"127.0.0.1:{port}", headers=headers, body=body)
            reply = exchange(address, data)
            parse_responses(reply, head_requests=1 if method == "HEAD" else 0)
            answers.append(reply)
        assert wait_until(lambda app=app: "wake peer=" in app.stderr(), timeout=5)
    # The echoing daemon did quote the token to us: the wake's error and status show it scrubbed.
    assert any(b"refused Bearer <token>" in a for a in answers)
    for reply in answers:
        assert TOKEN.encode() not in reply and FILE_TOKEN.encode() not in reply, reply
    for app in (chatty, strict.app):
        assert app is not None
        logs = app.stderr()
        assert "audit" in logs
        assert TOKEN not in logs and FILE_TOKEN not in logs, logs
        record = app.record_path.read_text()
        assert json.loads(record)["pid"] == app.pid
        assert TOKEN not in record and FILE_TOKEN not in record
        assert app.proc.stdout is not None
        fd = app.proc.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            stdout_rest = os.read(fd, 65536)
        except BlockingIOError:
            stdout_rest = b""
        assert stdout_rest == b"", "nothing on stdout but the test app's own 'ready'"
