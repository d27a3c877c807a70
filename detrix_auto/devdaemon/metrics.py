"""What a metric is and what its captured values look like: rules, no I/O.

A metric is a logpoint with a name and one or more expressions. Its logpoint
message is ``DETRICS:<name>={e1}\\x1f{e2}...``, which debugpy turns into
``'DETRICS:<name>=%s\\x1f%s' % (e1, e2,)`` and evaluates at the line: so the
name must not hold ``%``, ``=``, braces or U+001F, and each expression must
have balanced braces (debugpy reads an expression up to the ``}`` that closes
it). The name rules are the real daemon's (``Metric::validate_name``), so a
name that works here works there.

Values arrive as the ``str()`` of each result. :func:`typed_value` infers a
type from that text, as the real daemon does, with two corrections: its
``valueJson`` is always valid JSON (the real daemon passes text that is not
JSON through unchanged), and Python's ``True``/``False``/``None`` are read as
the bool and null they are.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LOG_PREFIX",
    "MAX_EXPRESSIONS",
    "MAX_EXPRESSION_LENGTH",
    "MAX_NAME_LENGTH",
    "VALUE_SEPARATOR",
    "ErrorCode",
    "Codes",
    "MetricRuleError",
    "MetricSpec",
    "ServiceError",
    "check_expressions",
    "check_name",
    "error_type_for",
    "log_message",
    "log_message_for",
    "parse_location",
    "typed_value",
]

#: Prefix of every logpoint message; how a hit is told apart from the app's output.
LOG_PREFIX = "DETRICS:"
#: Separates the values of a multi-expression metric inside one message.
VALUE_SEPARATOR = "\x1f"
#: The real daemon's limits (``MAX_METRIC_NAME_LEN`` and ``[limits]`` defaults).
MAX_NAME_LENGTH = 255
MAX_EXPRESSIONS = 20
MAX_EXPRESSION_LENGTH = 10_000
_RESERVED_NAMES = frozenset({"all", "none", "system", "detrix", "internal"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ErrorCode:
    """One of the real daemon's error codes (``detrix-core`` ``ErrorCode``)."""

    number: int
    name: str
    category: str

    @property
    def retryable(self) -> bool:
        return self.category == "retryable"


class Codes:
    """The codes the embedded daemon answers with (numbers as in the real daemon)."""

    METRIC_NOT_FOUND = ErrorCode(1001, "METRIC_NOT_FOUND", "terminal")
    METRIC_INVALID_NAME = ErrorCode(1002, "METRIC_INVALID_NAME", "terminal")
    METRIC_INVALID_LOCATION = ErrorCode(1003, "METRIC_INVALID_LOCATION", "terminal")
    METRIC_DUPLICATE = ErrorCode(1004, "METRIC_DUPLICATE", "terminal")
    METRIC_LOCATION_CONFLICT = ErrorCode(1005, "METRIC_LOCATION_CONFLICT", "terminal")
    METRIC_INVALID_EXPRESSION = ErrorCode(1006, "METRIC_INVALID_EXPRESSION", "terminal")
    METRIC_EXPRESSION_TOO_LONG = ErrorCode(1007, "METRIC_EXPRESSION_TOO_LONG", "terminal")
    INVALID_REQUEST = ErrorCode(3001, "CONFIG_INVALID", "terminal")
    CONNECTION_NOT_FOUND = ErrorCode(4002, "CONNECTION_NOT_FOUND", "terminal")
    ADAPTER_ERROR = ErrorCode(5002, "ADAPTER_ERROR", "retryable")
    UNAUTHORIZED = ErrorCode(6001, "UNAUTHORIZED", "security")
    INTERNAL_ERROR = ErrorCode(9001, "INTERNAL_ERROR", "internal")


