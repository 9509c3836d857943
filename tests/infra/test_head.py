"""The bounded request head: heads over their size or header count get 431, others pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from starlette.types import Receive, Scope, Send

from infra.head import bounded_head_protocol
from tests.conftest import run_server

MAX_SIZE = 2_048
MAX_HEADERS = 10


async def echo_size(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the size of the body it read and the number of headers it got."""
    assert scope["type"] == "http"
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"body": size, "headers": len(scope["headers"])}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    protocol = bounded_head_protocol(MAX_SIZE, MAX_HEADERS)
    async with run_server(echo_size, lifespan="off", http=protocol) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def request(headers: int = 2, header_size: int = 10, body: bytes = b"") -> bytes:
    """A POST with ``headers`` header lines in all: host, content-length and x-h ones."""
    lines = [f"x-h{n}: {'a' * header_size}" for n in range(headers - 2)]
    head = "\r\n".join(["POST /p HTTP/1.1", "host: t", *lines, f"content-length: {len(body)}"])
    return head.encode() + b"\r\n\r\n" + body


async def exchange(address: tuple[str, int], *chunks: bytes) -> tuple[int, dict[str, object]]:
    """Send ``chunks`` one write each; the status and JSON body of the first answer."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
        return int(head.split(b" ")[1]), json.loads(body)
    finally:
        writer.close()


async def test_a_head_within_the_limits_is_served(server: tuple[str, int]) -> None:
    """A request with a head just under both limits reaches the app."""
    status, body = await exchange(server, request(headers=MAX_HEADERS, header_size=100))
    assert (status, body["headers"]) == (200, MAX_HEADERS)


async def test_a_head_over_the_size_is_431(server: tuple[str, int]) -> None:
    """Header lines adding up to more than the size are refused with a JSON 431."""
    status, body = await exchange(server, request(headers=4, header_size=MAX_SIZE // 2))
    assert status == 431
    assert body["error"] == "request_head_too_large"
    assert str(MAX_SIZE) in str(body["detail"])


async def test_too_many_header_lines_are_431(server: tuple[str, int]) -> None:
    """One header line more than allowed is refused with a JSON 431."""
    status, body = await exchange(server, request(headers=MAX_HEADERS + 1))
    assert status == 431
    assert "header lines" in str(body["detail"])


async def test_an_endless_header_line_is_cut_off(server: tuple[str, int]) -> None:
    """A header line that never ends is refused once it passes the limit, and the
    connection is closed, however much more the client would send."""
    reader, writer = await asyncio.open_connection(*server)
    writer.write(b"POST /p HTTP/1.1\r\nhost: t\r\nx-endless: ")
    sent = 0
    async with asyncio.timeout(5):
        answered = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        try:
            while not answered.done() and sent < 1_000_000:  # far beyond the limit
                writer.write(b"a" * 1_024)
                sent += 1_024
                await writer.drain()
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass  # the server closed the connection under the writes
        head = await answered
    writer.close()
    assert head.startswith(b"HTTP/1.1 431")
    assert sent < 10 * MAX_SIZE


async def test_a_head_in_many_small_reads_is_measured_right(server: tuple[str, int]) -> None:
    """A head under the limit that arrives a few bytes at a time is not refused."""
    whole = request(headers=MAX_HEADERS, header_size=150)
    chunks = [whole[start : start + 7] for start in range(0, len(whole), 7)]
    status, _ = await exchange(server, *chunks)
    assert status == 200


async def test_a_large_body_before_the_next_head_counts_for_nothing(
    server: tuple[str, int],
) -> None:
    """A big body and the next request's head in one read: the body is not head."""
    reader, writer = await asyncio.open_connection(*server)
    try:
        writer.write(request(body=b"b" * 50_000) + request(headers=3))
        await writer.drain()
        statuses = []
        async with asyncio.timeout(5):
            for _ in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head.split(b" ")[1]))
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
    finally:
        writer.close()
    assert statuses == [200, 200]


async def test_an_unparsable_request_is_a_json_400(server: tuple[str, int]) -> None:
    """A request uvicorn cannot parse is answered 400 with a JSON body."""
    status, body = await exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400
    assert body["error"] == "bad_request"
