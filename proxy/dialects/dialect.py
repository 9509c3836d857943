"""Dialects: the job server's protocol as data, so that any callback API can be held.

A dialect (a TOML file; ``proxy/dialects/`` holds the built-in ones, ``work-sample`` and
``predictions``) says how to start a job (method, path, which of the client's fields
are passed on, which are set, where the callback URL goes, which headers go along),
which client requests are held (a body field, a ``Prefer: wait`` header, or all), the
*lane* (what the job server serialises or rate-limits: a body field, a header, or
nothing), where a job's id and state are (JSON pointers), which states are final and
which of those are failures, and where a job's status is read.

It is compiled once, at start-up, into a :class:`Dialect`: pointers become tuples of
keys, the fixed fields a dict; a request costs a few lookups. A file that is wrong stops
start-up with one line naming the file and the key (:class:`DialectError`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import orjson

from proxy.bodies import CALLBACK_URL, MAX_CALLBACK_LENGTH, parse_object
from proxy.errors import BadRequest, UpstreamBadResponse

BUILT_IN = ("work-sample", "predictions")
MAX_LANE_LENGTH = 256  # a body field's
MAX_LANE_HEADER_LENGTH = 4_096  # a header's (a bearer token may be long)
MAX_JOB_ID_LENGTH = 256
HTTP_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CALLBACK = re.compile(CALLBACK_URL)

Job = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


class DialectError(ValueError):
    """A dialect that cannot be used: the message names the file and the key."""


class UnreadableJob(ValueError):
    """What the job server sent is not a job of the dialect: the message says why."""


@dataclass(frozen=True, slots=True)
class Pointer:
    """A JSON pointer (RFC 6901) into an object: ``/a/b`` is ``("a", "b")``."""

    keys: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pointer:
        if not text.startswith("/") or text == "/":
            raise ValueError(f"{text!r} is not a JSON pointer to a field (such as /id)")
        keys = tuple(part.replace("~1", "/").replace("~0", "~") for part in text[1:].split("/"))
        return cls(keys)

    @property
    def name(self) -> str:
        """The field's name, for messages that name it."""
        return self.keys[-1]

    def get(self, document: Any, default: Any = None) -> Any:
        """The value the pointer points at; ``default`` where there is none."""
        for key in self.keys:
            if not isinstance(document, dict) or key not in document:
                return default
            document = document[key]
        return document

    def set(self, document: dict[str, Any], value: Any) -> None:
        """Set the value, making the objects on the way (copies: the objects of the
        document it was copied from are left as they were)."""
        for key in self.keys[:-1]:
            inner = document.get(key)
            document[key] = inner = dict(inner) if isinstance(inner, dict) else {}
            document = inner
        document[self.keys[-1]] = value


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a client asks for, as the dialect reads it."""

    #: The lane its start goes in (the work sample's account); "" when the dialect has none.
    lane: str
    #: Whether the proxy holds it (else it is forwarded as the job server's own request).
    held: bool
    #: The client's own callback URL, passed on with a forwarded request.
    callback: str | None
    #: The client's fields the dialect passes on, in order.
    fields: dict[str, Any]
    #: The client's headers the dialect passes on.
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def fingerprint(self) -> dict[str, Any]:
        """What the request means, for an Idempotency-Key's retry to be compared by."""
        return {"lane": self.lane, "held": self.held, "callback": self.callback, **self.fields}


