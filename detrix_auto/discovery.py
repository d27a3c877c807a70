"""Per-process discovery records: how a parent, a test or the CLI finds us.

Once the control plane listens, ``<DETRIX_HOME>/clients/<pid>.json`` is
written atomically (temporary file, then rename), private to the user
(directory 0700, file 0600), and removed at exit. A home that is missing,
read-only or unsafe falls back to a per-user runtime directory; failing that
the record is skipped: discovery never fails the host. Records hold no token.

**Trust.** A record tells the CLI where to send the token, so another user
must not be able to plant one: ``/tmp/detrix-auto-<uid>`` can be created
first by anyone, and a ``DETRIX_HOME`` may sit in a directory someone else
owns. A directory counts only when it and every directory above it are ours
or root's and not writable by others (:mod:`detrix_auto.fileowner`), and a
record only when its file is ours or root's too; the writer makes only
directories of its own below such a directory. The CLI then also checks
that the record's control URL is held by the record's process.

**Never created: a home.** The writer creates ``DETRIX_HOME`` itself and
``clients/`` below it, but only below an existing parent: with
``HOME=/nonexistent`` nothing is made there, and the fallbacks are used.

**PID namespaces.** A record carries the PID namespace of its writer
(``pid_ns``, the inode of ``/proc/self/ns/pid``) and, where the writer can
see it, its pid in the outer namespace (``host_pid``). A reader in another
namespace never takes the record's ``pid`` for one of its own processes: it
finds the writer by namespace and start time (``host_pid``, else a scan of
``/proc``), or leaves the record alone. A record is deleted only when it is
proven stale: written in the reader's own namespace, and its pid is dead or
has another start time.
"""

from __future__ import annotations

import os
import time

from .fileowner import Untrusted, make_private_dirs, read_owned_file, untrusted_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = [
    "candidate_dirs",
    "candidate_roots",
    "iter_records",
    "pid_alive",
    "pid_namespace",
    "process_identity",
    "process_start_ticks",
    "remove_record",
    "write_record",
]

#: Records this process wrote: path -> (device, inode), so that only that very
#: file is ever removed (another namespace's process may have replaced it).
_written: dict[str, tuple[int, int]] = {}


def candidate_roots(home: str) -> list[tuple[str, tuple[str, ...]]]:
    """Where records may live, in order of preference: an existing root, and the
    directories of our own below it (created by the writer when missing)."""
    home = os.path.normpath(home)
    roots: list[tuple[str, tuple[str, ...]]] = [
        (os.path.dirname(home) or os.sep, (os.path.basename(home), "clients"))
    ]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        roots.append((runtime, ("detrix-auto", "clients")))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    tmp = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - per-user, 0700, ownership checked
    roots.append((tmp, (f"detrix-auto-{uid}", "clients")))
    return roots


def candidate_dirs(home: str) -> list[str]:
    """Where records may live, in order of preference."""
    return [os.path.join(root, *levels) for root, levels in candidate_roots(home)]


def write_record(home: str, record: dict[str, Any]) -> str | None:
    """Write this process's record; returns its path, or None if nowhere would take it."""
    data = dump_json(record).encode()
    for index, (root, levels) in enumerate(candidate_roots(home)):
        # DETRIX_HOME (the first root's first level) is the user's: its mode is theirs.
        directory = make_private_dirs(root, levels, ours_from=1 if index == 0 else 0)
        if directory is None:
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
                info = os.fstat(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            continue
        _written[final] = (info.st_dev, info.st_ino)
        return final
    return None


def remove_record(path: str | None, pid: int) -> None:
    """Remove our record: the file named after our pid, if it is still the one we wrote."""
    if not path or os.path.basename(path) != f"{pid}.json":
        return
    try:
        info = os.lstat(path)
        if _written.get(path, (info.st_dev, info.st_ino)) != (info.st_dev, info.st_ino):
            return  # replaced by a process of the same pid in another namespace
        os.unlink(path)
    except OSError:
        pass


def pid_namespace(pid: int | str = "self") -> int | None:
    """The inode of ``/proc/<pid>/ns/pid``: which PID namespace the process is in."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except (OSError, ValueError):
        return None


def _outer_pid() -> int | None:
    """Our pid in the namespace of the mounted ``/proc``, when that is not our own.

    ``NSpid`` lists the pid in each namespace from the one ``/proc`` belongs to
    down to ours; with a single entry nothing outer can be seen.
    """
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"NSpid:"):
                    pids = [int(p) for p in line.split()[1:]]
                    return pids[0] if len(pids) > 1 else None
    except (OSError, ValueError):
        pass
    return None


def process_identity() -> dict[str, int | None]:
    """What a record needs to name this process from any PID namespace."""
    return {
        "proc_start": process_start_ticks(),
        "pid_ns": pid_namespace(),
        "host_pid": _outer_pid(),
    }


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


def iter_records(
    home: str, *, prune: bool = True, skipped: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Every trusted record of a live process, ``pid`` as this reader's namespace sees it.

    Records proven stale are removed (``prune``). Each record passed over for
    a reason the user should hear (a directory or file someone else could
    have written, a process in another PID namespace that cannot be found)
    adds one line to ``skipped``. A record seen from another namespace keeps
    its writer's own pid as ``ns_pid``.
    """
    import json

    reader_ns = pid_namespace()
    seen: set[int] = set()
    for directory in candidate_dirs(home):
        if not os.path.isdir(directory):
            continue
        problem = untrusted_dir(directory)
        if problem is not None:
            _note(skipped, f"records in {directory} are ignored: {problem}")
            continue
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(directory, name)
            try:
                record = json.loads(read_owned_file(path, 1 << 20))
                pid = int(record["pid"])
            except Untrusted as exc:
                _note(skipped, f"{path} is ignored: {exc}")
                continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            local = _locate(record, pid, reader_ns)
            if local is _STALE:
                if prune:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                continue
            if not isinstance(local, int):
                _note(
                    skipped,
                    f"{path} belongs to pid {pid} of another PID namespace "
                    f"(pid:[{record.get('pid_ns')}]) that this shell cannot see; left alone",
                )
                continue
            if local in seen:
                continue
            seen.add(local)
            if local != pid:
                record["ns_pid"], record["pid"] = pid, local
            record["record_path"] = path
            yield record


def _note(skipped: list[str] | None, line: str) -> None:
    if skipped is not None:
        skipped.append(line)


_STALE = object()
_ELSEWHERE = object()


def _locate(record: dict[str, Any], pid: int, reader_ns: int | None) -> object:
    """The record's process as a pid of the reader's namespace, ``_STALE`` when the
    record is provably stale, ``_ELSEWHERE`` when it is another namespace's and
    its process cannot be found from here (alive or not: nothing is proven).

    A record without ``pid_ns`` (written before records carried it) and any
    record read where ``/proc`` cannot tell namespaces are judged as the
    reader's own, as before.
    """
    writer_ns = record.get("pid_ns")
    if not isinstance(writer_ns, int) or reader_ns is None or writer_ns == reader_ns:
        return pid if pid_alive(pid) and _same_process(record) else _STALE
    found = _find_in_namespace(record, pid, writer_ns)
    return _ELSEWHERE if found is None else found


def _find_in_namespace(record: dict[str, Any], pid: int, writer_ns: int) -> int | None:
    """Our pid for the process that is ``pid`` in namespace ``writer_ns``, if we see it."""
    start = record.get("proc_start")
    if not isinstance(start, int):
        return None

    def matches(candidate: int) -> bool:
        return (
            pid_namespace(candidate) == writer_ns
            and process_start_ticks(candidate) == start
            and _inner_pid(candidate) == pid
        )

    hint = record.get("host_pid")
    if isinstance(hint, int) and hint > 0 and matches(hint):
        return hint
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if entry.isdigit() and matches(int(entry)):
            return int(entry)
    return None


def _inner_pid(pid: int) -> int | None:
    """The last ``NSpid`` entry: the process's pid in its own namespace."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
