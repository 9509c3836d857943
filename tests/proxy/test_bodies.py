"""Reading request bodies within a limit, and parsing the job request they hold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from proxy.bodies import MAX_ACCOUNT_LENGTH, JobRequest, read_body
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


# JobRequest.parse


def _parse(fields: Any) -> JobRequest:
    return JobRequest.parse(json.dumps(fields).encode())


def test_minimal_request() -> None:
    """Only the account is required; wait defaults to false and callback to none."""
    assert _parse({"account": "acme"}) == JobRequest("acme", False, None)


def test_full_request() -> None:
    """account, wait and callback are read as given; unknown fields are ignored."""
    parsed = _parse(
        {"account": "a", "wait": True, "callback": "https://client.test/cb?x=1", "other": 1}
    )
    assert parsed == JobRequest("a", True, "https://client.test/cb?x=1")


def test_account_length_bounds() -> None:
    """An account of 1 to 256 characters is accepted."""
    assert _parse({"account": "x"}).account == "x"
    long = "é" * MAX_ACCOUNT_LENGTH
    assert _parse({"account": long}).account == long


def test_null_callback_means_none() -> None:
    """A null callback is the same as no callback."""
    assert _parse({"account": "a", "callback": None}).callback is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "JSON"),
        (b"{", "JSON"),
        (b"\xff", "JSON"),
        (b"NaN", "not JSON"),
        (b"[]", "object"),
        (b'"acme"', "object"),
        (b"null", "object"),
        (b"{}", "account"),
        (b'{"account": null}', "account"),
        (b'{"account": ""}', "account"),
        (b'{"account": ["a"]}', "account"),
        (b'{"account": true}', "account"),
        (b'{"account": "' + b"x" * (MAX_ACCOUNT_LENGTH + 1) + b'"}', "account"),
        (b'{"account": "a", "wait": 1}', "wait"),
        (b'{"account": "a", "wait": null}', "wait"),
        (b'{"account": "a", "wait": "true"}', "wait"),
        (b'{"account": "a", "callback": 5}', "callback"),
        (b'{"account": "a", "callback": ""}', "callback"),
        (b'{"account": "a", "callback": "/relative"}', "callback"),
        (b'{"account": "a", "callback": "http://"}', "callback"),
        (b'{"account": "a", "callback": "mailto:x@y.test"}', "callback"),
        (b'{"account": "a", "callback": "ftp://host/x"}', "callback"),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, field: str) -> None:
    """Each malformed body is a BadRequest whose detail names the field or the problem."""
    with pytest.raises(BadRequest) as raised:
        JobRequest.parse(body)
    assert field in raised.value.detail


@pytest.mark.parametrize(
    "callback",
    ["127.0.0.1:9000/done", "client.test/cb", "HTTPS://client.test:443/a?b=c#d", "h.test"],
)
def test_callbacks_the_job_server_takes_are_taken(callback: str) -> None:
    """A callback with or without a scheme (then called over http) is passed on as given."""
    assert _parse({"account": "a", "callback": callback}).callback == callback


@pytest.mark.parametrize(
    "callback",
    [
        "http://client.test:99999/x",
        "http://-bad-.test/",
        "http://a b/",
        "http://x.test/" + "a" * 2048,
    ],
)
def test_callbacks_the_job_server_refuses_are_400(callback: str) -> None:
    """A callback with a port out of range, a bad host, a space or too long is refused."""
    with pytest.raises(BadRequest, match="callback"):
        _parse({"account": "a", "callback": callback})


@pytest.mark.parametrize("callback", ["http://[abc", "http://[::1/x", "https://]/"])
def test_unparseable_callback_url_is_400(callback: str) -> None:
    """A callback URL that cannot be read is a BadRequest, not an unexpected error."""
    with pytest.raises(BadRequest, match="callback"):
        _parse({"account": "a", "callback": callback})


def test_upstream_body_never_waits() -> None:
    """The body sent upstream always has wait false and carries the given callback only."""
    request = _parse({"account": "a", "wait": True, "callback": "http://client.test/cb"})
    assert request.upstream_body("http://proxy.test/callback/t") == {
        "account": "a",
        "wait": False,
        "callback": "http://proxy.test/callback/t",
    }
    assert request.upstream_body(None) == {"account": "a", "wait": False}
