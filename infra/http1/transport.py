"""The client under httpx: an ``httpx.AsyncBaseTransport`` on a :class:`ConnectionPool`.

An ``httpx.AsyncClient`` built on :class:`Http1Transport` speaks through the pool, so
the ordinary httpx API (and respx, which stands in front of any transport in tests)
works as usual, while a caller on the hot path may hand prebuilt bytes to the same pool
(:attr:`Http1Transport.pool`) past the client's per-request work. The request is read
whole and sent with a ``Content-Length``; the answer comes back whole. Timeouts are the
request's own (``connect``, ``read``, ``pool``; httpx's ``write`` has nothing separate to
bound: the request is handed to the socket at once). Errors are httpx's, as
:mod:`infra.http1.errors` lists them, with the request attached.
"""

from __future__ import annotations

import httpx

from infra.http1.origin import Origin
from infra.http1.pool import ConnectionPool
from infra.http1.requests import header_lines, request_line

# Methods whose requests carry no body unless one is given (no Content-Length: 0).
BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over ``pool`` (which the transport owns and closes), to any http(s)
    origin, or only to ``only``: a request for another is ``httpx.UnsupportedProtocol``."""

    def __init__(self, pool: ConnectionPool, *, only: Origin | None = None) -> None:
        self.pool = pool
        self.only = only

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            origin = Origin.of(url)
        except ValueError as exc:
            raise httpx.UnsupportedProtocol(str(exc), request=request) from None
        if self.only is not None and origin != self.only:
            raise httpx.UnsupportedProtocol(
                f"this transport reaches only {self.only}, not {origin}", request=request
            )
        body = await request.aread()
        headers: list[tuple[bytes, bytes]] = []
        has_host = has_length = False
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower == b"host":
                has_host = True
            elif lower == b"content-length":
                has_length = True
            elif lower == b"transfer-encoding":
                continue  # the body was read whole: it goes with a Content-Length
            headers.append((name, value))
        if not has_host:
            headers.insert(0, (b"Host", origin.authority))
        if not has_length and (body or request.method not in BODILESS_METHODS):
            headers.append((b"Content-Length", b"%d" % len(body)))
        try:
            head = request_line(request.method, url.raw_path) + header_lines(headers)
        except ValueError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        timeout = request.extensions.get("timeout", {})
        try:
            answer = await self.pool.exchange(
                origin,
                b"%s\r\n%s" % (head, body),
                connect=timeout.get("connect"),
                read=timeout.get("read"),
                pool=timeout.get("pool"),
            )
        except httpx.RequestError as exc:
            exc.request = request
            raise
        return httpx.Response(
            answer.status, headers=answer.headers, content=answer.body, request=request
        )

    async def aclose(self) -> None:
        """Close the pool: every connection, and the callers waiting for one."""
        await self.pool.aclose()
