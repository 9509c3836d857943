"""What a held request's headers ask of the proxy (:class:`Wishes`): an
``Idempotency-Key``, an event stream (``Accept: text/event-stream``), and the ``Prefer``
request header (RFC 7240): how long a client will hold.

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

from starlette.types import Scope

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


EVENT_STREAM = b"text/event-stream"


@dataclass(frozen=True, slots=True)
class Wishes:
    """What a request's headers ask of the proxy, read in one pass."""

    keyed: bool = False
    prefer: Preferences = NONE
    stream: bool = False

    @property
    def asks_proxy(self) -> bool:
        """Whether the client asked the proxy to hold or track its job (a dialect that
        holds by ``Prefer`` holds only such requests)."""
        return self.stream or self.prefer.any

    @property
    def tracked(self) -> bool:
        """Whether the client may come back to its job (it gets a ref): a bare ``Prefer:
        wait`` holds until the deadline, as a plain hold."""
        wait = self.prefer.wait
        return self.stream or self.prefer.respond_async or (wait is not None and wait < math.inf)


PLAIN = Wishes()


def read_wishes(scope: Scope) -> Wishes:
    """The request's ``Idempotency-Key``, ``Prefer`` and ``Accept``, in one pass."""
    keyed = stream = False
    prefer: list[str] = []
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            keyed = True
        elif name == b"prefer":
            prefer.append(value.decode("latin-1"))
        elif name == b"accept" and EVENT_STREAM in value:
            stream = True
    if not (keyed or stream or prefer):
        return PLAIN
    return Wishes(keyed, parse_prefer(prefer) if prefer else NONE, stream)


def idempotency_key(scope: Scope) -> str:
    """The request's ``Idempotency-Key`` (it has one: ``Wishes.keyed``)."""
    key: bytes = next(value for name, value in scope["headers"] if name == b"idempotency-key")
    return key.decode("latin-1")
