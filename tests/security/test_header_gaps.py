"""Issue 11's header gaps and the echoed password, tried as an attacker would.

* ``Host: [::1]evil.example`` and ``Host: 127.0.0.1%evil.example`` name a
  foreign site (DNS rebinding) but read as loopback to a parser that ignores
  what follows ``]`` or cuts at ``%``.
* Proxy headers beyond the common ones (``X-Originating-IP``, ``X-Remote-IP``,
  ``X-Remote-Addr``, ``X-Host``, ``X-Original-Host``, Envoy's
  ``X-Envoy-External-Address`` and other ``x-envoy-*``) mark a proxied request.
* A ``DETRIX_DAEMON_URL`` with a password is refused; the refusal must not
  print the password.

Each request runs against the naive server (fooled) and ours (not).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sechelpers import TOKEN, Target, raw_http
from support import clean_env

JSON = {"Content-Type": "application/json"}


def _wake(target: Target, **kwargs: object) -> tuple[int, bool]:
    before = target.wake_attempts()
    response = raw_http(target.address, "POST", "/detrix/wake", body="{}", **kwargs)  # type: ignore[arg-type]
    return response.status, target.wake_attempts() > before


@pytest.mark.parametrize(
    "host",
    [
        "[::1]evil.example",
        "[::1]evil.example:{port}",
        "[::1].evil.example",
        "127.0.0.1%evil.example",
        "127.0.0.1%25evil.example:{port}",
        "[::1%lo]:{port}",
        "localhost%00evil.example",
    ],
)
def test_a_host_that_only_starts_like_loopback_is_foreign(target, host):
    hosted = host.format(port=target.port)
    status = raw_http(target.address, "GET", "/detrix/status", host=hosted)
    code, woke = _wake(target, headers=JSON, host=hosted)
    target.verdict(status.status == 200 or woke, f"DNS rebinding (Host: {hosted})")
    if not target.naive:
        assert (status.status, code) == (401, 401)
        assert "Host" in status.error


PROXY_HEADERS = {
    "X-Originating-IP": "203.0.113.7",
    "X-Remote-IP": "203.0.113.7",
    "X-Remote-Addr": "203.0.113.7",
    "X-Host": "evil.example",
    "X-Original-Host": "evil.example",
    "X-Envoy-External-Address": "203.0.113.7",
    "X-Envoy-Original-Path": "/detrix/status",
}


@pytest.mark.parametrize("header", sorted(PROXY_HEADERS))
def test_more_proxy_headers_mark_a_proxied_request(target, header):
    headers = {header: PROXY_HEADERS[header]}
    status = raw_http(target.address, "GET", "/detrix/status", headers=headers).status
    code, woke = _wake(target, headers={**headers, **JSON})
    target.verdict(status == 200 or woke, f"a proxied request ({header})")
    if not target.naive:
        assert (status, code) == (401, 401)
        authed = {**headers, "Authorization": f"Bearer {TOKEN}"}
        assert raw_http(target.address, "GET", "/detrix/status", headers=authed).status == 200


def test_the_same_user_with_a_plain_loopback_host_stays_local(ours):
    for host in (f"127.0.0.1:{ours.port}", "localhost", f"[::1]:{ours.port}", "[::1]"):
        assert raw_http(ours.address, "GET", "/detrix/status", host=host).status == 200, host


SECRET = "hunter2-do-not-print"
URL_WITH_PASSWORD = f"http://admin:{SECRET}@127.0.0.1:8090"


def test_a_daemon_url_with_a_password_is_refused_without_echoing_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-c", "print('host ran')"],
        env=clean_env(home, DETRIX_ENABLE="1", DETRIX_DAEMON_URL=URL_WITH_PASSWORD),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout == "host ran\n"
    assert "DETRIX_DAEMON_URL" in proc.stderr and "no credentials" in proc.stderr
    assert SECRET not in proc.stderr
    assert "<credentials>@127.0.0.1:8090" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["status", URL_WITH_PASSWORD],
        ["wake", "http://127.0.0.1:9", "--daemon-url", URL_WITH_PASSWORD],
        ["doctor"],
    ],
)
def test_the_cli_never_echoes_a_password_either(tmp_path, argv):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-m", "detrix_auto", *argv],
        env=clean_env(home, DETRIX_DAEMON_URL=URL_WITH_PASSWORD),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 or argv == ["doctor"]
    assert SECRET not in proc.stdout + proc.stderr
    assert "<credentials>@" in proc.stdout + proc.stderr


def test_a_wake_body_naming_a_password_is_refused_without_echoing_it(ours):
    body = json.dumps({"daemon_url": URL_WITH_PASSWORD})
    response = raw_http(ours.address, "POST", "/detrix/wake", headers=JSON, body=body)
    assert response.status == 400
    assert SECRET not in response.raw_body.decode()
    assert ours.app is not None
    assert SECRET not in ours.app.stderr()
