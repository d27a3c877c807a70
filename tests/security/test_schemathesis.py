"""schemathesis against spec/client-control-plane.openapi.yaml and a live app.

The app is a real subprocess (``DETRIX_ENABLE=1``) whose daemon is a double
that is healthy but refuses registration, so a wake answers the documented
503 quickly (after debugpy started listening in the app). The app's guard
(see ``sechelpers.APP_SOURCE``) keeps every ``daemon_url`` schemathesis
invents (such as the schema's own example, http://192.168.1.100:8090) from
ever being connected to: those wakes fail as an unreachable daemon, 503.

Two runs, every check enabled unless said otherwise:

1. A same-user local caller, no credentials, positive data, against the
   schema as it is. ``ignored_auth`` is left out of this run only: the
   schema's own ``localhostAuth`` scheme says a local caller needs no
   credentials, so "succeeds without credentials" is the contract here.
2. A caller that is not local (it comes through a proxy, ``X-Forwarded-For``)
   and presents the bearer token: positive and negative data, ``ignored_auth``
   included (every operation but health must refuse it without the token).
   The schema documents no 4xx but 401 for ``wake``, yet a malformed body
   must be refused with a 4xx (``negative_data_rejection``); we answer 400
   (``{"error": ...}``), so this run documents that 400 in a copy of the
   schema. That is the one amendment, and it belongs in the shared spec.

Both runs allow 5xx only where the schema documents them: 500 and 503 of wake.
``discover`` and ``files/read`` (carried into the spec from detrix-py 1.2.0)
are covered by both runs like every other operation; ``files/read`` is given
existing paths too (``CONFIG``), so its 200 and 403 answers are reached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sechelpers import ROOT, TOKEN, FaultDaemon, RunningApp, start_app
from support import schemathesis_depth

yaml = pytest.importorskip("yaml")
pytest.importorskip("schemathesis")

SPEC = ROOT / "spec" / "client-control-plane.openapi.yaml"
#: ``files/read`` gets paths that exist in the app's working directory (its
#: script, and its home with the discovery record) as well as generated ones,
#: so that the runs reach the served (200) and refused (403) answers, not only 404.
CONFIG = """\
[dictionaries.files]
values = ["app.py", "./app.py", "home/clients", "home", "..", "/etc/hostname", "stderr.txt"]

[[operations]]
include-path = "/detrix/wake"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500", "503"]

[[operations]]
include-path = "/detrix/files/read"
parameters = { "body.path" = { dictionary = "files", probability = 0.5 } }
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[tuple[RunningApp, FaultDaemon]]:
    with FaultDaemon() as daemon:
        running = start_app(
            tmp_path_factory.mktemp("schemathesis"),
            allow=[daemon.url],
            DETRIX_DAEMON_URL=daemon.url,
            DETRIX_TOKEN=TOKEN,
        )
        try:
            yield running, daemon
        finally:
            running.stop()


def run_schemathesis(workdir: Path, spec: Path, url: str, *args: str) -> None:
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        str(spec),
        "--url",
        url,
        "--checks",
        "all",
        *schemathesis_depth(40),
        "--seed",
        "7",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        *args,
    ]
    proc = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=300, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    # Every generated case passed. (A warning such as "missing test data" is not a
    # failure; schemathesis releases differ in how well they reach files/read.)
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts and counts.group(1) == counts.group(2), output[-6000:]
    assert "No issues found" in output or "Missing test data" in output, output[-6000:]


def test_local_caller_positive_data_against_the_schema_as_is(app, tmp_path):
    running, _ = app
    run_schemathesis(
        tmp_path,
        SPEC,
        f"http://127.0.0.1:{running.port}",
        "--mode",
        "positive",
        "--exclude-checks",
        "ignored_auth",
    )


def test_token_caller_all_data_and_auth_enforcement(app, tmp_path):
    running, _ = app
    schema = yaml.safe_load(SPEC.read_text())
    responses = schema["paths"]["/detrix/wake"]["post"]["responses"]
    assert "400" not in responses, "the spec documents 400 now: drop this amendment"
    responses["400"] = {
        "description": "Malformed request body",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    amended = tmp_path / "spec-with-400.json"
    amended.write_text(json.dumps(schema))
    run_schemathesis(
        tmp_path,
        amended,
        f"http://127.0.0.1:{running.port}",
        "--mode",
        "all",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--header",
        "X-Forwarded-For: 203.0.113.7",
    )
