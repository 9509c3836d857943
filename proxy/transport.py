"""A lean HTTP/1.1 client transport to one upstream origin: asyncio protocol + httptools.

The job server is called on the hot path with requests whose bytes are built once
(:meth:`UpstreamTransport.prebuilt`) and sent by :meth:`UpstreamTransport.exchange` on a
pooled keep-alive connection: no per-request task, one timer per exchange, the answer
parsed by httptools as it arrives. :meth:`UpstreamTransport.handle_async_request` is the
ordinary httpx path on top of it, so an ``httpx.AsyncClient`` (and respx) work as usual.

The pool: idle connections are reused newest first; at most ``max_connections`` are
open; callers beyond that wait in order. A connection goes back only after its answer
was read whole, and is not reused when the answer said ``Connection: close``, came as
HTTP/1.0, or the connection failed, timed out, was idle longer than
``keepalive_expiry`` or was closed by the server. A pooled connection found closed
before anything was sent on it (noticed while idle, or by a write that failed at once)
is replaced by a fresh one and the request sent there; once bytes went out, a failure
is the caller's to handle.

Errors are httpx's, with the request attached when there is one:

    refused, unreachable, TLS failure, closed at once   httpx.ConnectError
    not connected within ``connect``                    httpx.ConnectTimeout
    no connection free within ``pool``                  httpx.PoolTimeout
    no complete answer within ``read``                  httpx.ReadTimeout
    reset before the answer was complete                httpx.ReadError
    closed before the answer was complete, unparsable,
    or larger than ``max_response_size``                httpx.RemoteProtocolError
    a request for another origin                        httpx.UnsupportedProtocol
    the transport is closed                             httpx.ConnectError

``read`` bounds the whole wait for the answer, from the moment the request is handed to
the socket: the request is written at once (the OS buffers it), so the ``write``
timeout of httpx has nothing separate to bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import cast

import httptools
import httpx

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
# Status line and headers of one answer: far above any job server answer's.
MAX_HEAD_SIZE = 64 * 1024
# How long aclose() waits for the closed connections to be gone.
CLOSE_TIMEOUT = 5.0
# Methods whose requests carry no body unless one is given (no Content-Length: 0).
BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


@dataclass(slots=True)
class RawResponse:
    """An answer as it came: status, headers (names lower-cased) and the whole body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer being read on it."""

    __slots__ = (
        "body",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "only_head",
        "parser",
        "pool",
        "received",
        "size",
        "status",
        "transport",
        "waiter",
    )

    def __init__(self, pool: UpstreamTransport) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[RawResponse] | None = None  # set while an answer is due
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0  # body bytes of this answer
        self.received = 0  # all bytes of this answer
        self.headers_done = False
        self.only_head = False
        self.keep_alive = False
        self.idle_since = 0.0

    # -- used by the pool

    def usable(self) -> bool:
        return self.keep_alive and self.transport is not None and not self.transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[RawResponse] | None:
        """Write the request; None when the connection turned out closed before anything
        was sent (it was already closing, or the write failed at once)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        self.status = self.size = self.received = 0
        self.headers = []
        self.body = []
        self.headers_done = False
        self.only_head = request.startswith(b"HEAD ")
        self.keep_alive = False
        transport.write(request)
        if transport.is_closing():
            # Both loops try the write at once and close the transport when it fails.
            return None
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        return waiter

    def read_timed_out(self, seconds: float) -> None:
        self.fail(httpx.ReadTimeout(f"no complete answer from {self.pool.origin} in {seconds} s"))

    def fail(self, exc: httpx.TransportError) -> None:
        """End the exchange with ``exc`` and close the connection."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # A server that speaks out of turn is not trusted with another request.
            self.abort()
            return
        self.received += len(data)
        try:
            if self.received > self.pool.max_response_size + MAX_HEAD_SIZE:
                raise self._too_large()
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols (or an upgrade): whatever follows is not HTTP/1.1.
            self.fail(
                httpx.RemoteProtocolError(f"{self.pool.origin} switched protocols: no answer")
            )
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, httpx.TransportError):  # raised by a callback below
                self.fail(cause)
            else:
                self.fail(
                    httpx.RemoteProtocolError(f"unparsable answer from {self.pool.origin}: {exc}")
                )
        except httpx.TransportError as exc:
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self.pool._forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self.headers_done and not self._framed():
            self._finish()  # a body delimited by the end of the connection
            return
        if exc is None:
            failure: httpx.TransportError = httpx.RemoteProtocolError(
                f"{self.pool.origin} closed the connection before the answer was complete"
            )
        else:
            failure = httpx.ReadError(
                f"the connection to {self.pool.origin} failed: {type(exc).__name__}: {exc}"
            )
        self.fail(failure)

    # -- httptools callbacks (an exception raised here ends the exchange)

    def on_message_begin(self) -> None:
        if self.waiter is None:
            raise httpx.RemoteProtocolError(f"{self.pool.origin} sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        # The size is known before the body comes: refuse it at once.
        if (
            name == b"content-length"
            and not self.only_head
            and value.isdigit()
            and int(value) > self.pool.max_response_size
        ):
            raise self._too_large()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        if self.only_head and self.status >= 200:
            # httptools cannot be told that a HEAD answer has no body: take the head and
            # do not reuse a connection whose parser may expect one.
            self._finish()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.pool.max_response_size:
            raise self._too_large()
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.headers = []
            self.headers_done = False
            return
        parser = self.parser
        self.keep_alive = (
            not self.only_head and parser.should_keep_alive() and parser.get_http_version() == "1.1"
        )
        self._finish()

    def _finish(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(RawResponse(self.status, self.headers, b"".join(self.body)))

    def _framed(self) -> bool:
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def _too_large(self) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError(
            f"the answer from {self.pool.origin} is larger than {self.pool.max_response_size} bytes"
        )


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to the one origin of ``base_url``, over a pool of keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        keepalive_expiry: float = 4.0,
        max_response_size: int = 1 << 20,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        if url.query or url.fragment:
            raise ValueError(f"a base URL takes no query or fragment: {base_url!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._scheme = url.scheme
        self._host = url.host
        self._port = url.port or DEFAULT_PORTS[url.scheme]
        self.origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self._host_header = url.netloc
        self._prefix = url.raw_path.rstrip(b"/")
        self._ssl_context: ssl.SSLContext | None = (
            httpx.create_ssl_context() if url.scheme == "https" else None
        )
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self.max_response_size = max_response_size
        self._open = 0  # connection slots taken: connecting, busy or idle
        self._idle: collections.deque[_Connection] = collections.deque()  # oldest first
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._connections: set[_Connection] = set()  # every connection not yet lost
        self._all_lost: asyncio.Future[None] | None = None
        self._closed = False

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
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ValueError(f"not a request path: {path!r}")
        if not method.isalpha():
            raise ValueError(f"not an HTTP method: {method!r}")
        head = b"%s %s%s HTTP/1.1\r\nHost: %s\r\n" % (
            method.encode("ascii"),
            self._prefix,
            path.encode("ascii"),
            self._host_header,
        )
        if content_type:
            head += b"Content-Type: %s\r\n" % content_type
        for name, value in headers:
            if any(c in name + value for c in b"\r\n\0") or b":" in name:
                raise ValueError(f"not a header: {name!r}")
            head += b"%s: %s\r\n" % (name, value)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def exchange(
        self, request: bytes, *, connect: float | None, read: float | None, pool: float | None
    ) -> RawResponse:
        """Send prebuilt request bytes on a pooled connection and read the whole answer."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        conn = self._idle_connection(loop.time())
        if conn is None:
            if self._open < self._max_connections:
                self._open += 1  # a slot for a new connection
            else:
                conn = await self._wait_for_connection(pool)
        while True:
            fresh = conn is None
            if conn is None:
                conn = await self._connect(connect)
            waiter = conn.send(request)
            if waiter is not None:
                break
            conn.abort()
            if fresh:
                self._free_slot()
                raise httpx.ConnectError(
                    f"{self.origin} closed a new connection before the request was sent"
                )
            # Nothing was sent: the request goes on a fresh connection, in the same slot.
            logger.debug("a pooled connection to %s was closed: reconnecting", self.origin)
            conn = None
        timer = None if read is None else loop.call_later(read, conn.read_timed_out, read)
        try:
            response = await waiter
        except BaseException:
            # Failed, timed out or cancelled: the rest of the answer is never read.
            conn.abort()
            self._free_slot()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._release(conn)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)) != (
            self._scheme,
            self._host,
            self._port,
        ):
            raise httpx.UnsupportedProtocol(
                f"this transport reaches only {self.origin}, not {url.scheme}://{url.netloc!r}",
                request=request,
            )
        body = await request.aread()
        parts = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), url.raw_path)]
        has_host = has_length = False
        for name, value in request.headers.raw:
            if b"\r" in value or b"\n" in value or b"\n" in name:
                raise httpx.LocalProtocolError(f"invalid header {name!r}", request=request)
            lower = name.lower()
            if lower == b"host":
                has_host = True
            elif lower == b"content-length":
                has_length = True
            elif lower == b"transfer-encoding":
                continue  # the body was read whole: it goes with a Content-Length
            parts += (name, b": ", value, b"\r\n")
        if not has_host:
            parts.append(b"Host: %s\r\n" % self._host_header)
        if not has_length and (body or request.method not in BODILESS_METHODS):
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts += (b"\r\n", body)
        timeout = request.extensions.get("timeout", {})
        try:
            raw = await self.exchange(
                b"".join(parts),
                connect=timeout.get("connect"),
                read=timeout.get("read"),
                pool=timeout.get("pool"),
            )
        except httpx.RequestError as exc:
            exc.request = request
            raise
        return httpx.Response(raw.status, headers=raw.headers, content=raw.body, request=request)

    async def aclose(self) -> None:
        """Close every connection and fail the waiting callers; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(self._closed_error())
        self._idle.clear()
        for conn in list(self._connections):
            conn.fail(httpx.ReadError(f"the transport to {self.origin} was closed"))
        if self._connections:
            # Connections go in the loop's next rounds: wait for them, so that no
            # transport outlives the transport that owned it.
            self._all_lost = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._all_lost
            except TimeoutError:
                logger.warning(
                    "%d connections to %s did not close", len(self._connections), self.origin
                )
            finally:
                self._all_lost = None
        logger.debug("closed the transport to %s", self.origin)

    # -- the pool

    def _idle_connection(self, now: float) -> _Connection | None:
        """The newest idle connection still usable; expired and closed ones are closed."""
        idle = self._idle
        expired = now - self._keepalive_expiry
        while idle and idle[0].idle_since <= expired:
            idle.popleft().close()
            self._free_slot()
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
            self._free_slot()
        return None

    async def _wait_for_connection(self, timeout: float | None) -> _Connection | None:
        """Wait in line for a released connection, or a free slot (None)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = (
            None
            if timeout is None
            else loop.call_later(timeout, self._pool_timed_out, waiter, timeout)
        )
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A connection or slot came as the caller left: hand it on.
                given = waiter.result()
                if given is None:
                    self._free_slot()
                else:
                    self._release(given)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _pool_timed_out(self, waiter: asyncio.Future[_Connection | None], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(
                httpx.PoolTimeout(f"no connection to {self.origin} was free within {timeout} s")
            )

    async def _connect(self, timeout: float | None) -> _Connection:
        """A new connection in the slot the caller holds (given back on failure)."""
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(timeout):
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self),
                        self._host,
                        self._port,
                        ssl=self._ssl_context,
                        server_hostname=self._host if self._ssl_context is not None else None,
                    )
            except TimeoutError as exc:
                raise httpx.ConnectTimeout(
                    f"no connection to {self.origin} within {timeout} s"
                ) from exc
            except OSError as exc:
                raise httpx.ConnectError(f"cannot connect to {self.origin}: {exc}") from exc
            if self._closed:
                conn.abort()
                raise self._closed_error()
        except BaseException:
            self._free_slot()
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        """Take back a connection whose answer was read whole."""
        if self._closed or not conn.usable():
            conn.close()
            self._free_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def _free_slot(self) -> None:
        """A connection is gone: its slot goes to the first waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    def _closed_error(self) -> httpx.ConnectError:
        return httpx.ConnectError(f"the transport to {self.origin} is closed")
