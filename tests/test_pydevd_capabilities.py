"""Each private-debugpy capability has a fallback, and the probe tells the truth.

For every capability ``_pydevd`` probes, an app runs as if this debugpy lacked it
(the probe's answer is replaced before the first wake): the wake must still bring
logpoint values (or, for ``gate``, be refused with the reason and open nothing),
sleep must work, and the process must exit by itself. Real subprocess, real debugpy,
the embedded daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from support import SAMPLE_APP, SAMPLE_LINE

from detrix_auto import _pydevd
from detrix_auto.devdaemon import MetricSpec

pytestmark = pytest.mark.debugpy_contract

#: Prepended to the sample app: this debugpy "lacks" the capability named in argv[2].
WITHOUT = textwrap.dedent(
    """\
    import sys
    import detrix_auto._pydevd as _p
    _real_probe = _p._probe
    def _probe_without():
        caps = _real_probe()
        caps.missing[sys.argv[2]] = "removed by the test"
        return caps
    _p._probe = _probe_without
    """
)


def test_the_probe_finds_everything_in_the_installed_debugpy():
    """On every debugpy this release supports, nothing is missing."""
    code = (
        "import json, detrix_auto._pydevd as p; p.import_debugpy(); "
        "print(json.dumps(p.capabilities().as_dict()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    caps = json.loads(out.strip().splitlines()[-1])
    assert caps["missing"] == {}, caps
    expected = "sys.monitoring" if sys.version_info >= (3, 12) else "settrace"
    import debugpy

    if sys.version_info >= (3, 12) and tuple(map(int, debugpy.__version__.split(".")[:3])) < (
        1,
        8,
        6,
    ):
        expected = "settrace"  # debugpy learned sys.monitoring in 1.8.6
    assert caps["tracing"] == expected


def test_the_probe_without_pydevd_says_so_and_never_raises():
    caps = _pydevd.Capabilities("x", "unknown", {"gate": "why"})
    assert not caps.has("gate") and caps.has("session")
    assert caps.as_dict() == {"debugpy": "x", "tracing": "unknown", "missing": {"gate": "why"}}


def _app(spawn, name: str):
    source = WITHOUT + SAMPLE_APP
    app = spawn(source, "60", name, name="app.py")
    return app


@pytest.mark.parametrize("name", [n for n in _pydevd.CAPABILITY_NAMES if n != "gate"])
def test_without_a_capability_a_wake_still_works(spawn, daemon, name):
    app = _app(spawn, name)
    line = SAMPLE_LINE + WITHOUT.count("\n")
    daemon.add_metric(
        MetricSpec(name="value", path=str(app.script), line=line, expressions=("value",))
    )
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body
    daemon.wait_for_hits("value", count=2, timeout=20)
    assert app.request("POST", "/detrix/sleep") == (200, {"status": "sleeping"})
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 200, body
    seen = len(daemon.hits("value"))
    daemon.wait_for_hits("value", count=seen + 1, timeout=20)
    assert app.request("POST", "/detrix/sleep")[0] == 200
    app.proc.terminate()
    out, err = app.proc.communicate(timeout=20)
    assert "Traceback" not in err, err


def test_without_the_gate_a_wake_is_refused_and_nothing_listens(spawn, daemon):
    app = _app(spawn, "gate")
    code, body = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url})
    assert code == 500, body
    assert "removed by the test" in body["error"] and "supported" in body["error"], body
    status = app.status()
    assert status["state"] == "sleeping" and status["debug_port"] == 0, status
    assert not status["debug_port_active"]
    assert daemon.registrations == 0
