"""Keep-alive HTTP/1.1 connections to callback receivers: prebuilt requests in, statuses out.

A :class:`ConnectionPool` holds every connection the job server has open to receivers,
keyed by :class:`Origin` (scheme, host, port). :meth:`ConnectionPool.post` writes one
prebuilt request on an idle connection of its origin, or on a new one, reads the answer's
status with httptools and discards its body (at most ``MAX_ANSWER_BODY`` bytes); the
connection then goes back to the pool unless the answer or the receiver ended it.

Why not an HTTP client library: a callback is one small POST whose answer matters only
by its status, and a client's per-request URL merging, header objects, cookie handling
and response objects cost the job server more CPU than its own work on the job.

Every way an exchange can fail (no connection, no answer within the deadline, a
malformed or oversized answer, a connection closed before the answer) ends in one
:class:`ExchangeFailed` whose message says what happened. A pooled connection found
closed before anything was written to it is not a failure: the request goes out on
another connection.
"""

from __future__ import annotations

import asyncio
import logging
import select
import ssl
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple, cast

import httptools

logger = logging.getLogger(__name__)

#: Largest answer body read (and discarded); a longer one fails the attempt.
MAX_ANSWER_BODY = 64 * 1024
#: Seconds an idle connection is kept. Receivers commonly close idle connections after
#: 5 s (uvicorn's and Node's defaults); closing ours first keeps a request from going
#: out on a connection the receiver is closing.
IDLE_EXPIRY = 4.0
#: Seconds :meth:`ConnectionPool.close` waits for the closed connections to be gone.
CLOSE_TIMEOUT = 1.0

PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class Origin(NamedTuple):
    """Where a connection goes; connections are pooled and reused per origin."""

    scheme: str  # "http" or "https"
    host: str  # ASCII (IDNA) form, an IPv6 address without brackets
    port: int


class ExchangeFailed(Exception):
    """One request got no usable answer; the message says why."""


def _expire(answer: asyncio.Future[int], timeout: float) -> None:
    if not answer.done():
        answer.set_exception(ExchangeFailed(f"no answer within {timeout:g} s"))


class ReceiverConnection(asyncio.Protocol):
    """One connection to a receiver, carrying one exchange at a time."""

    def __init__(self, pool: ConnectionPool, origin: Origin) -> None:
        self.origin = origin
        self.closed = False
        self.reusable = False  # set by a whole answer that leaves the connection open
        self.idle_since = 0.0
        #: Resolved once the connection is gone (lost, or never made).
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._connecting: asyncio.Task[None] | None = None
        self._unsent: bytes | None = None  # the first request, written once connected
        self._answer: asyncio.Future[int] | None = None  # of the exchange under way
        self._status = 0
        self._body_size = 0

    # -- used by the pool

    def open(
        self, request: bytes, answer: asyncio.Future[int], context: ssl.SSLContext | None
    ) -> None:
        """Connect, then write ``request``; ``answer`` resolves as in :meth:`send`."""
        self._begin(answer)
        self._unsent = request
        self._connecting = asyncio.get_running_loop().create_task(
            self._connect(context), name=f"connect-{self.origin.host}:{self.origin.port}"
        )

    def send(self, request: bytes, answer: asyncio.Future[int]) -> None:
        """Write ``request``; ``answer`` resolves with the status, or fails with ExchangeFailed."""
        assert self._transport is not None
        self._begin(answer)
        self._transport.write(request)

    def in_exchange(self) -> bool:
        return self._answer is not None

    def unused_and_open(self, poller: select.poll) -> bool:
        """Open, as far as this side can tell without writing to it.

        A receiver's close may already sit in the socket while its event has not been
        handled yet; an idle connection must have nothing to read, so anything readable
        (the close, or bytes nobody asked for) means the connection cannot be used.
        """
        if self.closed:
            return False
        if self._fd < 0:  # a transport without a socket to look at: trust its events
            return True
        poller.register(self._fd, select.POLLIN)
        try:
            return not poller.poll(0)
        finally:
            poller.unregister(self._fd)

    def close(self) -> None:
        """Close politely (TLS close_notify); the pool forgets the connection at once."""
        self._shut(abort=False)

    def abort(self) -> None:
        """Close at once, dropping whatever was not sent."""
        self._shut(abort=True)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        if self.closed:
            self._transport.abort()
        elif self._unsent is not None:
            self._transport.write(self._unsent)
        self._unsent = None

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # nothing was asked: the connection is out of step
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except PARSER_ERRORS as exc:
            self._fail(f"malformed answer: {exc}")

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
        answer = self._answer
        self._answer = None
        if answer is not None and not answer.done():
            if self._status:
                # The headers were whole: the receiver has given its verdict, and a body
                # without a length ends with the connection.
                answer.set_result(self._status)
            else:
                reason = f": {exc}" if exc is not None else ""
                answer.set_exception(ExchangeFailed(f"connection closed before the answer{reason}"))
        self._gone()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._answer is None:  # a second answer to one request
            self.reusable = False

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200:
            self._status = status

    def on_body(self, body: bytes) -> None:
        if self._answer is None:
            return
        self._body_size += len(body)
        if self._body_size > MAX_ANSWER_BODY:
            self._fail(f"answer body over {MAX_ANSWER_BODY // 1024} KiB")

    def on_message_complete(self) -> None:
        answer = self._answer
        if answer is None or not self._status:  # failed already, or an interim 1xx answer
            return
        self._answer = None
        self.reusable = self._parser.should_keep_alive()
        if not answer.done():
            answer.set_result(self._status)

    # -- internals

    def _begin(self, answer: asyncio.Future[int]) -> None:
        self._answer = answer
        self._status = 0
        self._body_size = 0
        self.reusable = False

    async def _connect(self, context: ssl.SSLContext | None) -> None:
        origin = self.origin
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: self,
                origin.host,
                origin.port,
                ssl=context,
                server_hostname=origin.host if context is not None else None,
            )
        except Exception as exc:  # refused, unreachable, unresolvable, TLS: all mean no connection
            self._connecting = None  # this task is ending: nothing to cancel
            self._fail(f"cannot connect: {type(exc).__name__}: {exc}")
        finally:
            self._connecting = None
            if self._transport is None:  # never connected (failed or cancelled)
                self._shut(abort=True)
                self._gone()

    def _fail(self, reason: str) -> None:
        answer = self._answer
        self._answer = None
        self.abort()
        if answer is not None and not answer.done():
            answer.set_exception(ExchangeFailed(reason))

    def _shut(self, *, abort: bool) -> None:
        self.reusable = False
        if self.closed:
            return
        self.closed = True
        self._pool.forget(self)
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    def _gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        self._pool.gone(self)


