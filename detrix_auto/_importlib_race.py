"""Keep a first ``import importlib`` in one thread from breaking another thread's.

CPython's ``importlib/__init__.py`` puts the interpreter's own, set-up import
machinery (the frozen ``_frozen_importlib`` and ``_frozen_importlib_external``)
into ``sys.modules`` under ``importlib._bootstrap`` and
``importlib._bootstrap_external`` a few lines into its body. Meanwhile the
half-initialised package is already in ``sys.modules``, and an import of one of
its submodules by another thread does not wait for it: ``importlib.machinery``
(``from ._bootstrap import ModuleSpec``) then loads a *fresh, never set-up* copy
of the bootstrap, whose functions lack ``sys``. Its classes are not the
interpreter's (``ModuleSpec`` is another class), and once the copy replaces the
package's ``_bootstrap`` attribute every ``importlib.import_module`` fails with
``NameError: name 'sys' is not defined``. Reproduced on 3.10-3.13 by pausing one
thread inside the package's body while another imports ``importlib.machinery``.

A wake is the first time our thread imports ``importlib`` (``_pydevd``, debugpy,
``inspect``), and a host often does too while it starts (``multiprocessing``'s
spawn workers run ``runpy``, which imports ``importlib.machinery``): a worker
woken while it started failed its wake that way, and the host's own importlib
could have been the broken one. So before our thread imports anything, the two
entries the package would add are added first, with the very objects it adds:
whichever thread then runs the package's body or imports a submodule finds the
real machinery. Nothing else changes: a process that has imported ``importlib``
already (most) is left as it is.
"""

from __future__ import annotations

import sys

__all__ = ["settle"]

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
