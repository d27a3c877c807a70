"""Every route's answers against spec/devdaemon.openapi.yaml (issue 15: shapes checked).

One session drives every operation of the spec against a real app started with
``DETRIX_ENABLE=1``, through success and error paths. Each answer must have a
status the spec documents for that operation, and a body its schema accepts
(validated with jsonschema_rs, which schemathesis brings). At the end, every
operation of the spec must have been exercised.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from typing import Any

import pytest
from support import ROOT, TRADE_BOT, http_json, metric_body, schemathesis_depth, wait_until

from detrix_auto.devdaemon import DevDaemon

yaml = pytest.importorskip("yaml")
jsonschema_rs = pytest.importorskip("jsonschema_rs")

SPEC_PATH = ROOT / "spec" / "devdaemon.openapi.yaml"


class Checker:
    """Sends requests and checks each answer against the spec."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.spec = yaml.safe_load(SPEC_PATH.read_text())
        self.templates = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
            for path in self.spec["paths"]
        ]
        self.seen: set[tuple[str, str, int]] = set()

    def template(self, path: str) -> str:
        bare = path.split("?", 1)[0]
        # static segments win over parameters, as in the router (connections/cleanup)
        matches = [t for pattern, t in self.templates if pattern.match(bare)]
        assert matches, f"{bare} is not in the spec"
        return min(matches, key=lambda t: t.count("{"))

    def __call__(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        status, answer = http_json(
            self.url, method, path, body, headers={**self.headers, **(headers or {})}
        )
        template = self.template(path)
        operation = self.spec["paths"][template][method.lower()]
        documented = operation["responses"]
        assert str(status) in documented, f"{method} {path}: {status} is not documented"
        response = documented[str(status)]
        if "$ref" in response:
            response = self.spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        content = response.get("content")
        if content is None:
            assert answer is None, f"{method} {path}: {status} must have no body"
        else:
            schema = {
                **content["application/json"]["schema"],
                "components": self.spec["components"],
            }
            validator = jsonschema_rs.Draft202012Validator(schema)
            errors = [str(e) for e in validator.iter_errors(answer)]
            assert not errors, f"{method} {path} -> {status}: {errors}\n{json.dumps(answer)[:2000]}"
        self.seen.add((template, method.lower(), status))
        return status, answer


def test_every_answer_matches_the_schema(spawn: Any, debuggee: Any) -> None:
    bot = spawn(TRADE_BOT)
    token = "schema-test-token"
    with DevDaemon(token=token, attach_timeout=15) as daemon:
        api = Checker(daemon.url, token)
        assert api("GET", "/health")[0] == 200
        assert api("GET", "/status")[0] == 200
        assert api("GET", "/api/v1/status")[0] == 200
        assert api("GET", "/api/v1/connections")[1] == []

        code, woke = bot.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
        assert code == 200, woke
        cid = woke["connection_id"]
        assert api("GET", "/api/v1/connections?activeOnly=true")[0] == 200
        assert api("GET", "/api/v1/connections?activeOnly=maybe")[0] == 400
        assert api("GET", f"/api/v1/connections/{cid}")[0] == 200
        assert api("GET", f"/api/v1/connections/{'0' * 32}")[0] == 404

        # registrations by hand: bad ones, and a port where nothing listens
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free_port = probe.getsockname()[1]
        registration = {
            "host": "127.0.0.1",
            "port": free_port,
            "language": "python",
            "name": "by-hand",
            "workspaceRoot": "/tmp",
            "hostname": "h",
        }
        assert api("POST", "/api/v1/connections", {**registration, "port": 80})[0] == 400
        assert api("POST", "/api/v1/connections", {**registration, "port": "x"})[0] == 422
        assert api("POST", "/api/v1/connections", registration)[0] == 500  # refused
        assert api("POST", "/api/v1/connections/cleanup")[1] == {"deleted": 1}
        status, _ = api("POST", "/api/v1/connections", None, headers={"Content-Type": "text/plain"})
        assert status in (400, 415)

        # metrics
        body = metric_body(cid, "qty", "sleep", "quantity", "symbol", "price", "None", "flag")
        code, created = api("POST", "/api/v1/metrics", body)
        assert code == 201
        mid = created["metricId"]
        assert api("POST", "/api/v1/metrics", body)[0] == 200  # the same location
        assert api("POST", "/api/v1/metrics", metric_body(cid, "qty", "order", "symbol"))[0] == 409
        assert api("POST", "/api/v1/metrics", {**body, "connectionId": "nope"})[0] == 404
        assert api("POST", "/api/v1/metrics", {**body, "name": "1bad"})[0] == 400
        assert api("POST", "/api/v1/metrics", {**body, "enabled": "yes"})[0] == 422
        broken = metric_body(cid, "broken", "order", "missing_name")
        assert api("POST", "/api/v1/metrics", broken)[0] == 201

        def has_events() -> bool:
            events = api("GET", f"/api/v1/events?metricId={mid}&since=0")[1]
            errors = api("GET", "/api/v1/events?metricName=broken&since=0")[1]
            return len(events) >= 3 and len(errors) >= 1

        wait_until(has_events, timeout=20)
        assert api("GET", "/api/v1/events?limit=50")[0] == 200
        assert api("GET", "/api/v1/events?metricId=999")[0] == 404
        assert api("GET", "/api/v1/events?limit=x")[0] == 400
        assert api("GET", "/api/v1/metrics")[1]["total"] == 2
        assert api("GET", "/api/v1/metrics?enabled=true&limit=1&offset=1")[0] == 200
        assert api("GET", "/api/v1/metrics?offset=-2")[0] == 400
        assert api("GET", f"/api/v1/metrics/{mid}")[0] == 200
        assert api("GET", "/api/v1/metrics/abc")[0] == 400
        assert api("GET", "/api/v1/metrics/999")[0] == 404
        assert api("GET", f"/api/v1/metrics/{mid}/value")[0] == 200
        assert api("GET", "/api/v1/metrics/999/value")[0] == 404
        assert api("GET", f"/api/v1/metrics/{mid}/history?limit=2&offset=1")[0] == 200
        assert api("GET", f"/api/v1/metrics/{mid}/history?until=x")[0] == 400
        assert api("GET", "/api/v1/metrics/x/history")[0] == 400
        assert api("GET", "/api/v1/metrics/999/history")[0] == 404
        assert api("PUT", f"/api/v1/metrics/{mid}", {"group": "g", "enabled": True})[0] == 200
        assert api("PUT", f"/api/v1/metrics/{mid}", {"name": "broken"})[0] == 409
        assert api("PUT", f"/api/v1/metrics/{mid}", {"expressions": []})[0] == 400
        assert api("PUT", f"/api/v1/metrics/{mid}", {"enabled": 1})[0] == 422
        assert api("PUT", "/api/v1/metrics/999", {})[0] == 404
        assert api("PUT", "/api/v1/metrics/x", {})[0] == 400
        assert api("POST", f"/api/v1/metrics/{mid}/disable")[0] == 200
        assert api("POST", f"/api/v1/metrics/{mid}/enable")[0] == 200
        assert api("POST", "/api/v1/metrics/999/enable")[0] == 404
        assert api("POST", "/api/v1/metrics/999/disable")[0] == 404
        assert api("POST", "/api/v1/metrics/x/enable")[0] == 400
        assert api("POST", "/api/v1/metrics/x/disable")[0] == 400
        assert api("DELETE", f"/api/v1/metrics/{mid}")[0] == 204
        assert api("DELETE", f"/api/v1/metrics/{mid}")[0] == 404
        assert api("DELETE", "/api/v1/metrics/x")[0] == 400

        # refused callers: a wrong token is 401 on every route but health
        stranger = Checker(daemon.url, "wrong")
        stranger.seen = api.seen
        for template in api.spec["paths"]:
            if template == "/health":
                continue
            path = template.replace("{connectionId}", cid).replace("{metricId}", "1")
            for method in api.spec["paths"][template]:
                if method in ("get", "post", "put", "delete"):
                    assert stranger(method.upper(), path, {})[0] == 401, (method, path)

        assert bot.request("POST", "/detrix/sleep")[0] == 200
        # a plain debugpy listener registered by hand, as a script would
        code, again = api("POST", "/api/v1/connections", {**registration, "port": debuggee.port})
        assert code == 201, again
        assert api("DELETE", f"/api/v1/connections/{again['connectionId']}")[0] == 204
        assert api("DELETE", "/api/v1/connections/nope")[0] == 404

    operations = {
        (template, method)
        for template, item in api.spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete")
    }
    exercised = {(template, method) for template, method, status in api.seen if status < 400}
    assert operations - exercised == set(), "operations never answered with success"


#: schemathesis's own rejections of invalid data, and 413 (a body over the limit).
REJECTIONS = """\
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5XX",
]
"""


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(tmp_path: Any) -> None:
    """schemathesis, positive and negative data, every check but two:

    * ``positive_data_acceptance``: the schema cannot say that an expression's
      braces must balance, so it allows expressions the daemon refuses (400);
    * ``ignored_auth``: a caller of the daemon's own user needs no token, by
      design (``ownUser`` in the schema); other users are refused, which
      test_privacy.py shows as the other user.

    ``POST /api/v1/connections`` is left out: it makes the daemon attach to any
    port schemathesis invents, possibly another test's debuggee.

    A body over 64 KiB is refused with 413 (documented), whatever else is wrong
    with it: schemathesis's list of rejections lacks 413, so the configuration
    adds it (CI, 3.14: an invalid 370 KB body answered 413 counted as
    "accepted"). A fixed seed: every run tries the same cases.
    """
    import subprocess

    config = tmp_path / "schemathesis.toml"
    config.write_text(REJECTIONS)
    with DevDaemon(token="schemathesis-token") as daemon:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                str(SPEC_PATH),
                "--url",
                daemon.url,
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance,ignored_auth",
                "--exclude-operation-id",
                "createConnection",
                *schemathesis_depth(25),
                "--seed",
                "7",
                "-H",
                "Authorization: Bearer schemathesis-token",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
            check=False,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
