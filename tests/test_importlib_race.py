"""A wake that imports ``importlib`` for the first time while the host does too.

CPython's ``importlib`` package registers the interpreter's own import machinery
under ``importlib._bootstrap`` a few lines into its body; a submodule imported
by another thread meanwhile (``importlib.machinery``) gets a fresh copy of the
bootstrap that was never set up (see ``detrix_auto/_importlib_race.py``). A
``spawn`` worker woken while it starts hit it: its wake failed with ``NameError:
name 'sys' is not defined``, and the host's own ``importlib.machinery`` was the
broken copy. The app here makes the race certain instead of one in forty: an
audit hook holds our wake thread at the start of ``importlib``'s body while a
thread of the host's imports ``importlib.machinery``.
"""

from __future__ import annotations

#: The host: holds the first thread that runs importlib's body (ours, woken) at its
#: start, imports ``importlib.machinery`` meanwhile, and reports what it got.
HOST = """\
import sys, threading, time

held = threading.Event()
done = threading.Event()
main = threading.get_ident()

def hook(event, args):
    if event != "exec" or threading.get_ident() == main or held.is_set():
        return
    code = args[0]
    if getattr(code, "co_filename", "").replace("\\\\", "/").endswith("importlib/__init__.py"):
        held.set()
        done.wait(10)  # inside the package's import, before its body ran

sys.addaudithook(hook)
print("ready", flush=True)
if not held.wait(60):
    print("never held", flush=True)
    sys.exit(1)
# The import statement loads the submodule, then waits for the package (held): so
# it runs in a thread of the host's, and the hold ends once the submodule is loaded.
threading.Thread(target=__import__, args=("importlib.machinery",), daemon=True).start()
deadline = time.time() + 30
while time.time() < deadline:
    machinery = sys.modules.get("importlib.machinery")
    if machinery is not None and not getattr(machinery.__spec__, "_initializing", True):
        break
    time.sleep(0.01)
done.set()
import _frozen_importlib
import importlib.machinery
real = importlib.machinery.ModuleSpec is _frozen_importlib.ModuleSpec
print("machinery", "real" if real else "fresh copy", flush=True)
time.sleep(60)
"""


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
