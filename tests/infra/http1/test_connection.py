"""One connection (``infra/http1/connection.py``): answers parsed whole, errors by kind,
and the one test of whether an idle connection may carry another request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import pytest

from infra.http1 import (
    Answer,
    AnswerIncomplete,
    AnswerMalformed,
    AnswerTooLarge,
    ConnectionBroken,
    Http1Connection,
    Origin,
    open_connection,
    request,
)
from infra.http1.connection import DEFAULT_MAX_ANSWER_SIZE
from tests.conftest import closed_port, loopback_socket, run_server
from tests.infra.http1.servers import (
    OK,
    EchoApp,
    RawServer,
    answering,
    read_request,
    reset_on_close,
)

WAIT = 5.0


@contextlib.asynccontextmanager
async def connected(
    url: str, *, max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE
) -> AsyncIterator[Http1Connection]:
    """A connection to ``url``'s origin for the block."""
    connection = await open_connection(Origin.of(url), max_answer_size=max_answer_size)
    try:
        yield connection
    finally:
        connection.abort()


async def ask(connection: Http1Connection, method: str = "GET", path: str = "/") -> Answer:
    async with asyncio.timeout(WAIT):
        return await connection.send(request(method, path, b"test"))


def test_answer_header_lookup() -> None:
    """header() gives the first value of a lower-case name, or None."""
    answer = Answer(200, b"", [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
    assert answer.header(b"a") == b"1"
    assert answer.header(b"c") is None
    assert Answer(200, b"x", [(b"a", b"1")]) == Answer(200, b"x")  # headers do not compare


# Answers


async def test_a_request_and_its_answer_travel_whole() -> None:
    """A POST reaches the app whole, its answer comes back whole, and the connection
    may carry the next request."""
    echo = EchoApp()
    async with run_server(echo.app) as url, connected(url) as connection:
        sent = request("POST", "/echo?x=1", b"test", b'{"a":1}', [(b"Content-Type", b"a/b")])
        answer = await asyncio.wait_for(connection.send(sent), WAIT)
        assert connection.reusable()
        again = await ask(connection, "POST", "/echo")
    assert answer.status == 200
    assert answer.header(b"content-type") == b"application/json"
    assert json.loads(answer.body) == {
        "method": "POST",
        "path": "/echo",
        "query": "x=1",
        "content_type": "a/b",
        "trace": None,
        "body": '{"a":1}',
    }
    assert again.status == 200
    assert len(set(echo.ports)) == 1


async def test_chunked_answer_is_assembled() -> None:
    """A chunked answer comes back as one body, and the connection stays usable."""
    echo = EchoApp()
    async with run_server(echo.app) as url, connected(url) as connection:
        answer = await ask(connection, path="/chunked")
        again = await ask(connection, path="/chunked")
    assert answer.header(b"transfer-encoding") == b"chunked"
    assert answer.body == again.body == b"one,two,three"


async def test_body_until_the_connection_closes() -> None:
    """An answer without length or chunking ends with the connection, and is kept whole."""
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, world"
    async with (
        RawServer(answering(answer, then_close=True)) as server,
        connected(server.url) as connection,
    ):
        assert (await ask(connection)).body == b"hello, world"
        assert not connection.reusable()


async def test_interim_answer_is_skipped() -> None:
    """A 1xx answer before the real one is skipped."""
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with RawServer(answering(answer)) as server, connected(server.url) as connection:
        answer_seen = await ask(connection)
        assert (answer_seen.status, answer_seen.body) == (200, b"ok")
        assert answer_seen.header(b"link") is None
        assert connection.reusable()


async def test_head_answer_ends_with_its_head() -> None:
    """A HEAD answer ends with its head, though it announces a body's length; its
    connection is not reused."""
    echo = EchoApp()
    async with run_server(echo.app) as url, connected(url) as connection:
        answer = await ask(connection, "HEAD", "/echo")
    assert answer.status == 200
    assert int(answer.header(b"content-length") or 0) > 0
    assert answer.body == b""
    assert not connection.reusable()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_an_answer_may_end_its_connections_use(answer: bytes) -> None:
    """After Connection: close, or an HTTP/1.0 answer, the connection is not reused."""
    async with RawServer(answering(answer)) as server, connected(server.url) as connection:
        assert (await ask(connection)).body == b"ok"
        assert not connection.reusable()


async def test_unasked_bytes_end_the_connection() -> None:
    """A server that sends more than the answer has its connection closed."""
    extra = OK + b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answering(extra)) as server, connected(server.url) as connection:
        assert (await ask(connection)).body == b"ok"
        await server.until(lambda: server.closed == 1)
        assert not connection.reusable()


# Errors


async def test_close_mid_answer_is_answer_incomplete_with_the_status() -> None:
    """A server that closes before the answer is complete: AnswerIncomplete, a
    RemoteProtocolError, with the status its head gave."""
    partial = b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\n\r\nabc"
    async with (
        RawServer(answering(partial, then_close=True)) as server,
        connected(server.url) as connection,
    ):
        with pytest.raises(AnswerIncomplete, match="before the answer was complete") as caught:
            await ask(connection)
    assert isinstance(caught.value, httpx.RemoteProtocolError)
    assert caught.value.status == 503


async def test_close_before_any_answer_is_answer_incomplete_without_a_status() -> None:
    """A server that closes without answering: AnswerIncomplete without a status."""
    async with (
        RawServer(answering(b"", then_close=True)) as server,
        connected(server.url) as connection,
    ):
        with pytest.raises(AnswerIncomplete) as caught:
            await ask(connection)
    assert caught.value.status is None


async def test_reset_mid_answer_is_connection_broken() -> None:
    """A reset before the answer is complete: ConnectionBroken, a ReadError, caused by
    the OS error, with the status its head gave."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        reset_on_close(writer.get_extra_info("socket"))
        writer.transport.abort()

    async with RawServer(handle) as server, connected(server.url) as connection:
        with pytest.raises(ConnectionBroken) as caught:
            await ask(connection)
    assert isinstance(caught.value, httpx.ReadError)
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert caught.value.status == 200


async def test_garbage_answer_is_answer_malformed() -> None:
    """An answer that is not HTTP: AnswerMalformed, and the connection is closed."""
    async with (
        RawServer(answering(b"SMTP ready\r\n\r\n")) as server,
        connected(server.url) as connection,
    ):
        with pytest.raises(AnswerMalformed, match="unparsable"):
            await ask(connection)
        await server.until(lambda: server.closed == 1)


async def test_switching_protocols_is_answer_malformed_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 101 Switching Protocols answer is AnswerMalformed and closes the connection,
    without the event loop logging a fatal transport error."""
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nzz"
    async with RawServer(answering(upgrade)) as server, connected(server.url) as connection:
        with pytest.raises(AnswerMalformed, match="switched protocols"):
            await ask(connection)
        await server.until(lambda: server.closed == 1)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"320\r\n" + b"x" * 800 + b"\r\n") * 2
        + b"0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 70_000 + b"\r\n\r\n",
    ],
    ids=["content-length", "chunked", "endless-head"],
)
async def test_oversized_answer_is_refused_and_connection_closed(answer: bytes) -> None:
    """A body over max_answer_size (or a head over 64 KiB) is AnswerTooLarge, and the
    connection is closed."""
    async with (
        RawServer(answering(answer)) as server,
        connected(server.url, max_answer_size=1024) as connection,
    ):
        with pytest.raises(AnswerTooLarge, match="larger than 1024 bytes"):
            await ask(connection)
        await server.until(lambda: server.closed == 1)


