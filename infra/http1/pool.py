"""Keep-alive HTTP/1.1 connections per origin, at most ``max_connections`` in all.

:meth:`ConnectionPool.exchange` sends a request's bytes to an origin on an idle
connection of that origin, the one used last (so the fewest stay warm), or on a new
one, and returns the whole :class:`~infra.http1.Answer`. A connection goes back to the
pool only once its answer was read whole and left it open; one found stale when taken
(:meth:`~infra.http1.Http1Connection.reusable`: closed, reset, or readable while idle)
is closed and the request goes out on another, so a request is never lost to a
connection the server had closed before anything was sent. Once bytes went out, a
failure is the caller's to handle: it may have reached the server.

At most ``max_connections`` connections are open at once (connecting, busy or idle).
At the bound, a request closes the idle connection unused the longest (of another
origin) and opens its own in that place; with none idle it waits in line, first come
first served, for a connection of its origin or a free place. Connections idle for
``idle_expiry`` seconds are closed, by a timer, and never taken after that time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl

import httpx

from infra.http1.connection import (
    DEFAULT_MAX_ANSWER_SIZE,
    Answer,
    Http1Connection,
    open_connection,
)
from infra.http1.origin import Origin

logger = logging.getLogger(__name__)

# Servers commonly close idle connections after 5 s (uvicorn's and Node's defaults):
# closing ours first keeps a request from going out on a connection being closed.
DEFAULT_IDLE_EXPIRY = 4.0
# How long aclose() waits for the closed connections to be gone, by default.
CLOSE_TIMEOUT = 5.0

# A caller waiting in line: the origin it goes to, and what it will be given (a
# connection of that origin, or None: a place for a new connection).
_Waiter = tuple[Origin, asyncio.Future[Http1Connection | None]]


class ConnectionPool:
    """Keep-alive connections per origin (see the module); ``ssl_context`` serves
    ``https`` origins (by default ``ssl.create_default_context()``, made on first use)."""

    def __init__(
        self,
        max_connections: int,
        *,
        idle_expiry: float = DEFAULT_IDLE_EXPIRY,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self.idle_expiry = idle_expiry
        self.max_answer_size = max_answer_size
        self._ssl_context = ssl_context
        self._open = 0  # places taken: connections connecting, busy or idle
        # Idle connections per origin, the one given back last on the right.
        self._idle: dict[Origin, collections.deque[Http1Connection]] = {}
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._alive: set[Http1Connection] = set()  # every connection not yet lost
        self._all_lost: asyncio.Future[None] | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def waiting(self) -> int:
        """Callers waiting in line for a connection."""
        return len(self._waiters)

    @property
    def connections(self) -> int:
        """Connections not yet gone: connecting, busy, idle or closing."""
        return len(self._alive)

    async def exchange(
        self,
        origin: Origin,
        request: bytes,
        *,
        connect: float | None = None,
        read: float | None = None,
        pool: float | None = None,
    ) -> Answer:
        """Send a request's bytes to ``origin`` and read its whole answer.

        ``connect`` bounds connecting, ``read`` the wait for the whole answer from the
        moment the request is handed to the socket (the OS buffers it: there is no
        separate write to bound), ``pool`` the wait in line; None: no bound. Errors are
        those of :mod:`infra.http1.errors`.
        """
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        connection = self._idle_connection(origin, loop.time())
        if connection is None:
            if self._open < self.max_connections:
                self._open += 1  # a place for a new connection
            elif not self._close_oldest_idle():
                connection = await self._wait(origin, pool)
                if connection is not None and not connection.is_open():
                    # Handed over, and closed since: its place is the caller's.
                    connection = None
            if connection is None:
                connection = await self._connect(origin, connect)
        answer = connection.send(request)
        timer = None if read is None else loop.call_later(read, connection.read_timed_out, read)
        try:
            result = await answer
        except BaseException:
            # Failed, timed out or cancelled: the rest of the answer is never read.
            connection.abort()
            self._free_place()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._release(connection, loop)
        return result

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every connection (an exchange under way fails with ``httpx.ReadError``),
        fail the callers in line, and wait (at most ``timeout``) until the connections
        are gone; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        waiters, self._waiters = self._waiters, collections.deque()
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(self._closed_error())
        self._idle.clear()
        for connection in list(self._alive):
            connection.fail(httpx.ReadError(f"the connection to {connection.origin} was closed"))
        if self._alive:
            # Connections go in the loop's next rounds: wait for them, so that no
            # transport outlives the pool that owned it.
            self._all_lost = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._all_lost
            except TimeoutError:
                logger.warning("%d connections did not close", len(self._alive))
            finally:
                self._all_lost = None
        logger.debug("closed the connection pool")

    # -- taking a connection

    def _idle_connection(self, origin: Origin, now: float) -> Http1Connection | None:
        """The idle connection of ``origin`` given back last, if one is reusable; expired
        and stale ones on the way are closed."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired = now - self.idle_expiry
        while idle and idle[0].idle_since <= expired:
            idle.popleft().close()
            self._free_place()
        while idle:
            connection = idle.pop()
            if connection.reusable():
                return connection
            logger.debug("an idle connection to %s was stale: not reused", origin)
            connection.abort()
            self._free_place()
        return None

    def _close_oldest_idle(self) -> bool:
        """Close the idle connection unused the longest, its place kept for the caller."""
        oldest: collections.deque[Http1Connection] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest is None:
            return False
        oldest.popleft().close()
        return True

    async def _wait(self, origin: Origin, timeout: float | None) -> Http1Connection | None:
        """Wait in line for a connection of ``origin``, or a place (None)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Http1Connection | None] = loop.create_future()
        entry = (origin, waiter)
        self._waiters.append(entry)
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter, timeout)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A connection or a place came as the caller left: hand it on.
                given = waiter.result()
                if given is None:
                    self._free_place()
                else:
                    self._release(given, loop)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _connect(self, origin: Origin, timeout: float | None) -> Http1Connection:
        """A new connection in the place the caller holds (given back on failure)."""
        try:
            connection = await open_connection(
                origin,
                timeout=timeout,
                ssl_context=self._context(origin),
                max_answer_size=self.max_answer_size,
                on_lost=self._forget,
            )
            if not connection.lost:
                self._alive.add(connection)
            if self._closed:
                connection.abort()
                raise self._closed_error()
            if not connection.is_open():
                raise httpx.ConnectError(f"{origin} closed a new connection at once")
        except BaseException:
            self._free_place()
            raise
        return connection

    def _context(self, origin: Origin) -> ssl.SSLContext | None:
        if origin.scheme != "https":
            return None
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    # -- giving it back

    def _release(self, connection: Http1Connection, loop: asyncio.AbstractEventLoop) -> None:
        """Take back a connection whose answer was read whole."""
        if self._closed or not connection.keep_alive or not connection.is_open():
            connection.close()
            self._free_place()
            return
        while self._waiters:
            origin, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if origin == connection.origin:
                waiter.set_result(connection)
            else:
                connection.close()  # the first in line goes elsewhere: its place
                waiter.set_result(None)
            return
        connection.idle_since = loop.time()
        idle = self._idle.get(connection.origin)
        if idle is None:
            idle = self._idle[connection.origin] = collections.deque()
        idle.append(connection)
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self.idle_expiry, self._sweep, loop)

    def _free_place(self) -> None:
        """A connection is gone: its place goes to the first caller in line, if any."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections idle for ``idle_expiry``; come back for the next one due."""
        self._sweep_handle = None
        now = loop.time()
        next_due: float | None = None
        for origin, idle in list(self._idle.items()):
            while idle and now - idle[0].idle_since >= self.idle_expiry:
                idle.popleft().close()
                self._free_place()
            if not idle:
                del self._idle[origin]
            elif next_due is None or idle[0].idle_since < next_due:
                next_due = idle[0].idle_since
        if next_due is not None:
            delay = next_due + self.idle_expiry - now
            self._sweep_handle = loop.call_later(delay, self._sweep, loop)

    def _forget(self, connection: Http1Connection) -> None:
        self._alive.discard(connection)
        if not self._alive and self._all_lost is not None and not self._all_lost.done():
            self._all_lost.set_result(None)

    def _closed_error(self) -> httpx.ConnectError:
        return httpx.ConnectError("the connection pool is closed")


def _time_out(waiter: asyncio.Future[Http1Connection | None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.PoolTimeout(f"no connection was free within {timeout} s"))
