"""uvicorn's httptools protocol with a bounded request head.

uvicorn's httptools protocol reads a request's header section without a limit: a
client that sends header lines and never ends the section makes the server buffer
them all. :func:`bounded_head_protocol` makes a subclass that refuses a head larger than
``max_size`` bytes (request line and header lines) or with more than ``max_headers``
header lines: it answers ``431`` with a JSON body and closes the connection, before the
app sees the request. A request uvicorn cannot parse gets a JSON ``400`` in the same way.

The size is measured twice, each measure never above the head's true size: the request
line and the complete header lines as the parser reports them, and the bytes of every
read that the head spans from end to end, so that a single endless header line is
caught too, one read after it crosses the limit.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_MAX_HEAD_SIZE = 16 * 1024
DEFAULT_MAX_HEADERS = 100
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop reading a head over its limits."""


def error_response(status: int, error: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body that closes the connection."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


class BoundedHeadProtocol(HttpToolsProtocol):
    """An httptools protocol whose request heads are bounded (see the module docstring).

    Use :func:`bounded_head_protocol` to get one with limits set.
    """

    max_head_size = DEFAULT_MAX_HEAD_SIZE
    max_headers = DEFAULT_MAX_HEADERS

    _head_open = False
    _lines_size = 0  # the open head's request line and complete header lines
    _spanned_size = 0  # the reads the open head spans from end to end
    _refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: nothing more is read
        was_open = self._head_open
        super().data_received(data)
        if self._head_open and was_open:
            self._spanned_size += len(data)
            if self._spanned_size > self.max_head_size:
                self._refuse(self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._lines_size = self._spanned_size = 0

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + HEADER_LINE_OVERHEAD)
        if len(self.headers) >= self.max_headers:
            self._refusal = f"the request has more than {self.max_headers} header lines"
            raise HeadTooLarge(self._refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this when the parser fails, our callbacks' refusals included.
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        self.transport.write(error_response(400, "bad_request", msg))
        self.transport.close()

    def _grow(self, size: int) -> None:
        self._lines_size += size
        if self._lines_size > self.max_head_size:
            self._refusal = self._too_large()
            raise HeadTooLarge(self._refusal)

    def _too_large(self) -> str:
        return f"the request's header section is larger than {self.max_head_size} bytes"

    def _refuse(self, detail: str) -> None:
        self._refusal = detail
        if not self.transport.is_closing():
            self.transport.write(error_response(431, "request_head_too_large", detail))
            self.transport.close()


def bounded_head_protocol(max_head_size: int, max_headers: int) -> type[BoundedHeadProtocol]:
    """An httptools protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "BoundedHeadProtocol",
        (BoundedHeadProtocol,),
        {"max_head_size": max_head_size, "max_headers": max_headers},
    )