@dataclass(frozen=True, slots=True)
class Dialect:
    """A job server's protocol, compiled (see the module docstring)."""

    name: str
    start_method: str
    start_path: str
    keep: tuple[str, ...] | None  # None: every field
    callback: Pointer
    held_fields: dict[str, Any]
    forwarded_fields: dict[str, Any]
    pass_headers: frozenset[bytes]
    hold_by: Literal["body", "prefer", "always"]
    hold: Pointer | None
    lane_by: Literal["body", "header", "none"]
    lane: Pointer | None
    lane_header: bytes
    job_id_at: Pointer
    state_at: Pointer
    final: frozenset[str]
    failed: frozenset[str]
    status_path: str

    # -- the client's request

    def parse(
        self, body: bytes, headers: Iterable[tuple[bytes, bytes]], asks_proxy: bool
    ) -> JobRequest:
        """The client's request, checked; ``asks_proxy``: whether it asked the proxy to
        hold or track it (``Prefer: wait`` or ``respond-async``, an event stream).
        BadRequest names the dialect's field that is wrong."""
        document = parse_object(body)
        lane = self._lane(document, headers)
        held = self._held(document, asks_proxy)
        callback = self.callback.get(document)
        if callback is not None and not (
            isinstance(callback, str)
            and len(callback) <= MAX_CALLBACK_LENGTH
            and _CALLBACK.fullmatch(callback)
        ):
            raise BadRequest(
                f"{self.callback.name}: an http(s) URL (or host[:port]/path) of at most "
                f"{MAX_CALLBACK_LENGTH} characters"
            )
        if self.keep is None:
            fields = document
        else:
            fields = {key: document[key] for key in self.keep if key in document}
        passed: tuple[tuple[bytes, bytes], ...] = ()
        if self.pass_headers:
            passed = tuple((n, v) for n, v in headers if n in self.pass_headers)
        return JobRequest(lane, held, callback, fields, passed)

    def _lane(self, document: dict[str, Any], headers: Iterable[tuple[bytes, bytes]]) -> str:
        if self.lane_by == "body":
            assert self.lane is not None
            lane = self.lane.get(document)
            if not isinstance(lane, str) or not lane:
                raise BadRequest(f"{self.lane.name}: a non-empty string is required")
            if len(lane) > MAX_LANE_LENGTH:
                raise BadRequest(f"{self.lane.name}: at most {MAX_LANE_LENGTH} characters")
            return lane
        if self.lane_by == "header":
            value = next((v for n, v in headers if n == self.lane_header), b"")
            if not value or len(value) > MAX_LANE_HEADER_LENGTH:
                raise BadRequest(
                    f"{self.lane_header.decode()}: a header of 1 to "
                    f"{MAX_LANE_HEADER_LENGTH} characters is required"
                )
            return value.decode("latin-1")
        return ""

    def _held(self, document: dict[str, Any], asks_proxy: bool) -> bool:
        if self.hold_by == "always":
            return True
        if self.hold_by == "prefer":
            return asks_proxy
        assert self.hold is not None
        held = self.hold.get(document, False)  # absent: not held; null: not a boolean
        if not isinstance(held, bool):
            raise BadRequest(f"{self.hold.name}: must be true or false")
        return held

    def upstream_body(self, request: JobRequest, callback: str | None) -> bytes:
        """The body of the job server's start: the kept fields, the fixed ones, and the
        callback URL (the proxy's for a held request, the client's own else)."""
        body = dict(request.fields)
        body.update(self.held_fields if request.held else self.forwarded_fields)
        if callback is not None:
            self.callback.set(body, callback)
        return orjson.dumps(body)

    # -- a job as the job server writes it

    def read(self, job: Any, *, with_state: bool = True) -> tuple[str, str | None]:
        """A job as the job server wrote it (a start's answer, a callback, a status
        answer): its id and its state, where the dialect says. The one reading of a job:
        UnreadableJob says what is missing; ``with_state=False`` lets a start's answer
        come without a state."""
        if not isinstance(job, dict):
            raise UnreadableJob("it is not a JSON object")
        job_id = self.job_id_at.get(job)
        if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_LENGTH:
            raise UnreadableJob(f"it has no valid job id at {self._at(self.job_id_at)}")
        state = self.state(job)
        if state is None and with_state:
            raise UnreadableJob(f"it has no job state at {self._at(self.state_at)}")
        return job_id, state

    def job_id(self, job: Any) -> str:
        """The id of the job a start's answer names; UpstreamBadResponse when none."""
        try:
            return self.read(job, with_state=False)[0]
        except UnreadableJob as exc:
            raise UpstreamBadResponse(f"the job server's answer is not a job: {exc}") from None

    def state(self, job: Any) -> str | None:
        state = self.state_at.get(job)
        return state if isinstance(state, str) else None

    def is_final(self, job: Any) -> bool:
        return self.state(job) in self.final

    def is_failed(self, state: str) -> bool:
        return state in self.failed

    def status_of(self, job_id: str) -> str:
        """The path of a job's status."""
        return self.status_path.replace("{id}", quote(job_id, safe=""))

    @staticmethod
    def _at(pointer: Pointer) -> str:
        return "/" + "/".join(pointer.keys)


