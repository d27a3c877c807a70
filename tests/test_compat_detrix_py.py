"""Code written for detrix-py 1.2.0 runs unchanged: its API, errors and daemon client.

Each program here is written the way the original's README and examples are
(``import detrix_auto as detrix``), run as a real subprocess, and must end
with exit status 0 where it did with the original. The differences that
remain on purpose are in README.md, "Differences from detrix-py".
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from doubles import Fault, FaultDaemon
from support import clean_env, wait_for_record

import detrix_auto
from detrix_auto import ConfigError, DaemonError


def run_program(tmp_path: Path, home: Path, source: str, **env: str) -> dict:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_originals_basic_usage_runs_to_the_end_without_a_daemon(tmp_path, home):
    # Like the original's examples/basic_usage.py: only wake() is guarded, with
    # DaemonError. A malformed URL, an unreachable daemon and calls before
    # init() must all end there, not crash the program.
    out = run_program(
        tmp_path,
        home,
        """
        import json
        import detrix_auto as detrix

        seen = {"before": [detrix.status()["state"], detrix.sleep()["status"]]}
        try:
            detrix.wake()
        except detrix.DaemonError as e:
            seen["wake_before_init"] = str(e)
        for url in ("not-a-valid-url", "ftp://127.0.0.1:8090", "http://127.0.0.1:9"):
            detrix.init(name="example-service", daemon_url=url)
            seen.setdefault("state", []).append(detrix.status()["state"])
            try:
                detrix.wake()
            except detrix.DaemonError as e:
                seen.setdefault("errors", []).append(str(e))
            seen.setdefault("after", []).append(detrix.status()["state"])
            detrix.sleep()
            detrix.shutdown()
        detrix.init(name="")
        try:
            detrix.init(name="again")
        except detrix.ConfigError as e:
            seen["second_init"] = str(e)
        seen["name"] = detrix.status()["name"]
        detrix.shutdown()
        print(json.dumps(seen))
        """,
    )
    assert out["before"] == ["sleeping", "already_sleeping"]
    assert "init()" in out["wake_before_init"]
    assert out["state"] == out["after"] == ["sleeping"] * 3
    bad_format, bad_scheme, refused = out["errors"]
    assert bad_format.startswith("Invalid daemon_url format: 'not-a-valid-url'")
    assert bad_scheme.startswith("Invalid daemon_url scheme 'ftp'")
    assert refused.startswith("Cannot connect to daemon at http://127.0.0.1:9")
    assert "already initialized" in out["second_init"]
    assert out["name"].startswith("program-")  # init(name="") is the default name


def test_a_programs_init_replaces_the_client_the_hook_started(tmp_path, home):
    # With DETRIX_ENABLE=1 the hook starts a client before the program runs; a
    # program written for the original calls init() itself and must not crash:
    # its settings win. A second init() is refused as in the original.
    out = run_program(
        tmp_path,
        home,
        """
        import json, os
        import detrix_auto as detrix

        before = detrix.status()
        detrix.init(name="mine", daemon_url="http://127.0.0.1:9")
        after = detrix.status()
        try:
            detrix.init(name="third")
            second = None
        except detrix.ConfigError as e:
            second = str(e)
        print(json.dumps({"before": before, "after": after, "second": second,
                          "pid": os.getpid()}))
        """,
        DETRIX_ENABLE="1",
    )
    assert out["before"]["name"] == f"program-{out['pid']}"
    assert out["before"]["control_port"] > 0
    assert out["after"]["name"] == f"mine-{out['pid']}"
    assert out["after"]["daemon_url"] == "http://127.0.0.1:9"
    assert out["after"]["control_port"] > 0
    assert out["second"] and "already initialized" in out["second"]


def test_a_program_calling_init_under_the_hook_keeps_running_and_serving(tmp_path, home):
    script = tmp_path / "served.py"
    script.write_text(
        "import time, detrix_auto as detrix\n"
        "detrix.init(name='served')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=clean_env(home, DETRIX_ENABLE="1"),
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        record = wait_for_record(home, proc.pid, proc)
        assert record["name"] == f"served-{proc.pid}"
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "detrix-auto" not in err


def test_daemon_clients_are_exported_and_loaded_only_when_used(tmp_path, home):
    out = run_program(
        tmp_path,
        home,
        """
        import json, sys
        import detrix_auto
        early = [m for m in ("urllib3", "detrix_auto.daemon_compat") if m in sys.modules]
        client = detrix_auto.HttpDaemonClient("http://127.0.0.1:9")
        from detrix_auto import *  # noqa: F403 - what a star import brings
        print(json.dumps({
            "early": early,
            "late": "detrix_auto.daemon_compat" in sys.modules,
            "isinstance": isinstance(client, detrix_auto.DaemonClient),
            "star": "HttpDaemonClient" in dir() and "DaemonClient" in dir(),
        }))
        """,
    )
    assert out == {"early": [], "late": True, "isinstance": True, "star": True}


# -- the original's HttpDaemonClient, against a daemon double ------------------------


@pytest.fixture
def double():
    with FaultDaemon() as daemon:
        yield daemon


def test_http_daemon_client_has_the_originals_interface(double):
    double.faults["register"] = Fault(
        status=201,
        body=json.dumps(
            {"connectionId": "c0ffee", "advertiseUrl": "http://d.example:8095"}
        ).encode(),
    )
    with detrix_auto.HttpDaemonClient(base_url=double.url + "/") as client:
        assert client.base_url == double.url
        assert client.health_check() is True
        assert client.fetch_advertise_url() is None  # this health answer carries none
        assert client.register("10.0.0.7", 5678, "svc", token="t0k") == (
            "c0ffee",
            "http://d.example:8095",
        )
        client.unregister("c0ffee", token="t0k")  # the double answers 500: still no error
    kind, _, headers, body = next(c for c in double.calls if c[0] == "register")
    sent = json.loads(body)
    assert (sent["host"], sent["port"], sent["name"]) == ("10.0.0.7", 5678, "svc")
    assert headers["Authorization"] == "Bearer t0k" and "t0k" not in body.decode()


def test_http_daemon_client_failures_are_the_originals_outcomes(tmp_path):
    with pytest.raises(ConfigError, match="CA bundle not found"):
        detrix_auto.HttpDaemonClient("https://127.0.0.1:8090", ca_bundle=str(tmp_path / "no.pem"))
    down = detrix_auto.HttpDaemonClient("http://127.0.0.1:9")
    assert down.health_check(timeout=1) is False
    assert down.fetch_advertise_url(timeout=1) is None
    with pytest.raises(DaemonError, match="Cannot connect to daemon at http://127.0.0.1:9"):
        down.register("127.0.0.1", 5678, "svc", timeout=1)
    down.unregister("svc", timeout=1)  # best effort
    malformed = detrix_auto.HttpDaemonClient("not-a-valid-url")
    assert malformed.health_check() is False
    with pytest.raises(DaemonError, match="Invalid daemon_url format"):
        malformed.register("127.0.0.1", 5678, "svc")


# -- advertise host, discover and the wake's daemon_url (1.2.0's container features) --

ADVERTISED = "http://detrix.example:8095"


class AdvertisingDaemon(FaultDaemon):
    """The daemon double, plus the ``advertiseUrl`` a daemon behind another name sends."""

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, bytes, str]:
        status, data, ctype = super()._forward(method, path, headers, body)
        if status in (200, 201) and data:
            answer = json.loads(data)
            if isinstance(answer, dict) and ("service" in answer or "connectionId" in answer):
                answer["advertiseUrl"] = ADVERTISED
                data = json.dumps(answer).encode()
        return status, data, ctype


def test_the_advertised_host_reaches_registration_status_and_discover(spawn, daemon):
    with AdvertisingDaemon(backend=daemon) as double:
        app = spawn(env={"DETRIX_HOST": "app.internal", "DETRIX_DAEMON_URL": double.url})
        port = app.record["control_port"]
        code, found = app.request("GET", "/detrix/discover")
        assert code == 200
        assert found == {
            "daemon_url": double.url,  # nothing advertised yet: the configured URL
            "name": app.record["name"],
            "control_plane_url": f"http://app.internal:{port}",
        }
        code, woke = app.request("POST", "/detrix/wake")
        assert code == 200, woke
        assert woke["status"] == "awake" and woke["daemon_url"] == ADVERTISED
        registration = json.loads(next(c[3] for c in double.calls if c[0] == "register"))
        assert registration["host"] == "app.internal"
        assert registration["controlPlaneUrl"] == f"http://app.internal:{port}"
        status = app.status()
        assert status["advertise_host"] == "app.internal" and status["state"] == "awake"
        code, found = app.request("GET", "/detrix/discover")
        assert found["daemon_url"] == ADVERTISED
        code, again = app.request("POST", "/detrix/wake")
        assert again["status"] == "already_awake" and again["daemon_url"] == ADVERTISED
        assert app.request("POST", "/detrix/sleep")[0] == 200


def test_discover_without_an_advertised_host_and_its_authorisation(spawn):
    app = spawn(env={"DETRIX_DAEMON_URL": "http://127.0.0.1:9"})
    code, found = app.request("GET", "/detrix/discover")
    assert code == 200
    assert found == {
        "daemon_url": "http://127.0.0.1:9",
        "name": app.record["name"],
        "control_plane_url": f"http://127.0.0.1:{app.record['control_port']}",
    }
    # guarded like status (detrix-py 1.2.0 answered anyone): a proxied caller needs the token
    code, body = app.request("GET", "/detrix/discover", headers={"X-Forwarded-For": "203.0.113.9"})
    assert code == 401 and "token" in body["error"]
    # a wildcard bind names no host anyone can reach: no control_plane_url then
    wide = spawn(env={"DETRIX_CONTROL_HOST": "0.0.0.0", "DETRIX_DAEMON_URL": "http://127.0.0.1:9"})
    code, found = wide.request("GET", "/detrix/discover")
    assert code == 200 and "control_plane_url" not in found
