"""The application: untouched. detrix-auto observes it from the outside."""

import time

total = 0
for n in range(1, 10_000_000):
    total += n
    time.sleep(0.5)