def dialect_source(name_or_path: str) -> tuple[str, str]:
    """A dialect's TOML text and where it came from: a built-in name, or a file's path."""
    if name_or_path in BUILT_IN:
        text = resources.files("proxy.dialects").joinpath(f"{name_or_path}.toml").read_text()
        return text, f"the built-in dialect {name_or_path}"
    path = Path(name_or_path)
    try:
        return path.read_text(), str(path)
    except OSError as exc:
        raise DialectError(
            f"{name_or_path}: not a built-in dialect ({', '.join(BUILT_IN)}) and not a "
            f"readable file ({exc.strerror or exc})"
        ) from None


def load_dialect(name_or_path: str) -> Dialect:
    """Compile a dialect; DialectError names the file and the key that are wrong."""
    text, origin = dialect_source(name_or_path)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DialectError(f"{origin}: not TOML: {exc}") from None
    reader = _Reader(table, origin)
    start, hold, lane, job, status = (
        reader.table(name) for name in ("start", "hold", "lane", "job", "status")
    )
    keep = reader.value(start, "start.keep", (list, str))
    if isinstance(keep, str) and keep != "*":
        raise reader.error("start.keep", 'a list of field names, or "*" for all of them')
    hold_by = reader.choice(hold, "hold.by", ("body", "prefer", "always"))
    lane_by = reader.choice(lane, "lane.by", ("body", "header", "none"))
    final = reader.strings(job, "job.final")
    failed = reader.strings(job, "job.failed")
    if not final:
        raise reader.error("job.final", "at least one state must end a job")
    if not set(failed) <= set(final):
        raise reader.error("job.failed", "failures must be final states too")
    method = reader.value(start, "start.method", str).upper()
    if method not in HTTP_METHODS:
        raise reader.error("start.method", f"one of {', '.join(sorted(HTTP_METHODS))}")
    status_path = reader.path(status, "status.path")
    if "{id}" not in status_path:
        raise reader.error("status.path", "it must hold {id}, where the job's id goes")
    return Dialect(
        name=reader.value(table, "name", str),
        start_method=method,
        start_path=reader.path(start, "start.path"),
        keep=None if keep == "*" else tuple(reader.strings(start, "start.keep")),
        callback=reader.pointer(start, "start.callback"),
        held_fields=reader.value(start, "start.held", dict),
        forwarded_fields=reader.value(start, "start.forwarded", dict),
        pass_headers=frozenset(h.lower().encode() for h in reader.strings(start, "start.headers")),
        hold_by=hold_by,  # type: ignore[arg-type]
        hold=reader.pointer(hold, "hold.pointer") if hold_by == "body" else None,
        lane_by=lane_by,  # type: ignore[arg-type]
        lane=reader.pointer(lane, "lane.pointer") if lane_by == "body" else None,
        lane_header=(
            reader.value(lane, "lane.header", str).lower().encode() if lane_by == "header" else b""
        ),
        job_id_at=reader.pointer(job, "job.id"),
        state_at=reader.pointer(job, "job.state"),
        final=frozenset(final),
        failed=frozenset(failed),
        status_path=status_path,
    )


class _Reader:
    """Reads a dialect's table; every error names the file and the key."""

    def __init__(self, table: dict[str, Any], origin: str) -> None:
        self._table = table
        self._origin = origin

    def error(self, key: str, problem: str) -> DialectError:
        return DialectError(f"bad dialect key {key} (in {self._origin}): {problem}")

    def table(self, name: str) -> dict[str, Any]:
        return self.value(self._table, name, dict)  # type: ignore[no-any-return]

    def value(self, table: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
        name = key.rsplit(".", 1)[-1]
        if name not in table:
            raise self.error(key, "missing")
        value = table[name]
        if not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            words = " or ".join(_KIND_WORDS[k] for k in kinds)
            raise self.error(key, f"must be {words}, not {value!r}")
        return value

    def strings(self, table: dict[str, Any], key: str) -> list[str]:
        values = self.value(table, key, list)
        if not all(isinstance(value, str) and value for value in values):
            raise self.error(key, "must be a list of non-empty strings")
        return list(values)

    def choice(self, table: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
        value = self.value(table, key, str)
        if value not in choices:
            raise self.error(key, f"one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def pointer(self, table: dict[str, Any], key: str) -> Pointer:
        try:
            return Pointer.parse(self.value(table, key, str))
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def path(self, table: dict[str, Any], key: str) -> str:
        value = str(self.value(table, key, str))
        if not value.startswith("/") or any(c in value for c in " \r\n?#"):
            raise self.error(key, "a path that starts with / (no query, no spaces)")
        return value


_KIND_WORDS = {str: "a string", list: "a list", dict: "a table", bool: "true or false"}
