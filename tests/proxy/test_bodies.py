"""Reading request bodies within a limit."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
from starlette.requests import Request
from starlette.types import Message

from proxy.bodies import parse_object, read_body
from proxy.errors import BadRequest, BodyTooLarge


class Upload:
    """An ASGI request whose body arrives in the given chunks; counts the chunks read."""

    def __init__(self, chunks: Sequence[bytes], content_length: str | None = None) -> None:
        self.chunks = list(chunks)
        self.read = 0
        headers = [] if content_length is None else [(b"content-length", content_length.encode())]
        scope = {"type": "http", "method": "POST", "path": "/proxy", "headers": headers}
        self.request = Request(scope, self._receive)

    async def _receive(self) -> Message:
        if self.read == len(self.chunks):
            return {"type": "http.disconnect"}
        chunk = self.chunks[self.read]
        self.read += 1
        return {"type": "http.request", "body": chunk, "more_body": self.read < len(self.chunks)}


# read_body


async def test_body_within_the_limit_is_read_whole() -> None:
    """A body up to the limit is returned whole, chunks joined."""
    upload = Upload([b"ab", b"cd", b"e"], content_length="5")
    assert await read_body(upload.request, limit=5) == b"abcde"


async def test_empty_body_is_empty() -> None:
    """A request without a body reads as b''."""
    assert await read_body(Upload([b""]).request, limit=5) == b""


async def test_declared_length_over_the_limit_is_refused_unread() -> None:
    """A Content-Length over the limit is a 413 before any of the body is read."""
    upload = Upload([b"x" * 10], content_length="10")
    with pytest.raises(BodyTooLarge) as raised:
        await read_body(upload.request, limit=9)
    assert raised.value.status_code == 413
    assert upload.read == 0


async def test_streamed_body_over_the_limit_is_refused_early() -> None:
    """Without Content-Length, reading stops with 413 at the first chunk past the limit."""
    upload = Upload([b"x" * 4, b"x" * 4, b"x" * 4, b"x" * 4])
    with pytest.raises(BodyTooLarge):
        await read_body(upload.request, limit=6)
    assert upload.read == 2


async def test_understated_content_length_is_still_limited() -> None:
    """A body longer than its (small) Content-Length is still cut off at the limit."""
    upload = Upload([b"x" * 8, b"x" * 8], content_length="3")
    with pytest.raises(BodyTooLarge):
        await read_body(upload.request, limit=10)


@pytest.mark.parametrize("declared", ["abc", "-1", "1.5", " 7", "0x10"])
async def test_malformed_content_length_is_400(declared: str) -> None:
    """A Content-Length that is not a decimal number is a 400."""
    with pytest.raises(BadRequest) as raised:
        await read_body(Upload([b"{}"], content_length=declared).request, limit=100)
    assert raised.value.status_code == 400


@pytest.mark.parametrize("declared", ["\u00b2", "1\u00b9", "\u00b3\u00b3"])
async def test_non_ascii_digits_in_content_length_are_400(declared: str) -> None:
    """Latin-1 superscript digits in Content-Length are a 400, not an unexpected error."""
    upload = Upload([b"{}"])
    # Header values are latin-1: str.isdigit() is true for these, int() refuses them.
    upload.request.scope["headers"] = [(b"content-length", declared.encode("latin-1"))]
    with pytest.raises(BadRequest):
        await read_body(upload.request, limit=100)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"account": "me", "wait": true, "account": "you"}', "account"),
        (b'{"account": "me", "wait": true, "wait": false}', "wait"),
        (b'{"account": "me", "input": {"x": 1, "x": 2}}', "x"),
        (b'{"a": [{"k": 1, "k": 1}]}', "k"),
        (b'{"\\u0061ccount": "me", "account": "you"}', "account"),  # the same key, escaped
    ],
)
def test_a_key_twice_in_one_object_is_400_naming_it(body: bytes, key: str) -> None:
    """Parsers settle a repeated key differently (first or last wins): refused."""
    with pytest.raises(BadRequest) as refused:
        parse_object(body)
    assert refused.value.detail == f"{key}: the key appears more than once in one object"


@pytest.mark.parametrize(
    "body",
    [
        b'{"account": "wait", "wait": true}',  # a value that names a key
        b'{"a": {"k": 1}, "b": {"k": 2}}',  # the same key in two objects
        b'{"a": [{"k": 1}, {"k": 2}]}',
        b'{"account": "m\\u00e9", "wait": true}',  # escapes, no key twice
    ],
)
def test_the_same_key_in_different_objects_or_as_a_value_is_fine(body: bytes) -> None:
    assert parse_object(body) == orjson.loads(body)
