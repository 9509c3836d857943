"""The client's errors: httpx's own, and four subclasses that say more about an answer.

Every failure of an exchange is an ``httpx.TransportError``, so that a caller on the
fast path and one behind ``httpx.AsyncClient`` handle the same errors::

    httpx.TransportError
    ├── httpx.ConnectError        refused, unreachable, TLS failure, closed at once,
    │                             the pool closed (the OS error is the __cause__)
    ├── httpx.ConnectTimeout      not connected within ``connect``
    ├── httpx.PoolTimeout         no connection free within ``pool``
    ├── httpx.ReadTimeout         no complete answer within ``read``
    ├── httpx.ReadError
    │   └── ConnectionBroken      the connection failed (a reset, say) mid-answer
    ├── httpx.RemoteProtocolError
    │   ├── AnswerIncomplete      closed by the server before the answer was whole
    │   ├── AnswerMalformed       not HTTP/1.1: unparsable, switched protocols, or
    │   │                         more than one answer to one request
    │   └── AnswerTooLarge        head or body over the connection's limit
    └── httpx.UnsupportedProtocol a request for an origin the transport does not reach

A request that met ``httpx.ConnectError``, ``ConnectTimeout`` or ``PoolTimeout`` was
never sent; after any other error it may have reached the server.
"""

from __future__ import annotations

import httpx


class ConnectionBroken(httpx.ReadError):
    """The connection failed before the whole answer came; the OS error is the __cause__.

    ``status`` is the answer's status when its head had come whole, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AnswerIncomplete(httpx.RemoteProtocolError):
    """The server closed the connection before the whole answer came.

    ``status`` is the answer's status when its head had come whole, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AnswerMalformed(httpx.RemoteProtocolError):
    """What the server sent is not an HTTP/1.1 answer to the request."""


class AnswerTooLarge(httpx.RemoteProtocolError):
    """The answer's head or body is larger than the connection accepts."""
