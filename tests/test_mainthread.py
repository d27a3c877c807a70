"""Who ``threading`` calls the main thread, when our control thread needed it first.

Before 3.13, whichever thread first imports ``threading`` becomes its main
thread, and interpreter exit waits for that thread. Each test starts a real
app that has not imported ``threading`` when the first request reaches the
control plane, and checks, in the app's real main thread, that it is
``threading.main_thread()``, and that the app exits by itself afterwards.

Nothing here depends on the machine's speed: the control plane is asked only
once the app has set itself up, and the mode whose main-thread import must
fail gives the control thread all the time the main thread needs to run the
pending call, so each mode takes the same path on every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 13), reason="3.13 asks the runtime which thread is main"
)

#: Waits in Python (pending calls run) or in C (they wait), until the control
#: plane has been asked to sleep, then reports what threading thinks.
APP = textwrap.dedent(
    """\
    import _thread, json, os, sys, time

    MAIN = _thread.get_ident()
    MODE = sys.argv[1]
    asked = sys.argv[2]

    class FailFirstImportInMain:
        # A pending call can land while the main thread is in the middle of
        # one of its own imports; importing threading then can fail. Here it
        # fails on purpose, once.
        failed = False

        def find_spec(self, name, path=None, target=None):
            if (name == "threading" and not self.failed
                    and _thread.get_ident() == MAIN):
                type(self).failed = True
                raise ImportError("threading is half-imported in this thread")
            return None

    if MODE == "import-fails-in-main":
        sys.meta_path.insert(0, FailFirstImportInMain())
        # The failing import happens only if the main thread runs the pending
        # call while the control thread still waits for it (0.25 s); a loaded
        # machine can take longer to schedule the main thread. Waiting as long
        # as it takes makes the path certain: the call releases the control
        # thread as soon as it has run, so nothing is slower when all is well.
        import detrix_auto._mainthread as mainthread
        mainthread.ensure_threading.__defaults__ = (120.0,)
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(asked) and time.monotonic() < deadline:
        if MODE == "busy-in-c":
            time.sleep(1.0)  # in C: the pending call waits for this
        else:
            sum(range(1000))  # Python: pending calls run between bytecodes
    time.sleep(0.5)  # the control plane finishes its first request
    import threading
    print(json.dumps({
        "is_main": threading.current_thread() is threading.main_thread(),
        "main_ident_ok": threading.main_thread().ident == MAIN,
        "import_failed": FailFirstImportInMain.failed,
    }), flush=True)
    """
)


def _run(tmp_path, home, mode: str) -> dict:
    from support import clean_env, http_json, wait_for_record

    script = tmp_path / "app.py"
    script.write_text(APP)
    asked = tmp_path / "asked"
    asked.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(asked)],
        env=clean_env(home, DETRIX_ENABLE="1"),
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        record = wait_for_record(home, proc.pid, proc)
        # The record is written by the hook, before the app's own code has run:
        # ask only once the app is set up (its failing finder installed).
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        # A sleep builds the client, which needs threading (a status request
        # does not: it never imports threading, see test_footprint.py).
        code, body = http_json(record["control_url"], "POST", "/detrix/sleep")
        assert code == 200, body
        asked.write_text("")
        out, err = proc.communicate(timeout=60)  # a blocked exit times out here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "detrix-auto" not in err, err
    report = dict(json.loads(out.splitlines()[-1]))
    assert report["is_main"] and report["main_ident_ok"], report
    return report


@pytest.mark.parametrize("mode", ["python-loop", "busy-in-c", "import-fails-in-main"])
def test_the_real_main_thread_stays_main_and_exit_is_not_blocked(tmp_path, home, mode):
    report = _run(tmp_path, home, mode)
    # Only the mode that makes it fail sees a failed import, and it always does.
    assert report["import_failed"] is (mode == "import-fails-in-main"), report
