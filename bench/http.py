"""The load generator's requests, on the project's HTTP/1.1 client (:mod:`infra.http1`).

Why not httpx: at 10,000 concurrent requests on a 2-core machine the generator's own
CPU competes with the servers it measures, and a full client library spends several
times more per request than writing one prebuilt request and parsing one answer. Each
request is built once (:func:`build_post`, :func:`build_get`) and written on a
connection of its own (:func:`infra.http1.open_connection`): a held request holds its
connection, and a client that gives up resets it (:meth:`infra.http1.Http1Connection.reset`).
Failures are :mod:`infra.http1`'s errors; :mod:`bench.outcomes` words them.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from infra.http1 import Answer, Origin, open_connection, request


def header_pairs(lines: str) -> list[tuple[bytes, bytes]]:
    """``Name: value`` lines, each ending in CRLF, as (name, value) pairs."""
    pairs = []
    for line in lines.split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            pairs.append((name.strip().encode("ascii"), value.strip().encode("ascii")))
    return pairs


def build_post(
    host: str, port: int, path: str, body: bytes, *, keep_alive: bool, headers: str = ""
) -> bytes:
    """The bytes of one ``POST`` with a JSON body; ``headers``: more lines, each ending
    in CRLF."""
    fields = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive" if keep_alive else b"close"),
        *header_pairs(headers),
    ]
    return request("POST", path, f"{host}:{port}".encode("ascii"), body, fields)


def build_get(host: str, port: int, path: str, *, headers: str = "") -> bytes:
    """The bytes of one ``GET`` on a connection of its own."""
    fields = [(b"Connection", b"close"), *header_pairs(headers)]
    return request("GET", path, f"{host}:{port}".encode("ascii"), b"", fields)


def origin_of(url: str) -> Origin:
    """Where the generator's connections go: ``url``'s host and port (80 by default)."""
    parts = urlsplit(url)
    return Origin("http", parts.hostname or "127.0.0.1", parts.port or 80)


async def fetch(url: str, timeout: float) -> Answer:
    """``GET url`` on a connection of its own."""
    origin = origin_of(url)
    async with asyncio.timeout(timeout):
        connection = await open_connection(origin)
        try:
            return await connection.send(
                build_get(origin.host, origin.port, urlsplit(url).path or "/")
            )
        finally:
            connection.close()
