"""Reading another process through ``/proc``: its environment, parent, namespaces, flags.

Apart because these are plain readers, with no judgement of what they find:
``process`` and ``uninstrumented`` both use them. Each returns None (or a
default) when the file cannot be read, as for another user's process.
"""

from __future__ import annotations

import os


def _proc_read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _proc_env(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` was started with; None when it cannot be read."""
    raw = _proc_read(pid, "environ")
    if raw is None:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            env[key] = value
    return env


def _parent_pid(pid: int) -> int | None:
    raw = _proc_read(pid, "stat")
    try:
        return int(raw[raw.rindex(b")") + 2 :].split()[1]) if raw else None
    except (ValueError, IndexError):
        return None


def interpreter_flags(argv: list[str]) -> set[str]:
    """The one-letter interpreter options before the program (``-sE`` gives s and E)."""
    flags: set[str] = set()
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            break
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        letters = arg[1:]
        stop = False
        for j, letter in enumerate(letters):
            if letter in "cm":
                stop = True  # what follows is the program
                break
            if letter in "WX":
                if j == len(letters) - 1:
                    i += 1  # the option's value is the next argument
                break
            flags.add(letter)
        if stop:
            break
        i += 1
    return flags


def _namespace(pid: int | str, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def _pid_in_own_namespace(pid: int) -> int:
    """The pid the process sees for itself (the last ``NSpid`` field), else ``pid``."""
    raw = _proc_read(pid, "status") or b""
    for line in raw.splitlines():
        if line.startswith(b"NSpid:"):
            try:
                return int(line.split()[-1])
            except (ValueError, IndexError):
                break
    return pid
