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


def test_the_oldest_debugpy_ci_pins_is_the_lower_bound_the_metadata_admits():
    """tox -e debugpy-oldest must test exactly the oldest debugpy a user can get."""
    constraints = ROOT / ".ci" / "debugpy-oldest.txt"
    if not constraints.exists():
        pytest.skip("no .ci directory (an sdist?)")
    debugpy = [d for d in _dependencies() if re.match(r"debugpy\b", d)]
    assert len(debugpy) == 1, debugpy
    lower = re.search(r">=\s*([\w.]+)", debugpy[0])
    assert lower, f"{debugpy[0]!r} has no lower bound"
    pins = [
        line.strip()
        for line in constraints.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins == [f"debugpy=={lower.group(1)}"]


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
