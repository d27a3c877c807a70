"""The unpatched thread, lock, sleep, select and socket our own threads use.

``gevent.monkey.patch_all()`` replaces ``_thread``, ``threading``, ``time.sleep``,
``select`` and ``socket`` with cooperative versions: a "thread" started after it is
a greenlet in the starting thread's hub, a lock wait switches greenlets, a sleep
runs an event loop. The control plane, the wake workers and the keeper must stay
real OS threads that block for real: a greenlet in our control thread would never
run (that thread blocks in ``accept()`` and ``poll()``, not in gevent's hub), and a
hub in each of our threads would be event loops the host never asked for.

So everything our own threads start, wait on or sleep in comes from here: what
gevent saved before it patched (``gevent.monkey.get_original``) when gevent has
patched it, the standard library's otherwise. gevent is never imported by us:
only looked up in ``sys.modules``, where an application that patched has put it.
Each call looks again, so patching after our start is seen at the next use.

Imports ``_thread`` and ``sys`` only: the control thread uses it before anything
else is loaded.
"""

from __future__ import annotations

import _thread
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol
else:
    Protocol = object

__all__ = [
    "Event",
    "Lock",
    "RLock",
    "Thread",
    "ThreadLike",
    "create_connection",
    "gevent_patched",
    "gevent_patched_modules",
    "get_ident",
    "os_thread_gone",
    "original",
    "poll",
    "select",
    "settle_platform",
    "sleep",
    "socket_class",
    "start_new_thread",
    "wait_for_ended_threads",
]


def gevent_patched(module: str = "threading") -> bool:
    """Has gevent monkey-patched ``module`` in this process?"""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched(module))
    except Exception:  # noqa: BLE001 - an unknown gevent: assume it patched
        return True


def gevent_patched_modules() -> frozenset[str]:
    """What gevent has patched so far (changes while ``patch_all()`` runs)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return frozenset()
    try:
        return frozenset(monkey.saved)
    except Exception:  # noqa: BLE001 - an unknown gevent: judge by threading alone
        return frozenset({"threading"}) if gevent_patched() else frozenset()


def original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent patched it (as it is, if it did not)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original(module, name)
        except Exception:  # noqa: BLE001, S110 - fall back to the module itself
            pass
    return getattr(__import__(module), name)


#: The main thread's id as seen when detrix-auto started (``_runtime.start``; the start-up
#: hook runs in the main thread). Before 3.13 ``threading.main_thread()`` can name our own
#: thread for a while (see ``_mainthread``), and ``_thread`` has no way to ask.
main_thread_ident: int | None = None


def start_new_thread(func: Callable[..., object], args: tuple[Any, ...] = ()) -> int:
    """A real OS thread running ``func(*args)``."""
    if "gevent.monkey" not in sys.modules:
        return _thread.start_new_thread(func, args)
    start: Callable[..., int] = original("_thread", "start_new_thread")
    return start(func, args)


def Lock() -> Any:
    """A lock whose ``acquire`` blocks the OS thread."""
    if "gevent.monkey" not in sys.modules:
        return _thread.allocate_lock()
    return original("_thread", "allocate_lock")()


def RLock() -> Any:
    if "gevent.monkey" not in sys.modules:
        return _thread.RLock()
    return original("_thread", "RLock")()


def get_ident() -> int:
    """The OS thread's identifier (gevent's would be the current greenlet's)."""
    if "gevent.monkey" not in sys.modules:
        return _thread.get_ident()
    ident: int = original("_thread", "get_ident")()
    return ident


def sleep(seconds: float) -> None:
    if "gevent.monkey" not in sys.modules:
        import time

        time.sleep(seconds)
        return
    original("time", "sleep")(seconds)


def poll() -> Any:
    """A ``select.poll`` object (None where there is none: Windows)."""
    import select as _select

    if "gevent.monkey" in sys.modules:
        make = original("select", "poll") if hasattr(_select, "poll") else None
    else:
        make = getattr(_select, "poll", None)
    return make() if make is not None else None


def select(
    readers: list[int], writers: list[int], errors: list[int], timeout: float
) -> tuple[list[int], list[int], list[int]]:
    result: tuple[list[int], list[int], list[int]] = original("select", "select")(
        readers, writers, errors, timeout
    )
    return result


def socket_class() -> type[Any]:
    """The standard library's ``socket.socket``."""
    cls: type[Any] = original("socket", "socket")
    return cls


def create_connection(
    address: tuple[str, int],
    timeout: float | None,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
) -> Any:
    """``socket.create_connection`` on the unpatched socket and resolver."""
    import socket

    host, port = address
    if host.startswith("["):
        host = host.strip("[]")
    getaddrinfo = original("socket", "getaddrinfo")
    sock_cls = socket_class()
    error: OSError | None = None
    for family, kind, proto, _, where in getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = None
        try:
            sock = sock_cls(family, kind, proto)
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(where)
            return sock
        except OSError as exc:
            error = exc
            if sock is not None:
                sock.close()
    raise error if error is not None else OSError(f"getaddrinfo returned nothing for {host}")


class Event:
    """``threading.Event`` on locks that block the OS thread."""

    __slots__ = ("_flag", "_lock", "_waiters")

    def __init__(self) -> None:
        self._lock = Lock()
        self._flag = False
        self._waiters: list[Any] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._lock:
            self._flag = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.release()

    def clear(self) -> None:
        with self._lock:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._flag:
                return True
            waiter = Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        got = waiter.acquire(True, -1 if timeout is None else max(0.0, timeout))
        if not got:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return got or self._flag


