"""The ``Prefer`` request header (RFC 7240): how long a client will hold.

Only two preferences mean something to the proxy: ``wait=N`` (hold at most N seconds;
a bare ``wait`` holds until the job's deadline, as clients of predictions-style APIs
send it) and ``respond-async`` (answer as soon as the job server has accepted the job).
Every other preference, and any parameter, is ignored, as the RFC asks. A preference
given twice counts the first time; several ``Prefer`` headers are one list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

# token = 1*tchar (RFC 9110); a value is a token or a quoted-string.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ITEM = re.compile(
    rf"\s*(?P<name>{_TOKEN})(?:\s*=\s*(?P<value>{_TOKEN}|{_QUOTED}))?"
    rf"(?P<params>(?:\s*;\s*(?:{_TOKEN}(?:\s*=\s*(?:{_TOKEN}|{_QUOTED}))?)?)*)\s*"
)
_WAIT_SECONDS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a client prefers: ``wait`` seconds at most (``math.inf``: until the deadline;
    None: not asked), and whether to be answered once the job is accepted."""

    wait: float | None = None
    respond_async: bool = False

    @property
    def any(self) -> bool:
        return self.wait is not None or self.respond_async


NONE = Preferences()


def parse_prefer(values: Iterable[str]) -> Preferences:
    """The preferences of a request's ``Prefer`` header values; malformed items are
    skipped, never an error (a preference may always be ignored)."""
    seen: set[str] = set()
    wait: float | None = None
    respond_async = False
    for value in values:
        for name, argument in _items(value):
            if name in seen:
                continue
            seen.add(name)
            if name == "wait":
                wait = _wait_seconds(argument)
            elif name == "respond-async":
                respond_async = True
    return Preferences(wait, respond_async)


def _items(header: str) -> Iterable[tuple[str, str | None]]:
    position = 0
    while position < len(header):
        match = _ITEM.match(header, position)
        end = match.end() if match else position
        if match and (end == len(header) or header[end] == ","):
            value = match.group("value")
            if value is not None and value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            yield match.group("name").lower(), value
        else:
            # Not a preference: skip to the next comma outside a quoted string.
            end = _next_comma(header, end)
        position = end + 1


def _next_comma(header: str, start: int) -> int:
    quoted = escaped = False
    for index in range(start, len(header)):
        char = header[index]
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            return index
    return len(header)


def _wait_seconds(argument: str | None) -> float | None:
    if argument is None:
        return math.inf
    if _WAIT_SECONDS.fullmatch(argument) is None:
        return None  # not a number of seconds: ignored, as an unknown preference is
    return float(argument)
