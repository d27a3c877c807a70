"""After a sleep the host's code runs exactly the instructions it ran before the wake.

Counted, not timed: ``bench/instructions.py`` runs a real app (``DETRIX_ENABLE=1``,
real debugpy, the daemon double's real attach and a logpoint on the block's own
line) under valgrind's callgrind, which counts the instructions of a CPU-bound
block in each phase of the same process.
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

#: Under valgrind a traced phase runs some 50x slower than natively: 30-70 s on an
#: idle machine, several times that beside a whole CI run (the default 180 s was hit
#: once on 3.10, with a second valgrind run beside it).
pytestmark = [pytest.mark.debugpy_contract, pytest.mark.timeout(900)]

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "instructions.py"
#: How far the interpreter's own instructions (outside the allocator) may move:
#: 3.12+ re-specialise the few instructions that sys.monitoring touched, which
#: costs some hundreds of instructions once (measured: 10 ppm).
EXACT = 1e-4
#: The processes this test needs (the bench's others only explain). On 3.12, CPython's
#: instrumentation splits the superinstructions (LOAD_FAST__LOAD_FAST...) of every
#: function that runs while any sys.monitoring tool has a global event on, and never
#: fuses them again: pydevd has PY_START on while a logpoint exists, so the block
#: runs some 3% more instructions for good. "monitored once" is that alone (a
#: tool of our own, on for one block, without debugpy): the reference there.
CPYTHON_KEEPS_INSTRUMENTATION = sys.version_info[:2] == (3, 12)
KINDS = "control,detrix-auto" + (",monitored once" if CPYTHON_KEEPS_INSTRUMENTATION else "")


@pytest.fixture(scope="module")
def counted() -> dict[str, object]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        pytest.skip("valgrind is not installed here (Debian: apt install valgrind)")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--kinds", KINDS, "--python", sys.executable],
        capture_output=True,
        text=True,
        timeout=840,
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
    expected = 1.0
    if CPYTHON_KEEPS_INSTRUMENTATION:
        expected = counted["monitored once"]["ratios"]["after sleep"]["interpreter"]  # type: ignore[index]
        assert expected > 1.01, f"3.12 kept no split superinstruction: {expected:.5f}x"
    assert abs(after - expected) < EXACT, (
        f"after sleep the block ran {after:.6f}x the instructions it ran before the wake "
        f"(outside the allocator; {expected:.6f}x expected): something of the wake is left "
        f"on the host's code; all instructions {ratios['after sleep']['all']:.4f}x"
    )


def test_the_count_sees_debugpy_while_it_looks(counted: dict[str, object]) -> None:
    """The instrument's own check: what being awake costs shows in the count.

    With ``sys.settrace`` (before 3.12, or an old debugpy) every line costs; with
    ``sys.monitoring`` only code with a breakpoint does, here the block's own line.
    """
    ratios = counted["detrix-auto"]["ratios"]  # type: ignore[index]
    if debugpy_traces_by_settrace():
        awake = ratios["awake"]["interpreter"]
        assert awake > 2, f"awake (debugpy's tracer on) counted only {awake:.3f}x"
    else:
        with_logpoint = ratios["awake, logpoint"]["interpreter"]
        assert with_logpoint > 1.003, f"a logpoint on the block counted {with_logpoint:.5f}x"


def test_a_process_never_woken_counts_the_same_in_every_phase(
    counted: dict[str, object],
) -> None:
    """The control: the phases alone change nothing, allocator included."""
    for name, r in counted["control"]["ratios"].items():  # type: ignore[attr-defined]
        assert abs(r["interpreter"] - 1) < EXACT, (name, r)
        assert abs(r["all"] - 1) < EXACT, (name, r)
