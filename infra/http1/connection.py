"""One HTTP/1.1 connection: request bytes out, the answer parsed by httptools as it comes.

An :class:`Http1Connection` carries one exchange at a time: :meth:`~Http1Connection.send`
writes a request's bytes and returns a future of its :class:`Answer`, resolved once the
answer is whole (``Content-Length``, chunked, or ended by the connection's end) or
failed with one of :mod:`infra.http1.errors`. Interim answers (``1xx``) are skipped; a
``HEAD`` answer ends with its head.

Whether a connection may carry another request is :meth:`~Http1Connection.reusable`,
the one test of a stale connection: its last answer left it open (HTTP/1.1, no
``Connection: close``, read whole), this side has not seen it close, and there is
nothing to read on its socket. A server's close, a reset or bytes nobody asked for may
already sit in the socket while the event loop has not handled them yet: a socket that
is readable while idle is never written to.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import httptools
import httpx

from infra.http1.errors import AnswerIncomplete, AnswerMalformed, AnswerTooLarge, ConnectionBroken
from infra.http1.origin import Origin

# Status line and headers of one answer: far above any answer the callers expect.
MAX_HEAD_SIZE = 64 * 1024
DEFAULT_MAX_ANSWER_SIZE = 1 << 20


@dataclass(slots=True)
class Answer:
    """An answer as it came: status, the whole body, and headers (names lower-cased)."""

    status: int
    body: bytes = b""
    headers: Sequence[tuple[bytes, bytes]] = field(default=(), compare=False)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Http1Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to ``origin`` and the answer being read on it.

    ``max_answer_size`` bounds an answer's body (its head is bounded by MAX_HEAD_SIZE);
    ``on_lost`` is called once the connection is gone.
    """

    __slots__ = (
        "_fd",
        "_on_lost",
        "_poller",
        "body",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "lost",
        "max_answer_size",
        "only_head",
        "origin",
        "parser",
        "received",
        "size",
        "status",
        "transport",
        "waiter",
    )

    def __init__(
        self,
        origin: Origin,
        *,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
        on_lost: Callable[[Http1Connection], None] | None = None,
    ) -> None:
        self.origin = origin
        self.max_answer_size = max_answer_size
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None  # set while an answer is due
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0  # body bytes of this answer
        self.received = 0  # all bytes of this answer
        self.headers_done = False
        self.only_head = False
        self.keep_alive = False  # set by a whole answer that leaves the connection open
        self.lost = False
        self.idle_since = 0.0  # the pool's: when the connection was last given back
        self._on_lost = on_lost
        self._fd = -1
        self._poller: select.poll | None = None

    # -- used by the connection's owner

    def is_open(self) -> bool:
        """Connected, and not closed or closing as far as the event loop has seen."""
        transport = self.transport
        return transport is not None and not self.lost and not transport.is_closing()

    def reusable(self) -> bool:
        """Whether another request may go out on this idle connection (see the module)."""
        if not self.keep_alive or self.waiter is not None or not self.is_open():
            return False
        if self._fd < 0:  # a transport without a socket to look at: trust its events
            return True
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self._fd, select.POLLIN)
        return not poller.poll(0)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        """Write ``request``; the future resolves with its answer or fails with one of
        :mod:`infra.http1.errors`. ``httpx.ConnectError`` (nothing sent) when the
        connection is not open."""
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            raise httpx.ConnectError(f"the connection to {self.origin} is closed: nothing sent")
        self.status = self.size = self.received = 0
        self.headers = []
        self.body = []
        self.headers_done = False
        self.only_head = request.startswith(b"HEAD ")
        self.keep_alive = False
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        transport.write(request)
        return waiter

    def read_timed_out(self, seconds: float) -> None:
        """End the exchange: no whole answer came within ``seconds``."""
        self.fail(httpx.ReadTimeout(f"no complete answer from {self.origin} in {seconds} s"))

    def fail(self, exc: httpx.TransportError) -> None:
        """End the exchange with ``exc`` and close the connection at once."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def close(self) -> None:
        """Close politely (a TLS close_notify first), after what was written is sent."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping whatever was not sent."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Hang up at once with a TCP reset, as a client that gives up does."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # A server that speaks out of turn is not trusted with another request.
            self.abort()
            return
        self.received += len(data)
        try:
            if self.received > self.max_answer_size + MAX_HEAD_SIZE:
                raise self._too_large()
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols (or an upgrade): whatever follows is not HTTP/1.1.
            self.fail(AnswerMalformed(f"{self.origin} switched protocols: no answer"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, httpx.TransportError):  # raised by a callback below
                self.fail(cause)
            else:
                self.fail(AnswerMalformed(f"unparsable answer from {self.origin}: {exc}"))
        except httpx.TransportError as exc:
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self.lost = True
        if self._on_lost is not None:
            self._on_lost(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self.headers_done and not self._framed():
            self._finish()  # a body delimited by the end of the connection
            return
        status = self.status if self.headers_done else None
        if exc is None:
            failure: httpx.TransportError = AnswerIncomplete(
                f"{self.origin} closed the connection before the answer was complete",
                status=status,
            )
        else:
            failure = ConnectionBroken(
                f"the connection to {self.origin} failed: {type(exc).__name__}: {exc}",
                status=status,
            )
            failure.__cause__ = exc
        self.fail(failure)

    # -- httptools callbacks (an exception raised here ends the exchange)

    def on_message_begin(self) -> None:
        if self.waiter is None:
            raise AnswerMalformed(f"{self.origin} sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        # The size is known before the body comes: refuse it at once.
        if (
            name == b"content-length"
            and not self.only_head
            and value.isdigit()
            and int(value) > self.max_answer_size
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
        if self.size > self.max_answer_size:
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
            waiter.set_result(Answer(self.status, b"".join(self.body), self.headers))

    def _framed(self) -> bool:
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def _too_large(self) -> AnswerTooLarge:
        return AnswerTooLarge(
            f"the answer from {self.origin} is larger than {self.max_answer_size} bytes"
        )


async def open_connection(
    origin: Origin,
    *,
    timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
    on_lost: Callable[[Http1Connection], None] | None = None,
) -> Http1Connection:
    """A new connection to ``origin`` (over TLS with ``ssl_context``, naming the host).

    ``httpx.ConnectTimeout`` when not connected within ``timeout`` seconds,
    ``httpx.ConnectError`` (the OS error as its cause) when the connection cannot be made.
    """
    loop = asyncio.get_running_loop()
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            _, connection = await loop.create_connection(
                lambda: Http1Connection(origin, max_answer_size=max_answer_size, on_lost=on_lost),
                origin.host,
                origin.port,
                ssl=ssl_context,
                server_hostname=origin.host if ssl_context is not None else None,
            )
    except OSError as exc:  # TimeoutError, TLS and resolution failures included
        if scope.expired():
            raise httpx.ConnectTimeout(f"no connection to {origin} within {timeout} s") from exc
        raise httpx.ConnectError(f"cannot connect to {origin}: {exc}") from exc
    return connection
