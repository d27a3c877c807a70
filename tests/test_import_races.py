"""Our threads' imports racing the host's: a first ``import importlib``, and a fork.

See ``detrix_auto/_import_races.py`` for both. Each app here makes its race
certain with an audit hook that holds one thread at the start of a module's body.

A wake that imports ``importlib`` for the first time while the host does too:

CPython's ``importlib`` package registers the interpreter's own import machinery
under ``importlib._bootstrap`` a few lines into its body; a submodule imported
by another thread meanwhile (``importlib.machinery``) gets a fresh copy of the
bootstrap that was never set up (see ``detrix_auto/_import_races.py``). A
``spawn`` worker woken while it starts hit it: its wake failed with ``NameError:
name 'sys' is not defined``, and the host's own ``importlib.machinery`` was the
broken copy. The app here makes the race certain instead of one in forty: an
audit hook holds our wake thread at the start of ``importlib``'s body while a
thread of the host's imports ``importlib.machinery``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from support import http_json, wait_until, write_script

from detrix_auto.discovery import iter_records


def holding(path_end: str) -> str:
    """The start of an app that holds the first thread other than its main one to run
    the module whose file ends with ``path_end``, at the start of the module's body (an
    audit hook on ``exec``), until the app sets ``release``. The app's main thread
    goes on from there once that thread is held."""
    return f"""\\
import os, sys, threading, time

held = threading.Event()
release = threading.Event()
main = threading.get_ident()

def hook(event, args):
    if event != "exec" or threading.get_ident() == main or held.is_set():
        return
    if getattr(args[0], "co_filename", "").replace("\\\\", "/").endswith({path_end!r}):
        held.set()
        release.wait(10)

sys.addaudithook(hook)
print("ready", flush=True)
if not held.wait(60):
    print("never held", flush=True)
    sys.exit(1)
"""


#: The host: holds the first thread that runs importlib's body (ours, woken) at its
#: start, imports ``importlib.machinery`` meanwhile, and reports what it got.
HOST = (
    holding("importlib/__init__.py")
    + """\
# The import statement loads the submodule, then waits for the package (held): so
# it runs in a thread of the host's, and the hold ends once the submodule is loaded.
# 3.14+ waits for the package before it loads the submodule: the hold ends after 2 s.
threading.Thread(target=__import__, args=("importlib.machinery",), daemon=True).start()
deadline = time.time() + 2
while time.time() < deadline:
    machinery = sys.modules.get("importlib.machinery")
    if machinery is not None and not getattr(machinery.__spec__, "_initializing", True):
        break
    time.sleep(0.01)
release.set()
import _frozen_importlib
import importlib.machinery
real = importlib.machinery.ModuleSpec is _frozen_importlib.ModuleSpec
print("machinery", "real" if real else "fresh copy", flush=True)
time.sleep(60)
"""
)


def test_a_wake_and_the_host_importing_importlib_at_once_both_get_the_real_machinery(spawn, daemon):
    app = spawn(HOST)
    assert app.proc.stdout is not None
    assert app.proc.stdout.readline().strip() == "ready"
    code, answer = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url}, timeout=60)
    report = app.proc.stdout.readline().strip()
    assert report == "machinery real", (report, code, answer)
    assert code == 200, answer
    code, answer = app.request("POST", "/detrix/sleep")
    assert code == 200, answer


#: The host: forks while our control thread is in the middle of importing the module
#: its first request needs (held there by an audit hook), and reports the child's pid.
FORKS_MID_IMPORT = (
    holding("detrix_auto/control/routes.py")
    + """\
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
release.set()
print(pid, flush=True)
time.sleep(60)
"""
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_while_our_thread_imports_imports_it_afresh(spawn, home):
    app = spawn(FORKS_MID_IMPORT)
    assert app.proc.stdout is not None
    assert app.proc.stdout.readline().strip() == "ready"
    assert app.request("GET", "/detrix/status")[0] == 200  # the parent's first request
    line = app.proc.stdout.readline().strip()
    assert line.isdigit(), line
    child_pid = int(line)
    try:

        def child_record():
            found = [r for r in iter_records(str(home)) if r["pid"] == child_pid]
            return found[0] if found else None

        wait_until(lambda: child_record() is not None, timeout=30, what="the child's record")
        record = child_record()
        assert record is not None
        started = time.monotonic()
        code, body = http_json(record["control_url"], "GET", "/detrix/status", timeout=20)
        assert code == 200, body
        assert body["state"] == "sleeping"
        assert time.monotonic() - started < 10
    finally:
        try:
            os.kill(child_pid, signal.SIGKILL)
        except OSError:
            pass
    assert app.status()["state"] == "sleeping"


#: The host: its main thread sits inside an import (the module's body sleeps) when
#: the wake comes, and reports whether debugpy was imported meanwhile.
INSIDE_AN_IMPORT = """\
import time
print("ready", flush=True)
import slowimport
time.sleep(60)
"""
SLOW_MODULE = """\
import sys, time
print("inside", flush=True)
time.sleep(1.5)
print("debugpy imported meanwhile:", "debugpy" in sys.modules, flush=True)
"""


def test_a_first_wake_imports_once_the_main_thread_left_its_import(spawn, daemon, tmp_path):
    """Two threads importing at once can each hold a module the other needs, and CPython
    then hands one of them a half-executed module (CI: multiprocessing's resource
    tracker, woken while it imported ``multiprocessing``, died of ``cannot import name
    'Mapping' from 'collections.abc'``). A first wake waits, at most 2 s, while the
    main thread is inside an import."""
    write_script(tmp_path / "slowimport.py", SLOW_MODULE)
    app = spawn(INSIDE_AN_IMPORT)
    assert app.proc.stdout is not None
    assert app.proc.stdout.readline().strip() == "ready"
    assert app.proc.stdout.readline().strip() == "inside"
    code, answer = app.request("POST", "/detrix/wake", {"daemon_url": daemon.url}, timeout=60)
    assert code == 200, answer
    assert app.proc.stdout.readline().strip() == "debugpy imported meanwhile: False"
