"""The job server's connections to callback receivers: prebuilt requests in, statuses out.

A :class:`ConnectionPool` keeps connections alive per receiver (:class:`Origin`: scheme,
host, port) on :class:`infra.http1.ConnectionPool`, the project's HTTP/1.1 client: at
most ``max_connections`` in all, each closed after ``idle_expiry`` seconds idle (4 s,
before the receivers' own 5 s), a pooled connection found stale before anything was
written to it replaced by another without a failed attempt. :meth:`ConnectionPool.post`
sends one callback's bytes and returns the answer's status; the body is read and
discarded (at most ``MAX_ANSWER_BODY`` bytes).

Why not an HTTP client library: a callback is one small POST whose answer matters only
by its status, and a client's per-request URL merging, header objects, cookie handling
and response objects cost the job server more CPU than its own work on the job.

Every way an exchange can fail ends in one :class:`ExchangeFailed` whose message says
what happened (:func:`exchange_failed` words them). A receiver that closes or breaks
the connection once its answer's head is whole has given its verdict: its status
stands, whatever became of the body.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import httpx

from infra import http1
from infra.http1 import Origin

__all__ = ["IDLE_EXPIRY", "MAX_ANSWER_BODY", "ConnectionPool", "ExchangeFailed", "Origin"]

#: Largest answer body read (and discarded); a longer one fails the attempt.
MAX_ANSWER_BODY = 64 * 1024
#: Seconds an idle connection is kept. Receivers commonly close idle connections after
#: 5 s (uvicorn's and Node's defaults); closing ours first keeps a request from going
#: out on a connection the receiver is closing.
IDLE_EXPIRY = 4.0
#: Seconds :meth:`ConnectionPool.close` waits for the closed connections to be gone.
CLOSE_TIMEOUT = 1.0


class ExchangeFailed(Exception):
    """One request got no usable answer; the message says why."""


def exchange_failed(exc: httpx.TransportError) -> ExchangeFailed:
    """A failed exchange (an error of :mod:`infra.http1`, or of any httpx transport) in
    one line: the one place where transport errors become the job server's."""
    if isinstance(exc, http1.AnswerTooLarge):
        return ExchangeFailed(f"answer body over {MAX_ANSWER_BODY // 1024} KiB")
    if isinstance(exc, http1.AnswerMalformed):
        return ExchangeFailed(f"malformed answer: {exc}")
    if isinstance(exc, http1.AnswerIncomplete | http1.ConnectionBroken):
        reason = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        return ExchangeFailed(f"connection closed before the answer{reason}")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        cause = exc.__cause__ or exc
        return ExchangeFailed(f"cannot connect: {type(cause).__name__}: {cause}")
    return ExchangeFailed(f"{type(exc).__name__}: {exc}")


class ConnectionPool:
    """Keep-alive connections to receivers, per origin, at most ``max_connections`` in all.

    At most ``max_connections`` exchanges run at once, so a burst queues for a slot; an
    exchange's deadline starts once it has one. Opening a connection when the bound is
    reached closes the idle connection unused the longest (of whichever origin).
    ``ssl_context`` serves ``https`` origins; by default ``ssl.create_default_context()``,
    made on first use.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        idle_expiry: float = IDLE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # As many slots as connections: an exchange with a slot never waits for one.
        self._slots = asyncio.Semaphore(max_connections)
        self._connections = http1.ConnectionPool(
            max_connections,
            idle_expiry=idle_expiry,
            max_answer_size=MAX_ANSWER_BODY,
            ssl_context=ssl_context,
        )

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def post(self, origin: Origin, request: Callable[[], bytes], timeout: float) -> int:
        """Send the bytes ``request()`` builds to ``origin``; return the answer's status.

        ``request`` is called once the exchange has its slot, so that what it builds (a
        signature's timestamp) is as fresh as the attempt. Raises :class:`ExchangeFailed`,
        including when no whole answer came within ``timeout`` seconds.
        """
        async with self._slots:
            data = request()
            try:
                async with asyncio.timeout(timeout):
                    answer = await self._connections.exchange(origin, data)
            except TimeoutError:
                raise ExchangeFailed(f"no answer within {timeout:g} s") from None
            except (http1.AnswerIncomplete, http1.ConnectionBroken) as exc:
                if exc.status is not None and exc.status >= 200:
                    return exc.status  # the head was whole: the receiver's verdict
                raise exchange_failed(exc) from exc
            except httpx.TransportError as exc:
                raise exchange_failed(exc) from exc
        return answer.status

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every connection; wait (at most ``timeout``) until they are gone."""
        await self._connections.aclose(timeout)
