"""``detrix-auto doctor``: why did (or didn't) a process activate?

Each check yields a :class:`Finding` with a level (``ok``, ``warn``, ``error``),
what was found, and a plain fix. The exit status is 1 when any finding is an
error. With a PID, the process itself is examined through its discovery
record and control plane, or, when it has none, through ``/proc`` (its
command line, environment and interpreter), which is readable for the
user's own processes.

One module per concern; each imports only those above it in this list::

    findings        Finding, and the interpreter probe every check shares
    install         this interpreter: hook files (.pth, .start), sitecustomize, dependencies
    settings        the DETRIX_* variables of this shell
    daemon          the daemon, debugpy, the token, the discovery records
    uninstrumented  a process with no record nor control plane: why it did not activate
    process         doctor PID: one process, by its record, its sockets or /proc

``cli/_procfs.py`` reads another process through ``/proc`` for them.

This module is the command: it runs the checks in the order of the report.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict

from .._common import print_json, printable
from .daemon import check_daemon, check_debugger, check_discovery, check_token
from .findings import Finding, hook_files, local_facts
from .install import check_interpreter, check_start_files
from .process import check_process
from .settings import check_settings

__all__ = ["Finding", "check_start_files", "cmd_doctor", "hook_files"]


def cmd_doctor(args: argparse.Namespace, *, hook_ran_here: bool = False) -> int:
    facts = local_facts()
    env = dict(os.environ)
    findings = check_interpreter(facts, hook_ran_here=hook_ran_here)
    if facts["debugpy"]:
        findings += check_debugger()
    findings += check_settings(env, python=str(facts["executable"]), pid=args.pid)
    findings += check_daemon(env)
    findings += check_token(env)
    findings += check_discovery()
    if args.pid is not None:
        findings += check_process(args.pid)
    errors = sum(1 for f in findings if f.level == "error")
    warnings = sum(1 for f in findings if f.level == "warn")
    if args.json:
        print_json(
            {
                "python": facts["executable"],
                "python_version": facts["version"],
                "pid": args.pid,
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "findings": [asdict(f) for f in findings],
            }
        )
        return 1 if errors else 0
    print(
        f"detrix-auto doctor: {facts['executable']} (Python {facts['version']})"
        + (f", process {args.pid}" if args.pid is not None else "")
    )
    print()
    for finding in findings:
        # Findings quote process-supplied text (command lines, names, errors).
        print(printable(f"  {finding.level:<5}  {finding.text}"))
        if finding.fix and finding.level != "ok":
            print(printable(f"         fix: {finding.fix}"))
    print()
    print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