class ServiceError(Exception):
    """An operation the daemon refuses or could not do: ``status`` and ``code`` for the answer."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class MetricRuleError(ServiceError, ValueError):
    """A metric that breaks a rule (400); ``code`` says which."""

    def __init__(self, message: str, code: ErrorCode = Codes.METRIC_INVALID_EXPRESSION) -> None:
        super().__init__(400, code, message)


def check_name(name: object) -> str:
    """The real daemon's name rules: 1-255 of ``[A-Za-z0-9_-]``, a letter or ``_`` first,
    no ``--`` or ``__``, not a reserved word."""
    code = Codes.METRIC_INVALID_NAME
    if not isinstance(name, str) or not name:
        raise MetricRuleError("metric name must be a non-empty string", code)
    if len(name) > MAX_NAME_LENGTH:
        raise MetricRuleError(f"metric name is longer than {MAX_NAME_LENGTH} characters", code)
    if not _NAME.fullmatch(name):
        raise MetricRuleError(
            f"metric name {name!r} must start with a letter or '_' and hold only letters, "
            "digits, '_' and '-'",
            code,
        )
    if "--" in name or "__" in name:
        raise MetricRuleError(f"metric name {name!r} must not contain '--' or '__'", code)
    if name.lower() in _RESERVED_NAMES:
        raise MetricRuleError(f"metric name {name!r} is reserved", code)
    return name


def check_expressions(expressions: object) -> tuple[str, ...]:
    """1-20 expressions, each non-empty, one line, <= 10 000 characters, braces balanced.

    Returned stripped, as debugpy strips them anyway.
    """
    if isinstance(expressions, str) or not isinstance(expressions, (list, tuple)):
        raise MetricRuleError("expressions must be a list of strings")
    if not expressions:
        raise MetricRuleError("a metric needs at least one expression")
    if len(expressions) > MAX_EXPRESSIONS:
        raise MetricRuleError(
            f"{len(expressions)} expressions; a metric takes at most {MAX_EXPRESSIONS}"
        )
    checked: list[str] = []
    for expr in expressions:
        if not isinstance(expr, str) or not expr.strip():
            raise MetricRuleError("every expression must be a non-empty string")
        if len(expr) > MAX_EXPRESSION_LENGTH:
            raise MetricRuleError(
                f"an expression of {len(expr)} characters; the limit is {MAX_EXPRESSION_LENGTH}",
                Codes.METRIC_EXPRESSION_TOO_LONG,
            )
        if any(ch in expr for ch in "\r\n" + VALUE_SEPARATOR):
            raise MetricRuleError(
                f"expression {expr[:80]!r} must fit on one line and must not hold U+001F"
            )
        if not _braces_balance(expr):
            raise MetricRuleError(
                f"expression {expr[:80]!r} has unbalanced braces: debugpy reads an expression "
                "up to the '}' that closes it (write a lone brace as chr(123) or chr(125))"
            )
        checked.append(expr.strip())
    return tuple(checked)


def _braces_balance(expr: str) -> bool:
    depth = 0
    for ch in expr:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def log_message(name: str, expressions: tuple[str, ...]) -> str:
    """The logpoint message the real daemon builds: ``DETRICS:m={a}\\x1f{b}``."""
    return f"{LOG_PREFIX}{name}=" + VALUE_SEPARATOR.join(f"{{{e}}}" for e in expressions)


def parse_location(value: object) -> tuple[str, int]:
    """``{"file": ..., "line": N}`` or ``"file.py#42"`` (``"@file.py#42"``, ``"./f.py#42"`` too)."""
    code = Codes.METRIC_INVALID_LOCATION
    if isinstance(value, dict):
        file, line = value.get("file"), value.get("line")
    elif isinstance(value, str):
        text = value.strip()
        text = text.removeprefix("@")
        file, sep, line_text = text.rpartition("#")
        if not sep or not line_text.isdigit() or not line_text.isascii():
            raise MetricRuleError(
                f"location {value[:200]!r} is not FILE#LINE (for example app.py#42)", code
            )
        line = int(line_text)
        file = file.removeprefix("./")
    else:
        raise MetricRuleError('location must be {"file": ..., "line": N} or "FILE#LINE"', code)
    if not isinstance(file, str) or not file.strip() or "\x00" in file:
        raise MetricRuleError("location needs a file", code)
    if isinstance(line, bool) or not isinstance(line, int) or not 1 <= line <= 2**31:
        raise MetricRuleError("location needs a line number of at least 1", code)
    return file, line


# -- values ---------------------------------------------------------------------------


_NOT_JSON = object()


def _no_constant(text: str) -> Any:
    raise ValueError(text)  # NaN and Infinity are not JSON


def typed_value(text: str) -> tuple[str, dict[str, Any] | None]:
    """``(valueJson, typedValue)`` for the ``str()`` text of one value.

    * ``True``/``False`` -> JSON bool, ``{"boolValue": ...}``
    * ``None`` -> ``null``, no typed value
    * a JSON number -> the text itself, ``{"numericValue": float}`` (an integer too
      large for a float keeps its digits in ``valueJson``)
    * a JSON array or object -> the text itself, no typed value
    * anything else (``{'a': 1}``, ``inf``, ``BTCUSD``) -> a JSON string, ``{"stringValue": text}``
    """
    if text in ("True", "False"):
        return ("true" if text == "True" else "false"), {"boolValue": text == "True"}
    if text == "None":
        return "null", None
    stripped = text.strip()
    if stripped and (stripped[0] in "-0123456789[{"):
        try:
            parsed = json.loads(stripped, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            parsed = _NOT_JSON
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            try:
                number = float(parsed)
            except OverflowError:  # an integer beyond any float: its digits, untyped
                return stripped, None
            return stripped, ({"numericValue": number} if math.isfinite(number) else None)
        if isinstance(parsed, (list, dict)):
            return stripped, None
    return json.dumps(text), {"stringValue": text}


def display_text(value: dict[str, Any]) -> str:
    """The ``str()`` text a value stood for, from its event JSON (for a CLI)."""
    typed = value.get("typedValue")
    if isinstance(typed, dict):
        if "stringValue" in typed:
            return str(typed["stringValue"])
        if "boolValue" in typed:
            return "True" if typed["boolValue"] else "False"
    raw = value.get("valueJson")
    if raw == "null":
        return "None"
    return str(raw)


#: Shapes of ``str(exception)`` debugpy sends in place of a logpoint's message,
#: checked in order; the first match names the exception type.
_ERROR_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"^name '[^']+' is not defined", "NameError"),
        (r"^cannot access (free|local) variable", "NameError"),
        (r"has no attribute '", "AttributeError"),
        (r"division by zero|modulo by zero", "ZeroDivisionError"),
        (r"index out of range", "IndexError"),
        (
            r"^unsupported operand type|^can only concatenate|object is not (subscriptable|"
            r"callable|iterable)|^bad operand type|argument(s)? (must|after)|takes \d+ positional"
            r"|missing \d+ required|not supported between instances|unhashable type",
            "TypeError",
        ),
        (
            r"^invalid literal for|^could not convert|^math domain error|too many values to unpack"
            r"|not enough values to unpack",
            "ValueError",
        ),
        (r"^No module named ", "ModuleNotFoundError"),
        (r"\(<string>, line \d+\)$", "SyntaxError"),
        (r"^maximum recursion depth", "RecursionError"),
        (r"^'[^'\n]*'$|^\"[^\"\n]*\"$", "KeyError"),
    )
)


def error_type_for(text: str) -> str | None:
    """The exception type whose message ``text`` looks like, or None if it looks like none."""
    for pattern, name in _ERROR_SHAPES:
        if pattern.search(text):
            return name
    return None


def error_names(text: str) -> set[str]:
    """Identifiers an error message names (``name 'x'``, ``attribute 'y'``), to tell
    which metric's expression raised when a connection has several."""
    return set(re.findall(r"(?:name|attribute|variable) '([A-Za-z_][A-Za-z0-9_]*)'", text))