async def test_read_timed_out_ends_the_exchange_and_the_connection() -> None:
    """read_timed_out() fails the exchange with ReadTimeout and closes the connection."""
    async with RawServer(answering()) as server, connected(server.url) as connection:
        answer = connection.send(request("GET", "/", b"test"))
        connection.read_timed_out(0.5)
        with pytest.raises(httpx.ReadTimeout, match=r"in 0\.5 s"):
            await answer
        await server.until(lambda: server.closed == 1)


async def test_a_closed_connection_sends_nothing() -> None:
    """send() on a closed connection is ConnectError: nothing was sent."""
    async with RawServer(answering()) as server, connected(server.url) as connection:
        connection.close()
        with pytest.raises(httpx.ConnectError, match="nothing sent"):
            connection.send(request("GET", "/", b"test"))


async def test_refused_connection_is_connect_error_caused_by_the_os() -> None:
    """A refused connection is ConnectError, the OS's error its cause."""
    with closed_port() as port, pytest.raises(httpx.ConnectError) as caught:
        await open_connection(Origin("http", "127.0.0.1", port))
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_slow_connect_is_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection not made within the timeout is ConnectTimeout."""
    loop = asyncio.get_running_loop()

    async def never(*args: object, **kwargs: object) -> object:
        await loop.create_future()
        raise AssertionError("unreachable")

    monkeypatch.setattr(loop, "create_connection", never)
    with pytest.raises(httpx.ConnectTimeout, match=r"within 0\.05 s"):
        await open_connection(Origin("http", "127.0.0.1", 1), timeout=0.05)


async def test_reset_hangs_up_with_a_tcp_reset() -> None:
    """reset() ends the connection with a TCP reset, as a client that gives up does."""
    seen: list[BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        except ConnectionResetError as exc:
            seen.append(exc)

    async with RawServer(handle) as server, connected(server.url) as connection:
        connection.reset()
        await server.until(lambda: server.closed == 1)
    assert len(seen) == 1


# Stale connections

Ending = Literal["close", "reset", "stray-bytes"]


@pytest.mark.parametrize("ending", ["close", "reset", "stray-bytes"])
async def test_an_idle_connection_with_anything_to_read_is_not_reusable(ending: Ending) -> None:
    """A server's close, a reset or unasked bytes that reached the socket make an idle
    connection unusable before the event loop has handled them."""
    loop = asyncio.get_running_loop()
    with loopback_socket() as listener:
        listener.listen()
        listener.setblocking(False)
        origin = Origin("http", "127.0.0.1", listener.getsockname()[1])
        connecting = asyncio.ensure_future(open_connection(origin))
        server_side, _ = await loop.sock_accept(listener)
        connection = await connecting
        try:
            answer = connection.send(request("GET", "/", b"test"))
            received = b""
            while not received.endswith(b"\r\n\r\n"):
                received += await loop.sock_recv(server_side, 65536)
            await loop.sock_sendall(server_side, OK)
            assert (await answer).body == b"ok"
            assert connection.reusable()
            if ending == "close":
                server_side.shutdown(socket.SHUT_WR)
            elif ending == "reset":
                reset_on_close(server_side)
                server_side.close()
            else:
                server_side.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            assert connection.transport is not None
            fd = connection.transport.get_extra_info("socket").fileno()
            # Block, without letting the loop run, until it reached the client's socket.
            readable, _, _ = select.select([fd], [], [], WAIT)
            assert readable
            assert connection.is_open()  # the event loop has not seen it
            assert not connection.reusable()
        finally:
            connection.abort()
            server_side.close()


async def test_a_connection_with_an_answer_due_is_not_reusable() -> None:
    """A connection waiting for its answer cannot carry another request."""
    async with RawServer(answering()) as server, connected(server.url) as connection:
        answer = connection.send(request("GET", "/", b"test"))
        assert not connection.reusable()
        answer.cancel()
