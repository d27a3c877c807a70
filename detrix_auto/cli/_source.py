"""Checks of ``--at FILE:LINE`` and ``--expr`` before anything touches the target.

debugpy never refuses a logpoint on a line without code: it silently moves it
to the closest earlier line that has some (or the last line of the file), so
``observe`` compiles the file itself to say which lines hold code. Expressions
are compiled too, and their plain names are looked up among the names the code
at that line can see, because a typo would otherwise only show up as debugpy's
``name 'x' is not defined`` in place of every value.

Every check is best effort and conservative: when this interpreter cannot
compile the file (newer syntax, another encoding) the check is skipped and
debugpy's own answer is used afterwards.
"""

from __future__ import annotations

import ast
import builtins
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass

from ._common import die

__all__ = ["Location", "check_expressions", "parse_location"]

#: Names present in every frame's globals or builtins without appearing in code.
_IMPLICIT = frozenset(
    {
        "__builtins__",
        "__name__",
        "__file__",
        "__doc__",
        "__spec__",
        "__loader__",
        "__package__",
        "__cached__",
        "__annotations__",
        "__dict__",
        "__class__",
    }
)
#: Code that can create names the compiler does not see: skip the name check.
_DYNAMIC = frozenset({"globals", "vars", "locals", "exec", "eval", "setattr", "__dict__"})


@dataclass
class Location:
    path: str
    line: int
    #: The code object whose lines include ``line`` (innermost), when known.
    code: types.CodeType | None = None
    #: Every code object of the file, when it compiled.
    module: types.CodeType | None = None
    star_import: bool = False


def _walk(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _walk(const)


def _lines(code: types.CodeType) -> set[int]:
    return {line for _, _, line in code.co_lines() if line is not None and line > 0}


def parse_location(text: str, search_dirs: list[str]) -> Location:
    """``FILE:LINE`` to an absolute path and a line holding code; exits with a clear message."""
    path_text, sep, line_text = text.rpartition(":")
    if not sep or not path_text or not line_text.strip().isdigit():
        die(f"--at {text!r} is not FILE:LINE (for example app.py:42)", 2)
    line = int(line_text)
    if line < 1:
        die(f"--at {text!r}: line numbers start at 1", 2)
    path = os.path.abspath(os.path.expanduser(path_text))
    if not os.path.isfile(path) and not os.path.isabs(os.path.expanduser(path_text)):
        for directory in search_dirs:
            candidate = os.path.join(directory, path_text)
            if directory and os.path.isfile(candidate):
                path = os.path.abspath(candidate)
                break
    if not os.path.exists(path):
        die(f"{path_text} does not exist (looked for {path})")
    if not os.path.isfile(path):
        die(f"{path_text} is not a file")
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        die(f"cannot read {path_text}: {exc.strerror or exc}")
    total = source.count(b"\n") + (0 if source.endswith(b"\n") or not source else 1)
    if line > total:
        die(f"{path_text} has only {total} line(s); line {line} does not exist")
    location = Location(path, line)
    try:
        module = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return location  # e.g. syntax of a newer Python: leave it to debugpy
    location.module = module
    code_lines: set[int] = set()
    best: types.CodeType | None = None
    for code in _walk(module):
        lines = _lines(code)
        code_lines |= lines
        # Prefer the innermost code object: a nested one starts after its parent.
        if line in lines and (best is None or code.co_firstlineno >= best.co_firstlineno):
            best = code
    if line not in code_lines:
        before = max((n for n in code_lines if n < line), default=None)
        after = min((n for n in code_lines if n > line), default=None)
        near = " and ".join(str(n) for n in (before, after) if n is not None)
        text_line = _source_line(source, line)
        what = "a blank line" if not text_line.strip() else f"`{text_line.strip()[:60]}`"
        hint = f"; the nearest lines with code are {near}" if near else ""
        die(f"line {line} of {path_text} holds no code ({what}){hint}")
    location.code = best
    location.star_import = b"import *" in source
    return location


def _source_line(source: bytes, line: int) -> str:
    lines = source.decode("utf-8", "replace").splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""


def check_expressions(expressions: list[str], location: Location) -> None:
    """Syntax of every expression; names that nothing at that line could define."""
    for expr in expressions:
        try:
            tree = ast.parse(expr.strip(), mode="eval")
        except SyntaxError as exc:
            die(f"--expr {expr!r} is not a Python expression: {exc.msg}", 2)
        if location.code is None or location.module is None or location.star_import:
            continue
        visible = _visible_names(location.code, location.module)
        if visible is None:
            continue
        for name in sorted(_free_names(tree)):
            if name not in visible:
                local = sorted(
                    n
                    for n in (
                        *location.code.co_varnames,
                        *location.code.co_cellvars,
                        *location.code.co_freevars,
                    )
                    if not n.startswith(".")
                )
                shown = ", ".join(local[:12]) + (", ..." if len(local) > 12 else "")
                where = f"; local names there: {shown}" if shown else ""
                die(
                    f"--expr {expr!r}: name {name!r} is not defined at "
                    f"{os.path.basename(location.path)}:{location.line}{where}"
                )


def _visible_names(code: types.CodeType, module: types.CodeType) -> set[str] | None:
    """Locals of the frame at the line, plus anything the file could make global."""
    names: set[str] = set(code.co_varnames) | set(code.co_cellvars) | set(code.co_freevars)
    for each in _walk(module):
        if _DYNAMIC & set(each.co_names):
            return None
        # co_names also holds attribute names: more names, fewer false alarms.
        names |= set(each.co_names)
    names |= set(module.co_varnames)
    names |= set(dir(builtins)) | _IMPLICIT
    return names


def _free_names(tree: ast.AST) -> set[str]:
    """Names an expression reads that it does not bind itself."""
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound
