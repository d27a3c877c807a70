"""CI's own configuration agrees with the package metadata it tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dependencies() -> list[str]:
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml next to the tests (an installed copy?)")
    text = pyproject.read_text(encoding="utf-8")
    found = re.search(r"^dependencies = \[(.*?)\]", text, flags=re.M | re.S)
    assert found, "pyproject.toml has no dependencies list"
    return re.findall(r'"([^"]+)"', found.group(1))


def _python_of_tox_env(name: str) -> str:
    text = (ROOT / "tox.ini").read_text(encoding="utf-8")
    section = text.split(f"[testenv:{name}]", 1)[1].split("\n[", 1)[0]
    found = re.search(r"^base_python\s*=\s*python(3\.\d+)", section, flags=re.M)
    assert found, f"tox env {name} names no base_python"
    return found.group(1)


@pytest.mark.parametrize("env", ["debugpy-oldest", "debugpy-oldest-313"])
def test_the_oldest_debugpy_ci_pins_is_the_lower_bound_the_metadata_admits(env):
    """Each debugpy-oldest env tests exactly the oldest debugpy a user of its Python gets."""
    from packaging.requirements import Requirement

    constraints = ROOT / ".ci" / "debugpy-oldest.txt"
    if not constraints.exists():
        pytest.skip("no .ci directory (an sdist?)")
    python = _python_of_tox_env(env)
    debugpy = [
        Requirement(d)
        for d in _dependencies()
        if re.match(r"debugpy\b", d)
        and (
            Requirement(d).marker is None
            or Requirement(d).marker.evaluate({"python_version": python})
        )
    ]
    assert len(debugpy) == 1, debugpy
    lower = [spec.version for spec in debugpy[0].specifier if spec.operator == ">="]
    assert lower, f"{debugpy[0]} has no lower bound"
    pins = [
        line.strip()
        for line in constraints.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins == [f"debugpy=={lower[0]}"]


def test_every_python_ci_runs_is_a_declared_classifier():
    ci_run = ROOT / ".ci" / "run"
    if not ci_run.exists():
        pytest.skip("no .ci directory (an sdist?)")
    text = "\n".join(_dependencies()) + (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    declared = set(re.findall(r"Programming Language :: Python :: (3\.\d+)", text))
    run = ci_run.read_text(encoding="utf-8")
    default = re.search(r"^PYTHONS=\$\{CI_PYTHONS:-([\d. ]+)\}", run, flags=re.M)
    assert default, "the default Python list moved in .ci/run"
    assert set(default.group(1).split()) == declared


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.a" name="test_ok"/>
<testcase classname="tests.a" name="test_ok2"/>
<testcase classname="tests.a" name="test_skip"><skipped message="no gunicorn"/></testcase>
{extra}</testsuite></testsuites>"""


def _summary(results: Path, *envs: str) -> tuple[int, str]:
    import subprocess
    import sys

    script = ROOT / ".ci" / "summary.py"
    if not script.exists():
        pytest.skip("no .ci directory (an sdist?)")
    done = subprocess.run(
        [sys.executable, str(script), str(results), *envs],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout


def test_the_ci_summary_counts_every_env_and_lists_skips_with_their_reason(tmp_path):
    (tmp_path / "junit-py311.xml").write_text(JUNIT.format(extra=""))
    (tmp_path / "junit-py315.xml").write_text(JUNIT.format(extra=""))
    code, out = _summary(tmp_path, "py311", "py315")
    assert code == 0, out
    assert "[py315] tests.a::test_skip: no gunicorn" in out
    assert out.splitlines()[-1] == "total: 4 passed, 0 failed, 2 skipped"


def test_the_ci_summary_fails_on_a_failure_or_a_run_without_results(tmp_path):
    failing = '<testcase classname="tests.a" name="test_bad"><failure message="x"/></testcase>'
    (tmp_path / "junit-py311.xml").write_text(JUNIT.format(extra=failing))
    code, out = _summary(tmp_path, "py311")
    assert code == 1 and out.splitlines()[-1] == "total: 2 passed, 1 failed, 1 skipped"
    (tmp_path / "junit-py311.xml").write_text(JUNIT.format(extra=""))
    code, out = _summary(tmp_path, "py311", "py314")  # py314 broke before pytest finished
    assert code == 1 and "py314" in out and "no test results" in out
    assert out.splitlines()[-1] == "total: 2 passed, 1 failed, 1 skipped"


def test_the_ci_summary_says_why_each_test_failed(tmp_path):
    """The end of a CI log is often all one sees of it: each failure's ``E`` lines are there."""
    failing = (
        '<testcase classname="tests.a" name="test_bad"><failure message="long">'
        "    def test_bad():\n&gt;       assert 1 == 2\nE       assert 1 == 2\nE         +1\n"
        "\ntests/a.py:3: AssertionError</failure></testcase>"
        '<testcase classname="tests.a" name="test_fixture"><error message="teardown broke"/>'
        "</testcase>"
    )
    (tmp_path / "junit-py311.xml").write_text(JUNIT.format(extra=failing))
    code, out = _summary(tmp_path, "py311")
    assert code == 1
    why = out.split("failed, and why:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert why == [
        "  [py311] tests.a::test_bad (failure):",
        "      assert 1 == 2",
        "      +1",
        "  [py311] tests.a::test_fixture (error):",
        "      teardown broke",
    ]
