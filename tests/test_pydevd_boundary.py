"""Only ``detrix_auto/_pydevd.py`` may name debugpy's private parts (pydevd).

pydevd's internals change between debugpy releases without notice. Keeping every
access to them in one module, which probes them once and never raises, is what lets
a new debugpy degrade to "tracing stays after sleep" instead of a failed wake. This
test keeps it that way: no other module of the package may import a pydevd module,
or use a name or string that mentions pydev (docstrings and comments aside).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "detrix_auto"
ALLOWED = {"_pydevd.py"}
#: Modules that may *say* "pydevd" in a string, without touching it: _boot recognises
#: pydevd's helper interpreters by their command line, before anything is imported.
SAYS_ONLY = {"_boot.py"}
#: A string that names something (no spaces), as opposed to a sentence in a message.
IDENTIFIER = re.compile(r"^[\w.]+$")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _mentions(tree: ast.AST, *, strings: bool = True) -> list[str]:
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if strings and id(node) not in docs and IDENTIFIER.match(node.value):
                names = [node.value]
        for name in names:
            if name in ("_pydevd", "detrix_auto._pydevd"):  # our own module
                continue
            if "pydev" in name.lower() or name == "py_db":
                found.append(f"line {getattr(node, 'lineno', '?')}: {name[:60]!r}")
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ALLOWED),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_only_the_pydevd_module_names_pydevd_internals(path):
    tree = ast.parse(path.read_text(), str(path))
    assert _mentions(tree, strings=path.name not in SAYS_ONLY) == [], (
        f"{path.name} names pydevd internals; move that to _pydevd.py"
    )


def test_the_check_sees_a_mention():
    """The check itself: a module that reaches into pydevd is caught."""
    tree = ast.parse("import pydevd\nx = sys.modules.get('pydevd')\nt.pydev_do_not_trace = 1\n")
    assert len(_mentions(tree)) == 3