class ConnectionPool:
    """Keep-alive connections to receivers, per origin, at most ``max_connections`` in all.

    At most ``max_connections`` exchanges run at once, so a burst queues for a slot; an
    exchange's deadline starts once it has one. Opening a connection when the bound is
    reached closes the idle connection unused the longest (of whichever origin).
    Connections idle for ``idle_expiry`` seconds are closed. ``ssl_context`` serves
    ``https`` origins; by default ``ssl.create_default_context()``, made on first use.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        idle_expiry: float = IDLE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._idle_expiry = idle_expiry
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        # Idle connections per origin, the most recently used on the right: reuse takes
        # from the right, so the fewest connections stay warm; expiry takes from the left.
        self._idle: dict[Origin, deque[ReceiverConnection]] = {}
        self._open: set[ReceiverConnection] = set()  # counted against max_connections
        self._alive: set[ReceiverConnection] = set()  # not gone yet, closing ones too
        self._poller = select.poll()
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def post(self, origin: Origin, request: Callable[[], bytes], timeout: float) -> int:
        """Send the bytes ``request()`` builds to ``origin``; return the answer's status.

        ``request`` is called once the exchange has its slot, so that what it builds (a
        signature's timestamp) is as fresh as the attempt. Raises :class:`ExchangeFailed`,
        including when no whole answer came within ``timeout`` seconds.
        """
        async with self._slots:
            loop = asyncio.get_running_loop()
            data = request()
            answer: asyncio.Future[int] = loop.create_future()
            deadline = loop.call_later(timeout, _expire, answer, timeout)
            connection = self._idle_connection(origin)
            if connection is None:
                connection = self._new_connection(origin)
                connection.open(data, answer, self._context(origin))
            else:
                connection.send(data, answer)
            try:
                return await answer
            finally:
                deadline.cancel()
                self._finish(connection, loop)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every connection; wait (at most ``timeout``) until they are gone."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._idle.clear()
        closing = len(self._open)
        for connection in list(self._open):
            connection.abort()
        if self._alive:
            await asyncio.wait([c.gone for c in self._alive], timeout=timeout)
        logger.debug("closed %d callback connections, %d not gone yet", closing, len(self._alive))

    # -- called by connections

    def forget(self, connection: ReceiverConnection) -> None:
        """``connection`` is closing: it no longer counts against the bound."""
        self._open.discard(connection)

    def gone(self, connection: ReceiverConnection) -> None:
        self._alive.discard(connection)

    # -- internals

    def _idle_connection(self, origin: Origin) -> ReceiverConnection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.unused_and_open(self._poller):
                return connection
            connection.abort()
        return None

    def _new_connection(self, origin: Origin) -> ReceiverConnection:
        if len(self._open) >= self._max_connections:
            self._close_oldest_idle()
        connection = ReceiverConnection(self, origin)
        self._open.add(connection)
        self._alive.add(connection)
        return connection

    def _context(self, origin: Origin) -> ssl.SSLContext | None:
        if origin.scheme != "https":
            return None
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _finish(self, connection: ReceiverConnection, loop: asyncio.AbstractEventLoop) -> None:
        """After an exchange: the connection goes back to the pool, or is closed."""
        if connection.in_exchange():  # timed out or cancelled: the answer may still come
            connection.abort()
        elif not connection.reusable:  # failed, or the answer asked to close
            connection.close()
        else:
            connection.reusable = False
            connection.idle_since = loop.time()
            idle = self._idle.get(connection.origin)
            if idle is None:
                idle = self._idle[connection.origin] = deque()
            idle.append(connection)
            if self._sweep_handle is None:
                self._sweep_handle = loop.call_later(self._idle_expiry, self._sweep, loop)

    def _close_oldest_idle(self) -> None:
        oldest: deque[ReceiverConnection] | None = None
        for idle in self._idle.values():
            while idle and idle[0].closed:
                idle.popleft()
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest is not None:
            oldest.popleft().close()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections idle for ``idle_expiry``; come back for the next one due."""
        self._sweep_handle = None
        now = loop.time()
        next_due: float | None = None
        for origin, idle in list(self._idle.items()):
            while idle and (idle[0].closed or now - idle[0].idle_since >= self._idle_expiry):
                idle.popleft().close()
            if not idle:
                del self._idle[origin]
            elif next_due is None or idle[0].idle_since < next_due:
                next_due = idle[0].idle_since
        if next_due is not None:
            delay = next_due + self._idle_expiry - now
            self._sweep_handle = loop.call_later(delay, self._sweep, loop)
