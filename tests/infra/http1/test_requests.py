"""Request bytes and origins (``infra/http1/requests.py``, ``infra/http1/origin.py``)."""

from __future__ import annotations

import httpx
import pytest

from infra.http1 import Origin, request, request_head
from infra.http1.requests import header_lines, request_line


def test_a_request_carries_host_headers_and_the_bodys_length() -> None:
    """A whole request: request line, Host, the headers in order, Content-Length, body."""
    built = request("POST", "/start?x=1", b"jobs.test:8001", b'{"a":1}', [(b"X-Trace", b"t")])
    assert built == (
        b"POST /start?x=1 HTTP/1.1\r\nHost: jobs.test:8001\r\nX-Trace: t\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )
    assert request("GET", b"/", b"h").endswith(b"Content-Length: 0\r\n\r\n")


def test_a_head_leaves_room_for_more_lines() -> None:
    """request_head ends with its last header line: the caller adds lines and the end."""
    head = request_head("POST", b"/hook", b"receiver", [(b"content-length", b"2")])
    assert head == b"POST /hook HTTP/1.1\r\nHost: receiver\r\ncontent-length: 2\r\n"


@pytest.mark.parametrize(
    ("method", "target"),
    [("GE T", "/"), ("GET\r\n", "/"), ("GËT", "/"), ("GET", "start"), ("GET", "/a b")],
)
def test_a_request_line_that_would_break_framing_is_refused(method: str, target: str) -> None:
    """A method that is not a word, or a target that is not a path, is a ValueError."""
    with pytest.raises(ValueError, match=r"not an HTTP method|not a request target"):
        request_line(method, target)
    with pytest.raises(ValueError, match="not a request target"):
        request_line("GET", b"/x\r\nHost: evil")


@pytest.mark.parametrize(
    "header",
    [(b"X-A\r\nX-B", b"1"), (b"X:A", b"1"), (b"", b"1"), (b"X A", b"1"), (b"X-A", b"1\r\nX-B: 2")],
)
def test_a_header_that_would_break_its_line_is_refused(header: tuple[bytes, bytes]) -> None:
    """A header name or value that would end its line early (or a name with a colon) is
    a ValueError."""
    with pytest.raises(ValueError, match="not a header"):
        header_lines([header])


def test_origin_of_a_url() -> None:
    """An origin is the scheme, the ASCII host and the port (the scheme's by default)."""
    assert Origin.of("http://jobs.test/start") == Origin("http", "jobs.test", 80)
    assert Origin.of(httpx.URL("https://Bücher.test:8443/")) == Origin(
        "https", "xn--bcher-kva.test", 8443
    )
    assert Origin.of("http://[::1]:8000/") == Origin("http", "::1", 8000)
    for url in ("ftp://jobs.test/", "/relative"):
        with pytest.raises(ValueError, match="not an http or https URL"):
            Origin.of(url)


def test_origin_authority_and_text() -> None:
    """The authority names the port only when it is not the scheme's default."""
    assert Origin("http", "jobs.test", 80).authority == b"jobs.test"
    assert Origin("https", "jobs.test", 80).authority == b"jobs.test:80"
    assert Origin("http", "::1", 8000).authority == b"[::1]:8000"
    assert str(Origin("https", "jobs.test", 443)) == "https://jobs.test"
