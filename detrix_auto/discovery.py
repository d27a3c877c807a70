"""Per-process discovery records: how a parent, a test or the CLI finds us.

Once the control plane listens, ``<DETRIX_HOME>/clients/<pid>.json`` is
written atomically (temporary file, then rename), private to the user
(directory 0700, file 0600), and removed at exit. A home that is missing,
read-only or unsafe falls back to a per-user runtime directory; failing that
the record is skipped: discovery never fails the host. Records hold no token.
"""

from __future__ import annotations

import os
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = [
    "candidate_dirs",
    "iter_records",
    "pid_alive",
    "process_start_ticks",
    "remove_record",
    "write_record",
]


def candidate_dirs(home: str) -> list[str]:
    """Where records may live, in order of preference."""
    dirs = [os.path.join(home, "clients")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(os.path.join(runtime, "detrix-auto", "clients"))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    tmp = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - per-user, 0700, ownership checked
    dirs.append(os.path.join(tmp, f"detrix-auto-{uid}", "clients"))
    return dirs


def _private_dir(path: str) -> bool:
    """Create ``path`` (0700) if needed; True only if it is ours and private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    if info.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError:
            return False
    return True


def write_record(home: str, record: dict[str, Any]) -> str | None:
    """Write this process's record; returns its path, or None if nowhere would take it."""
    data = dump_json(record).encode()
    for directory in candidate_dirs(home):
        if not _private_dir(directory):
            continue
        final = os.path.join(directory, f"{record['pid']}.json")
        tmp = os.path.join(directory, f".tmp-{record['pid']}-{time.monotonic_ns()}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(tmp, flags, 0o600)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            continue
        return final
    return None


def remove_record(path: str | None, pid: int) -> None:
    """Remove our record; the file is named after our pid, which no live process shares."""
    if not path or os.path.basename(path) != f"{pid}.json":
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def dump_json(value: object) -> str:
    """JSON for the record's plain values, without importing ``json`` at start-up."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return str(encode_basestring_ascii(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{encode_basestring_ascii(str(k))}:{dump_json(v)}"
                for k, v in sorted(value.items())
            )
            + "}"
        )
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_basestring_ascii(text: str) -> str:
    """A JSON string literal using ASCII only (what ``json.dumps`` writes by default)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def iter_records(home: str, *, prune: bool = True) -> Iterator[dict[str, Any]]:
    """Every readable record of a live process; stale records are removed."""
    import json

    seen: set[int] = set()
    for directory in candidate_dirs(home):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    record = json.loads(handle.read(1 << 20))
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid in seen:
                continue
            if not pid_alive(pid) or not _same_process(record):
                if prune:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                continue
            seen.add(pid)
            record["record_path"] = path
            yield record


def process_start_ticks(pid: int | str = "self") -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _same_process(record: dict[str, Any]) -> bool:
    """Guard against pid reuse: the live process must be the one that wrote the record."""
    expected = record.get("proc_start")
    if not isinstance(expected, int):
        return True
    actual = process_start_ticks(int(record["pid"]))
    return actual is None or actual == expected