# -- the Python API's metric ------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A logpoint to install: ``expressions`` evaluated at ``path:line``.

    The Python API's way to add a metric (tests, ``python -m detrix_auto.devdaemon
    --metric``). ``connection_id=None`` applies it to every connection, present
    and future. Validated on construction with the rules of the HTTP API, because
    a bad name or brace would otherwise give a logpoint that silently never reports.
    """

    name: str
    path: str
    line: int
    expressions: tuple[str, ...]
    connection_id: str | None = None

    def __post_init__(self) -> None:
        expressions = self.expressions
        if isinstance(expressions, str):
            expressions = (expressions,)
        object.__setattr__(self, "expressions", check_expressions(list(expressions)))
        check_name(self.name)
        if not isinstance(self.path, str) or not self.path:
            raise MetricRuleError(
                "metric path must be a non-empty string", Codes.METRIC_INVALID_LOCATION
            )
        if isinstance(self.line, bool) or not isinstance(self.line, int) or self.line < 1:
            raise MetricRuleError(
                f"metric line must be an integer >= 1, got {self.line!r}",
                Codes.METRIC_INVALID_LOCATION,
            )

    @property
    def abspath(self) -> str:
        """The absolute path sent to debugpy (relative paths resolve against our cwd)."""
        return os.path.abspath(self.path)


def log_message_for(spec: MetricSpec) -> str:
    """The logpoint message of a :class:`MetricSpec`."""
    return log_message(spec.name, spec.expressions)