def settle_platform() -> None:
    """Compute ``platform.uname().processor`` now, without gevent's subprocess.

    debugpy's import writes ``platform.platform()`` into its log header; on Linux
    that runs ``uname -p`` once per process, through ``subprocess``. gevent's
    subprocess can only watch children from the main thread's loop, so in one of
    our threads the import fails ("child watchers are only available on the
    default loop"). This runs the same command with the unpatched
    ``posix_spawn`` and stores what ``platform`` would have stored, so the host
    later reads the same value it would have computed itself. A no-op unless
    gevent patched ``subprocess``, or when the value is already known.
    """
    if not gevent_patched("subprocess"):
        return
    import platform

    uname = platform.uname()
    cache = getattr(uname, "__dict__", None)
    if cache is None or "processor" in cache or not hasattr(platform, "_Processor"):
        return
    output = _command_output(["uname", "-p"])
    if output is not None:
        cache["processor"] = "" if output == "unknown" else output


def _command_output(argv: list[str]) -> str | None:
    """A command's stripped standard output, run with the unpatched ``posix_spawnp``."""
    import os
    import shutil

    spawn = original("os", "posix_spawn") if hasattr(os, "posix_spawn") else None
    path = shutil.which(argv[0])
    if spawn is None or path is None:
        return None
    close = original("os", "close")  # gevent's defers a pipe's close to a hub of this thread
    read_end, write_end = os.pipe()
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_CLOSE, read_end),
        ]
        pid = spawn(path, argv, dict(os.environ), file_actions=actions)
    except OSError:
        close(read_end)
        return None
    finally:
        close(write_end)
    chunks = []
    try:
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
    finally:
        close(read_end)
    try:
        _, status = original("os", "waitpid")(pid, 0)
    except ChildProcessError:
        status = 0  # reaped by gevent's SIGCHLD handler: its output is all we need
    if status != 0:
        return None
    return b"".join(chunks).decode("utf-8", "replace").strip()


class ThreadLike(Protocol):
    name: str

    def start(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


def Thread(target: Callable[..., object], name: str, args: tuple[Any, ...] = ()) -> ThreadLike:
    """A daemon thread of ours: ``threading.Thread`` unless gevent patched threading.

    Outside gevent it is exactly the ``threading.Thread`` it always was
    (``threading`` lists it; pydevd reads the marks set on it). Under gevent it is a
    real OS thread started with the unpatched ``start_new_thread``: gevent's
    ``threading.Thread`` would be a greenlet in our starting thread's hub.
    """
    if not gevent_patched("threading"):
        import threading

        return threading.Thread(target=target, name=name, args=args, daemon=True)
    return _OSThread(target, name, args)


def os_thread_gone(native_id: int) -> bool:
    """Has this process's OS thread ``native_id`` ended? (True where no ``/proc`` tells:
    then nothing else counts OS threads either.)"""
    import os

    try:
        os.stat(f"/proc/self/task/{native_id}")
    except OSError:
        return True
    return False


#: Whether OS threads of ours note their native id as they end (set by ``_mainthread`` on
#: 3.11 only; why: :func:`wait_for_ended_threads`).
track_ending_threads = [False]
#: Native ids of our OS threads whose Python part has ended.
_ending: set[int] = set()


def wait_for_ended_threads(bound: float = 0.2) -> None:
    """Until each OS thread of ours that was ending has ended, at most ``bound`` seconds.

    A thread that used greenlet (under gevent every import of ours takes a gevent
    lock, which gives the thread a greenlet state) has greenlet queue a pending call
    as it dies, after the Python part of it ended (``join()`` has returned by then).
    On 3.11 a pending call queued while the main thread runs one of ours makes
    CPython spin for ever at the next Python function call there (``_mainthread``):
    so before ours is queued, the threads of ours that were ending are let finish.
    Gone means gone from ``/proc/self/task``; where there is none, nothing is waited.
    """
    if not _ending:
        return
    deadline = None
    while True:
        _ending.difference_update([tid for tid in list(_ending) if os_thread_gone(tid)])
        if not _ending:
            return
        import time

        now = time.monotonic()
        deadline = deadline if deadline is not None else now + bound
        if now > deadline:
            _ending.clear()  # a thread stuck in its end is waited for this once only
            return
        sleep(0.001)


def forget_ending_after_fork() -> None:
    """In a forked child: the parent's ending threads are not in this process."""
    _ending.clear()


def _thread_ends() -> None:
    """The last thing an OS thread of ours does: note itself as ending (3.11)."""
    if not track_ending_threads[0]:
        return
    try:
        _ending.add(original("_thread", "get_native_id")())
    except Exception:  # noqa: BLE001 - no native ids here: nothing to wait for
        return
    if len(_ending) > 32:  # no call of ours was queued for a while: forget the gone ones
        _ending.difference_update([tid for tid in list(_ending) if os_thread_gone(tid)])


class _OSThread:
    """Just what our callers use of a thread: start, join, is_alive, name, marks."""

    def __init__(self, target: Callable[..., object], name: str, args: tuple[Any, ...]) -> None:
        self._target = target
        self._args = args
        self.name = name
        self.daemon = True
        self.ident: int | None = None
        self._done = Lock()
        self._started = False

    def start(self) -> None:
        self._done.acquire()
        self._started = True
        try:
            start_new_thread(self._run, ())
        except BaseException:
            self._done.release()
            raise

    def _run(self) -> None:
        self.ident = get_ident()
        try:
            self._target(*self._args)
        except BaseException:  # noqa: BLE001 - as threading does: report, end the thread
            import traceback

            traceback.print_exc()
        finally:
            _thread_ends()
            self._done.release()

    def is_alive(self) -> bool:
        return self._started and bool(self._done.locked())

    def join(self, timeout: float | None = None) -> None:
        if not self._started:
            raise RuntimeError("cannot join thread before it is started")
        if self._done.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._done.release()
