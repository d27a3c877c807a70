"""After a sleep the host's code runs exactly the instructions it ran before the wake.

Counted, not timed: ``bench/instructions.py`` runs a real app (``DETRIX_ENABLE=1``,
real debugpy, the daemon double's real attach) under valgrind's callgrind, which
counts the instructions of a CPU-bound block in each phase of the same process.
The same code on the same interpreter counts the same whatever the machine's load,
so the bound here is tight: a trace function, a profiler or a ``sys.monitoring``
event left on the host's code costs a block far more than 0.01%.

What does move from one process to the next is the memory allocator's share
(``Objects/obmalloc.c``, a few per cent either way, following where debugpy's
modules, which stay loaded, left free memory: a process that only imports
debugpy moves as much, ``python bench/instructions.py`` shows it); it is
reported, not asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import debugpy_traces_by_settrace

pytestmark = pytest.mark.debugpy_contract

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "instructions.py"
#: How far the interpreter's own instructions (outside the allocator) may move:
#: 3.12+ re-specialise the few instructions that sys.monitoring touched, which
#: costs some hundreds of instructions once (measured: 10 ppm).
EXACT = 1e-4
#: The processes this test needs (the bench's third, debugpy loaded, only explains).
KINDS = "control,detrix-auto"


@pytest.fixture(scope="module")
def counted() -> dict[str, object]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        pytest.skip("valgrind is not installed here (Debian: apt install valgrind)")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--kinds", KINDS, "--python", sys.executable],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 and "keep the symbols" in done.stderr:
        pytest.skip(f"this interpreter is stripped: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_after_sleep_the_interpreter_runs_what_it_ran_before_the_wake(
    counted: dict[str, object],
) -> None:
    ratios = counted["detrix-auto"]["ratios"]  # type: ignore[index]
    after = ratios["after sleep"]["interpreter"]
    assert abs(after - 1) < EXACT, (
        f"after sleep the block ran {after:.6f}x the instructions it ran before the wake "
        f"(outside the allocator): something of the wake is left on the host's code; "
        f"all instructions {ratios['after sleep']['all']:.4f}x"
    )


@pytest.mark.skipif(
    not debugpy_traces_by_settrace(),
    reason="pydevd traces by sys.monitoring here, which gives code without a breakpoint "
    "no event: nothing for the count to see while awake",
)
def test_the_count_sees_a_tracer_where_debugpy_traces_by_settrace(
    counted: dict[str, object],
) -> None:
    """The instrument's own check: where being awake costs (settrace), it shows."""
    awake = counted["detrix-auto"]["ratios"]["awake"]["interpreter"]  # type: ignore[index]
    assert awake > 2, f"awake (debugpy's tracer on) counted only {awake:.3f}x"


def test_a_process_never_woken_counts_the_same_in_every_phase(
    counted: dict[str, object],
) -> None:
    """The control: the phases alone change nothing, allocator included."""
    for name, r in counted["control"]["ratios"].items():  # type: ignore[attr-defined]
        assert abs(r["interpreter"] - 1) < EXACT, (name, r)
        assert abs(r["all"] - 1) < EXACT, (name, r)
