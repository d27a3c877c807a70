"""What debugpy's ``output`` events say: logpoint hits, failure reports, the app's lines.

debugpy sends one event per logpoint message (``DETRICS:m=v`` + os.linesep),
and, when an expression raises, one event with the exception's ``str()`` in
place of the whole message. The app's own redirected stdout shares the
category. This module tells them apart; it knows nothing of metrics.
"""

from __future__ import annotations

from .metrics import LOG_PREFIX, VALUE_SEPARATOR

__all__ = ["OutputParser", "failure_text", "parse_hit"]


class OutputParser:
    """Turns the ``stdout`` output events of one session into logpoint lines.

    debugpy sends one event per logpoint message, but a value may itself contain
    newlines, and nothing in DAP forbids splitting or batching. Rules, in order:
    an incomplete trailing line waits for the next event; an event that starts with
    the prefix discards a pending non-hit fragment (so ``print(end="")`` from the app
    cannot swallow a hit); inside one event, lines that do not start with the prefix
    continue the previous hit's value (a multi-line ``str``). Returns hit texts and
    the non-hit lines separately.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> tuple[list[str], list[str]]:
        if (
            text.startswith(LOG_PREFIX)
            and self._pending
            and not self._pending.startswith(LOG_PREFIX)
        ):
            self._pending = ""
        data = self._pending + text
        # split("\n"), not splitlines(): a value may hold \x0c, \x1c or U+2028, which
        # splitlines() would treat as line ends. debugpy ends lines with os.linesep.
        lines = data.split("\n")
        self._pending = lines.pop()  # "" when the text ended with a newline
        hits: list[str] = []
        other: list[str] = []
        current: list[str] | None = None
        for line in lines:
            stripped = line[:-1] if line.endswith("\r") else line
            if stripped.startswith(LOG_PREFIX):
                if current is not None:
                    hits.append("\n".join(current))
                current = [stripped]
            elif current is not None:
                current.append(stripped)
            else:
                other.append(stripped)
        if current is not None:
            hits.append("\n".join(current))
        return hits, other


def parse_hit(raw: str) -> tuple[str, tuple[str, ...]] | None:
    """``DETRICS:name=v1\\x1fv2`` -> ``("name", ("v1", "v2"))``; None if it is not one."""
    body = raw[len(LOG_PREFIX) :]
    metric, sep, value = body.partition("=")
    if not raw.startswith(LOG_PREFIX) or not sep or not metric:
        return None
    return metric, tuple(value.split(VALUE_SEPARATOR))


def failure_text(text: str) -> str | None:
    """The text of one output event if it has the form of a failure report.

    A report is the exception's ``str()`` plus a line end, alone in its event.
    The app's own ``print()`` arrives in pieces (text, separator, line end), so
    only an event that is exactly one whole line qualifies; whether it reads
    like an exception is :func:`.metrics.error_type_for`'s call.
    """
    if not text.endswith("\n"):
        return None
    stripped = text[:-1].rstrip("\r")
    if not stripped or "\n" in stripped or stripped.startswith(LOG_PREFIX):
        return None
    return stripped
