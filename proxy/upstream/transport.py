"""The proxy's transport to the job server: HTTP/1.1 to the one origin of its base URL.

:class:`UpstreamTransport` is :class:`infra.http1.Http1Transport` (the project's
HTTP/1.1 client: asyncio protocol, httptools, a keep-alive pool) bound to the job
server's origin: a request for any other origin is refused, never sent. On the hot path
the proxy sends ``/start`` as bytes built once (:meth:`UpstreamTransport.prebuilt`) with
:meth:`UpstreamTransport.exchange`, past httpx's per-request work; everything else
(status polls, the readiness probe) goes through the ``httpx.AsyncClient`` built on
this transport, and respx stands in front of it in tests.

The pool, how a stale connection is found (and the request then sent on another), and
the errors (all httpx's) are :mod:`infra.http1`'s.
"""

from __future__ import annotations

import httpx

from infra.http1 import Answer, ConnectionPool, Http1Transport, Origin, request


class UpstreamTransport(Http1Transport):
    """HTTP/1.1 to the one origin of ``base_url``, over a pool of keep-alive connections.

    Idle connections are closed after ``keepalive_expiry`` seconds; an answer larger
    than ``max_response_size`` bytes fails its exchange.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        keepalive_expiry: float = 4.0,
        max_response_size: int = 1 << 20,
    ) -> None:
        url = httpx.URL(base_url)
        try:
            origin = Origin.of(url)
        except ValueError:
            raise ValueError(f"not an http(s) base URL: {base_url!r}") from None
        if url.query or url.fragment:
            raise ValueError(f"a base URL takes no query or fragment: {base_url!r}")
        pool = ConnectionPool(
            max_connections,
            idle_expiry=keepalive_expiry,
            max_answer_size=max_response_size,
            # httpx's own context (certifi, or SSL_CERT_FILE), as the httpx client had.
            ssl_context=httpx.create_ssl_context() if origin.scheme == "https" else None,
        )
        super().__init__(pool, only=origin)
        self.origin = origin
        self._prefix = url.raw_path.rstrip(b"/")

    def prebuilt(
        self,
        method: str,
        path: str,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> bytes:
        """The whole request (head + body) as bytes, built once: Host, Content-Type,
        ``headers``, Content-Length.

        ``path`` (with its query, if any) is taken below the base URL's path;
        ``content_type=b""`` leaves the Content-Type header out.
        """
        if not path.startswith("/"):
            raise ValueError(f"not a request path: {path!r}")
        fields = ((b"Content-Type", content_type),) if content_type else ()
        target = self._prefix + path.encode("ascii")
        return request(method, target, self.origin.authority, body, (*fields, *headers))

    async def exchange(
        self, request: bytes, *, connect: float | None, read: float | None, pool: float | None
    ) -> Answer:
        """Send prebuilt request bytes on a pooled connection and read the whole answer."""
        return await self.pool.exchange(self.origin, request, connect=connect, read=read, pool=pool)
