"""Sum up the JUnit files of one ``.ci/run``: one row per environment, every skip with
its reason, every failure with the lines that say why (the end of a long CI log is
often all one gets to see of it), and a closing ``N passed, N failed, N skipped`` line.

Usage: ``python .ci/summary.py RESULTS_DIR ENV...``. An environment named on the
command line whose file is missing counts as failed (its run broke before pytest
finished). Exit status 1 when anything failed or errored, or when no test ran.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

#: At most this many of a failure's ``E`` lines (its assertion and what it compared).
WHY_LINES = 12


def why(element: ET.Element) -> list[str]:
    """The lines of a failure that say why: pytest's ``E`` lines, else its message."""
    lines = [
        line[1:].strip() for line in (element.text or "").splitlines() if line.startswith("E ")
    ]
    lines = [line for line in lines if line]
    if not lines:
        lines = [(element.get("message") or "").strip()]
    if len(lines) > WHY_LINES:
        lines = [*lines[: WHY_LINES - 1], f"... ({len(lines) - WHY_LINES + 1} more)"]
    return [line[:300] for line in lines]


def read(path: Path) -> tuple[Counter[str], list[str], list[str]]:
    counts: Counter[str] = Counter()
    skips: list[str] = []
    failures: list[str] = []
    root = ET.parse(path).getroot()  # noqa: S314 - pytest wrote it in this very run
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error"):
            for element in case.findall(kind):
                failures.append(f"{name} ({kind}):")
                failures += [f"    {line}" for line in why(element)]
        if case.find("failure") is not None:
            counts["failed"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif (skipped := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reason = (skipped.get("message") or "").strip()
            skips.append(f"{name}: {reason}")
        else:
            counts["passed"] += 1
    return counts, skips, failures


def main(argv: list[str]) -> int:
    results, envs = Path(argv[0]), argv[1:]
    total: Counter[str] = Counter()
    broken: list[str] = []
    rows: list[tuple[str, Counter[str]]] = []
    all_skips: list[str] = []
    all_failures: list[str] = []
    for env in envs:
        path = results / f"junit-{env}.xml"
        if not path.is_file():
            broken.append(env)
            continue
        try:
            counts, skips, failures = read(path)
        except ET.ParseError:
            broken.append(env)
            continue
        rows.append((env, counts))
        total.update(counts)
        all_skips += [f"[{env}] {s}" for s in skips]
        all_failures += [f"[{env}] {f}" if not f.startswith(" ") else f for f in failures]
    print()
    print(f"{'environment':<16}{'passed':>8}{'failed':>8}{'errors':>8}{'skipped':>9}")
    for env, counts in rows:
        print(
            f"{env:<16}{counts['passed']:>8}{counts['failed']:>8}"
            f"{counts['errors']:>8}{counts['skipped']:>9}"
        )
    for env in broken:
        print(f"{env:<16}  no test results: its run broke before pytest finished")
    if all_skips:
        print("\nskipped:")
        for line in all_skips:
            print(f"  {line}")
    if all_failures:
        print("\nfailed, and why:")
        for line in all_failures:
            print(f"  {line}")
    failed = total["failed"] + total["errors"] + len(broken)
    print()
    print(f"total: {total['passed']} passed, {failed} failed, {total['skipped']} skipped")
    return 1 if failed or not total["passed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
