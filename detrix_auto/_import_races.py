"""Imports of ours that run while the host imports or forks: two races of CPython's.

**A first ``import importlib`` in two threads.** CPython's ``importlib/__init__.py``
puts the interpreter's own, set-up import machinery (the frozen
``_frozen_importlib`` and ``_frozen_importlib_external``) into ``sys.modules``
under ``importlib._bootstrap`` and ``importlib._bootstrap_external`` a few lines
into its body. Meanwhile the half-initialised package is already in
``sys.modules``, and an import of one of its submodules by another thread does
not wait for it: ``importlib.machinery`` (``from ._bootstrap import ModuleSpec``)
then loads a *fresh, never set-up* copy of the bootstrap, whose functions lack
``sys``. Its classes are not the interpreter's (``ModuleSpec`` is another class),
and once the copy replaces the package's ``_bootstrap`` attribute every
``importlib.import_module`` fails with ``NameError: name 'sys' is not defined``.
Reproduced on 3.10-3.13 by pausing one thread inside the package's body while
another imports ``importlib.machinery``; 3.14 made such an import wait for the
package first.

A wake is the first time our thread imports ``importlib`` (``_pydevd``, debugpy,
``inspect``), and a host often does too while it starts (``multiprocessing``'s
spawn workers run ``runpy``, which imports ``importlib.machinery``): a worker
woken while it started failed its wake that way, and the host's own importlib
could have been the broken one. So before our thread imports anything
(:func:`settle`), the two entries the package would add are added first, with
the very objects it adds: whichever thread then runs the package's body or
imports a submodule finds the real machinery. A process that has imported
``importlib`` already (most) is left as it is.

**A fork while our thread imports.** Our threads import lazily: the control
thread the modules of its first request, a wake debugpy and what it needs. A
host that forks meanwhile (gunicorn's master, ``multiprocessing``) gives its
child that module half executed, in ``sys.modules``, with its import lock held
by a thread the child does not have: in the child, importing it again waits
forever, or, when CPython sees a deadlock, hands back the half module
(``cannot import name 'Router' from partially initialized module``: a gunicorn
worker's control plane died of it in CI). Just before a fork
(:func:`note_before_fork`) we look at which imports hold a lock; in the child
(:func:`repair_after_fork`) the half modules that our code was importing, and
their dead locks, are forgotten, so that the child imports them afresh. An
import the host itself was running in another thread is left as it is (the
host's, and CPython's, to answer for); so is one in the forking thread, which
goes on in the child.

**gevent's first hub.** After ``gevent.monkey.patch_all()`` importlib's
per-module locks are gevent locks (``_thread.allocate_lock`` is gevent's). One of
our OS threads that waits on such a lock (a module the main thread is importing)
makes itself a gevent hub to wait in, and making a hub imports the configured
loop and ``pprint``. The host's main thread makes its own first hub right after
patching (its first ``spawn`` or ``sleep``), importing the very same modules: our
thread's second wait, inside the hub it is making, then holds a module lock's
inner lock that the main thread needs to finish its import, and both wait for
ever (CI's stacks: our wake importing ``dataclasses`` for the state machine while
the main thread imported it for ``pprint``; the control plane hung with it). Once
one hub exists gevent's settings are resolved and a hub is made without
importing, so before our threads import anything (:func:`wait_for_gevents_hub`)
they wait, a bounded while, until the host has made its first hub.
"""

from __future__ import annotations

import _thread
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not loaded for a status request (tests/test_footprint.py)
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "note_before_fork",
    "repair_after_fork",
    "settle",
    "wait_for_gevents_hub",
    "wait_for_main_imports",
]

#: ``sys.modules`` names ``importlib/__init__.py`` gives the frozen bootstrap modules.
_ALIASES = (
    ("importlib._bootstrap", "_frozen_importlib"),
    ("importlib._bootstrap_external", "_frozen_importlib_external"),
)


def settle() -> None:
    """Put importlib's bootstrap aliases in place if ``importlib`` is not fully loaded."""
    package = sys.modules.get("importlib")
    if package is not None and not getattr(
        getattr(package, "__spec__", None), "_initializing", False
    ):
        return  # set up already (its body ran to the end)
    for alias, frozen in _ALIASES:
        module = sys.modules.get(frozen)
        if module is not None:
            sys.modules.setdefault(alias, module)


def _main_ident() -> int | None:
    """The main thread's id, without importing ``threading`` for it."""
    ask = getattr(_thread, "_get_main_thread_ident", None)  # 3.13+
    if ask is not None:
        ident: int = ask()
        return ident
    from . import _native

    return _native.main_thread_ident


#: At most this long a first client build or wake waits for the main thread to leave
#: the imports it is in (:func:`wait_for_main_imports`).
FIRST_IMPORT_WAIT = 2.0


def wait_for_main_imports(timeout: float = FIRST_IMPORT_WAIT) -> None:
    """Before a first wake imports (debugpy, the daemon client): let the main thread
    finish the imports it is in, at most ``timeout`` seconds.

    Two threads importing at once can each hold a module the other needs;
    CPython breaks such a cycle by handing one of them the other's module half
    executed, and that thread fails with ``cannot import name ... from partially
    initialized module``. A host starting up imports in its main thread, and a
    wake imports hundreds of modules: CI saw multiprocessing's resource tracker,
    woken while it imported ``multiprocessing``, die of ``cannot import name
    'Mapping' from 'collections.abc'``. Waiting while the main thread holds an
    import lock avoids most of that window; a main thread that stays inside an
    import (an application whose loop runs at import time) costs the wake
    ``timeout`` once.
    """
    try:
        locks = _module_locks()
        main = _main_ident()
        if not locks or main is None or main == _thread.get_ident():
            return
        _wait_while(lambda: any(_held_by(ref()) == main for ref in list(locks.values())), timeout)
    except Exception:  # noqa: BLE001, S110 - a wake goes on without this guard
        pass


