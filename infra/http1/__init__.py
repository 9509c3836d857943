"""The project's one HTTP/1.1 client: asyncio protocol, httptools, keep-alive per origin.

Used by the proxy (its calls to the job server), the job server simulator (its
callbacks), the jobclient (under httpx) and the bench's load generator. What travels
is theirs: this package builds no request of a protocol and judges no answer.

* :mod:`~infra.http1.requests`: a request's bytes, built once.
* :mod:`~infra.http1.connection`: :class:`Http1Connection`, one connection parsing
  its answers with httptools, and :func:`open_connection`.
* :mod:`~infra.http1.pool`: :class:`ConnectionPool`, keep-alive connections per
  :class:`Origin`, with one test of a stale connection.
* :mod:`~infra.http1.transport`: :class:`Http1Transport`, the pool under
  ``httpx.AsyncClient``.
* :mod:`~infra.http1.errors`: the errors, all httpx's.
"""

from infra.http1.connection import Answer, Http1Connection, open_connection
from infra.http1.errors import AnswerIncomplete, AnswerMalformed, AnswerTooLarge, ConnectionBroken
from infra.http1.origin import Origin
from infra.http1.pool import ConnectionPool
from infra.http1.requests import request, request_head
from infra.http1.transport import Http1Transport

__all__ = [
    "Answer",
    "AnswerIncomplete",
    "AnswerMalformed",
    "AnswerTooLarge",
    "ConnectionBroken",
    "ConnectionPool",
    "Http1Connection",
    "Http1Transport",
    "Origin",
    "open_connection",
    "request",
    "request_head",
]
