"""uvicorn's httptools protocol with a bounded request head.

uvicorn's httptools protocol reads a request's header section without a limit: a
client that sends header lines and never ends the section makes the server buffer
them all. :func:`bounded_head_protocol` makes a subclass that refuses a head larger than
``max_size`` bytes (request line and header lines) or with more than ``max_headers``
header lines: it answers ``431`` with a JSON body and closes the connection, before the
app sees the request. A request uvicorn cannot parse gets a JSON ``400`` in the same way.

A complete head is measured once, when the parser has read it: the request line's
target and every header line. A head still open after a read counts that read whole,
and each read after it (an over-count only when the read that began it also carried the
end of the previous request, as pipelining does), so that a header section that never
ends is cut off as soon as it crosses the limit. Only three of the parser's callbacks
are overridden, none per header line: the bound costs a microsecond or two a request.
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
    _head_size = 0  # the reads the open head spanned, whole
    _refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: nothing more is read
        super().data_received(data)
        if self._head_open:
            self._head_size += len(data)
            if self._head_size > self.max_head_size:
                self._refuse(self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_size = 0

    def on_headers_complete(self) -> None:
        self._head_open = False
        headers = self.headers
        if len(headers) > self.max_headers:
            self._refusal = f"the request has more than {self.max_headers} header lines"
            raise HeadTooLarge(self._refusal)
        size = len(self.url) + sum(len(name) + len(value) for name, value in headers)
        if size + HEADER_LINE_OVERHEAD * len(headers) > self.max_head_size:
            self._refusal = self._too_large()
            raise HeadTooLarge(self._refusal)
        super().on_headers_complete()

    def _too_large(self) -> str:
        return f"the request's header section is larger than {self.max_head_size} bytes"

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this when the parser fails, our callbacks' refusals included.
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        self.transport.write(error_response(400, "bad_request", msg))
        self.transport.close()

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
