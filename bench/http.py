"""A minimal HTTP/1.1 client protocol for the load generator.

Why not aiohttp or httpx: at 10,000 concurrent requests on a 2-core machine the
generator's own CPU competes with the servers it measures, and a full client library
spends several times more per request than writing one prebuilt request and parsing one
status line. The servers under test are ours (uvicorn + httptools), so the subset that
matters is small: ``Content-Length`` bodies, chunked bodies, and bodies ended by EOF.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

HEADER_END = b"\r\n\r\n"


class ResponseIncomplete(ConnectionError):
    """The server closed the connection before a whole response arrived."""


class MalformedResponse(ValueError):
    """The bytes received are not an HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A response: its status code, its headers (names in lower case) and its whole body."""

    status: int
    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict, compare=False)


def build_post(
    host: str, port: int, path: str, body: bytes, *, keep_alive: bool, headers: str = ""
) -> bytes:
    """The bytes of one ``POST`` with a JSON body; ``headers``: more lines, each ending
    in CRLF."""
    connection = "keep-alive" if keep_alive else "close"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {connection}\r\n{headers}\r\n"
    )
    return head.encode("ascii") + body


def build_get(host: str, port: int, path: str, *, headers: str = "") -> bytes:
    """The bytes of one ``GET`` on a connection of its own."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n{headers}\r\n"
    return head.encode("ascii")


async def fetch(url: str, timeout: float) -> HttpAnswer:
    """``GET url`` on a connection of its own."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    async with asyncio.timeout(timeout):
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(HttpConnection, host, port)
        try:
            return await connection.send(request.encode("ascii"))
        finally:
            connection.close()


def _decode_chunked(data: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
    """The body and the end offset of a chunked body at ``start``, or None if incomplete."""
    body = bytearray()
    position = start
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = bytes(data[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise MalformedResponse(f"bad chunk size {size_text!r}") from None
        if size == 0:
            # The last chunk's line, any trailers, then an empty line.
            trailer_end = data.find(HEADER_END, line_end)
            return None if trailer_end < 0 else (bytes(body), trailer_end + 4)
        chunk_start = line_end + 2
        if len(data) < chunk_start + size + 2:
            return None
        body += data[chunk_start : chunk_start + size]
        position = chunk_start + size + 2


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise MalformedResponse(f"bad status line {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _body_end(
    data: bytes | bytearray, start: int, status: int, headers: dict[bytes, bytes], *, eof: bool
) -> tuple[bytes, int] | None:
    """The body and where it ends, or None while more bytes may come."""
    if b"content-length" in headers:
        end = start + int(headers[b"content-length"])
        return (bytes(data[start:end]), end) if len(data) >= end else None
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return _decode_chunked(data, start)
    if status in (204, 304) or 100 <= status < 200:
        return b"", start
    # Neither a length nor chunks: the body ends when the server closes.
    return (bytes(data[start:]), len(data)) if eof else None


def parse_response(data: bytes | bytearray, *, eof: bool) -> tuple[HttpAnswer, int] | None:
    """The first response in ``data`` and how many bytes it used, or None if incomplete.

    ``eof`` says the peer closed: a body without a length then ends there, and anything
    still missing is an error rather than something to wait for.
    """
    header_end = data.find(HEADER_END)
    body = None
    if header_end >= 0:
        status, headers = _parse_head(bytes(data[:header_end]))
        body = _body_end(data, header_end + len(HEADER_END), status, headers, eof=eof)
    if body is None:
        if eof:
            raise ResponseIncomplete("the server closed before the whole response came")
        return None
    return HttpAnswer(status, body[0], headers), body[1]


class HttpConnection(asyncio.Protocol):
    """One client connection; one request in flight at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[HttpAnswer] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[HttpAnswer]:
        """Write ``request``; the future resolves with its response."""
        if self._transport is None or self.closed:
            raise ResponseIncomplete("the connection is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def reset(self) -> None:
        """Hang up at once with a TCP reset, as a client that gives up does."""
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._deliver(eof=False)

    def eof_received(self) -> bool:
        self._deliver(eof=True)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deliver(eof=True)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or ResponseIncomplete("connection closed"))

    def _deliver(self, *, eof: bool) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        try:
            parsed = parse_response(self._buffer, eof=eof)
        except (ResponseIncomplete, MalformedResponse) as exc:
            answer.set_exception(exc)
            return
        if parsed is not None:
            del self._buffer[: parsed[1]]
            answer.set_result(parsed[0])
