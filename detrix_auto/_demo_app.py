"""The sample application of ``detrix-auto demo``.

An ordinary program that knows nothing about detrix-auto: it reads a pretend
sensor in a loop. The demo starts it as a separate process with
``DETRIX_ENABLE=1`` and watches ``tick`` and ``temperature`` on the marked
line, without changing this file or restarting the program.

It ends by itself after the number of seconds given as its argument, and as
soon as the process that started it is gone, so a demo that is killed
outright leaves nothing running.
"""

from __future__ import annotations

import math
import os
import sys
import time


def read_sensor(tick: int) -> float:
    """A temperature that drifts smoothly up and down."""
    return round(21.0 + 3.5 * math.sin(tick / 3.0), 1)


def main() -> int:
    lifetime = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
    parent = os.getppid()
    deadline = time.monotonic() + lifetime
    tick = 0
    warmest = -273.15
    while time.monotonic() < deadline and os.getppid() == parent:
        tick += 1
        temperature = read_sensor(tick)
        warmest = max(warmest, temperature)
        time.sleep(0.25)  # <- detrix-auto demo observes this line
    return 0


if __name__ == "__main__":
    sys.exit(main())