def _wait_while(busy: Callable[[], bool], timeout: float) -> bool:
    """Poll ``busy`` (unpatched sleeps) until it is false; False if ``timeout`` ran out."""
    import time

    from . import _native

    deadline = time.monotonic() + timeout
    while busy():
        if time.monotonic() >= deadline:
            return False
        _native.sleep(0.002)
    return True


# -- gevent's first hub ---------------------------------------------------------------

#: At most this long our thread waits for a patched host to make its first gevent hub.
FIRST_HUB_WAIT = 2.0
#: Set when a wait ran out: the host makes no hub soon, and nobody waits for it again.
_no_hub_coming: list[bool] = []


def wait_for_gevents_hub(timeout: float = FIRST_HUB_WAIT) -> None:
    """Before our thread imports, in a host whose threads gevent patched: wait until
    the host has made a gevent hub, at most ``timeout`` seconds (once per process).

    Costs one ``sys.modules`` look-up where gevent has not patched. The main
    thread itself never waits (it would wait for itself).
    """
    if "gevent.monkey" not in sys.modules or _no_hub_coming:
        return
    try:
        if not _no_hub_yet() or _thread.get_ident() == _main_ident():
            return
        if not _wait_while(_no_hub_yet, timeout):
            _no_hub_coming.append(True)
    except Exception:  # noqa: BLE001, S110 - our thread goes on without this guard
        pass


def _no_hub_yet() -> bool:
    """gevent made ``_thread``'s locks its own and no hub has been made yet.

    False where it cannot be told (an unknown gevent): nothing is waited for.
    """
    monkey = sys.modules.get("gevent.monkey")
    patched = getattr(monkey, "is_module_patched", None)
    if patched is None or not patched("_thread"):
        return False  # importlib's locks are real locks: a hub needs no import under one
    hub = sys.modules.get("gevent.hub")
    if hub is None:
        return True
    return getattr(getattr(hub, "Hub", None), "_hub_counter", None) == 0


# -- a fork while our thread imports ------------------------------------------------

#: Where our code lives: an import whose importer runs from here is ours.
_OUR_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Files of the import system's own frames, between an importer and the module.
_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
#: Names of the modules our threads were importing at the last fork's ``before`` hook.
_noted: list[str] = []


def _module_locks() -> dict[str, Any] | None:
    """CPython's per-module import locks (name -> weak reference), if it has them."""
    bootstrap = sys.modules.get("_frozen_importlib")
    locks = getattr(bootstrap, "_module_locks", None)
    return locks if isinstance(locks, dict) else None


def _held_by(lock: Any) -> int | None:
    """The thread that holds a module lock, None when nobody does (or it cannot be told)."""
    try:
        if not lock.count:  # 3.10/3.11: an int; 3.12+: a list, one entry per hold
            return None
        owner = lock.owner
    except AttributeError:
        return None
    return owner if isinstance(owner, int) else None


def note_before_fork() -> None:
    """In the forking thread, just before ``fork()``: which modules our code is importing.

    Costs a look at CPython's table of import locks, empty unless some thread
    is importing; only then are the importing threads' stacks read.
    """
    _noted.clear()
    try:
        locks = _module_locks()
        if not locks:
            return
        me = _thread.get_ident()
        importing = set()
        for ref in list(locks.values()):
            owner = _held_by(ref())
            if owner is not None and owner != me:
                importing.add(owner)
        if not importing:
            return
        frames = sys._current_frames()
        for ident in importing:
            frame = frames.get(ident)
            if frame is not None:
                _noted.extend(_our_imports(frame))
    except Exception:  # noqa: BLE001 - a fork must never fail because of us
        _noted.clear()


def _our_imports(innermost: Any) -> list[str]:
    """Modules being executed on this stack whose import our code started (directly or
    through a module our code was importing: debugpy's own imports, say)."""
    stack = []
    frame = innermost
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    names: list[str] = []
    ours = False
    importer: Any = None
    for frame in reversed(stack):  # outermost first
        code = frame.f_code
        if code.co_filename in _MACHINERY:
            continue
        if code.co_name == "<module>" and importer is not None:
            name = frame.f_globals.get("__name__")
            ours = ours or importer.f_code.co_filename.startswith(_OUR_DIR)
            if ours and isinstance(name, str):
                names.append(name)
        importer = frame
    return names


def repair_after_fork() -> None:
    """In the forked child: forget what our imports left half done (see the module doc).

    A module is forgotten only while it is still half initialised and its import
    lock is still held by a thread of the parent's; then so is that lock.
    """
    noted, _noted[:] = list(_noted), []
    try:
        locks = _module_locks()
        if locks is None:
            return
        me = _thread.get_ident()
        names = set(noted)
        names.update(name for name in list(sys.modules) if name.startswith("detrix_auto."))
        for name in names:
            ref = locks.get(name)
            owner = _held_by(ref()) if ref is not None else None
            if owner is None or owner == me:
                continue  # nobody's import is stuck on it here
            module = sys.modules.get(name)
            if module is not None and getattr(
                getattr(module, "__spec__", None), "_initializing", False
            ):
                del sys.modules[name]
            locks.pop(name, None)
    except Exception:  # noqa: BLE001, S110 - a fork must never fail because of us
        pass
