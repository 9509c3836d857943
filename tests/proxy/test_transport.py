"""The upstream transport against real servers: pooling, retries, errors, httpx and respx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy import transport as transport_module
from proxy.transport import RawResponse, UpstreamTransport
from tests.conftest import closed_port, loopback_socket, run_server

TIMEOUTS: dict[str, float | None] = {"connect": 5.0, "read": 5.0, "pool": 5.0}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# Servers


class EchoApp:
    """A Starlette app that says what it received and from which client port."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.app = Starlette(
            routes=[
                Route("/echo", self.echo, methods=["GET", "POST"]),
                Route("/api/echo", self.echo, methods=["POST"]),
                Route("/chunked", self.chunked),
                Route("/close", self.close),
            ]
        )

    def _seen(self, request: Request) -> None:
        assert request.client is not None
        self.ports.append(request.client.port)

    async def echo(self, request: Request) -> Response:
        self._seen(request)
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "content_type": request.headers.get("content-type"),
                "trace": request.headers.get("x-trace"),
                "body": (await request.body()).decode(),
            }
        )

    async def chunked(self, request: Request) -> Response:
        self._seen(request)

        async def parts() -> AsyncIterator[bytes]:
            for part in (b"one,", b"two,", b"three"):
                yield part

        return StreamingResponse(parts())

    async def close(self, request: Request) -> Response:
        self._seen(request)
        return Response(b"bye", headers={"connection": "close"})


class RawServer:
    """An asyncio server that misbehaves on purpose: ``handle`` runs for each connection."""

    def __init__(self, handle: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.ssl_context = ssl_context
        self.connections = 0
        self.closed = 0  # connections whose client went away or that the handler ended
        self.changed = asyncio.Condition()
        self.url = ""
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawServer:
        sock = loopback_socket()
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=self.ssl_context)
        port = sock.getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        await self._count("connections")
        try:
            await self.handle(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            # Stopped by __aexit__, or a client that went away: either ends the
            # connection quietly (asyncio would log the handler's exception).
            pass
        finally:
            writer.close()
        await self._count("closed")

    async def _count(self, name: str) -> None:
        async with self.changed:
            setattr(self, name, getattr(self, name) + 1)
            self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(predicate)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's bytes (head and Content-Length body); b"" at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """A handler that answers each request with the next of ``answers``, kept alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            if not await read_request(reader):
                return
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client goes

    return handle


class HeldAnswers:
    """A handler that answers every request (kept alive) only once the test releases it."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()
        self.server = RawServer(self.handle)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            async with self.server.changed:
                self.arrived += 1
                self.server.changed.notify_all()
            await self.release.wait()
            writer.write(OK)
            await writer.drain()


@contextlib.asynccontextmanager
async def pool_to(url: str, **options: Any) -> AsyncIterator[UpstreamTransport]:
    options.setdefault("max_connections", 10)
    async with UpstreamTransport(url, **options) as transport:
        yield transport


async def get(
    transport: UpstreamTransport, path: str = "/", **timeouts: float | None
) -> RawResponse:
    request = transport.prebuilt("GET", path, b"", content_type=b"")
    return await transport.exchange(request, **(TIMEOUTS | timeouts))


def reset_on_close(sock: Any) -> None:
    """Make closing ``sock`` (a socket, or a transport's) send a TCP reset, not an orderly end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# Requests and answers


def test_prebuilt_request_bytes() -> None:
    """A prebuilt request carries Host, Content-Type and Content-Length, below the base path."""
    transport = UpstreamTransport("http://jobserver.test:8001/api/", max_connections=1)
    request = transport.prebuilt("POST", "/start", b'{"a":1}')
    assert request == (
        b"POST /api/start HTTP/1.1\r\nHost: jobserver.test:8001\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}'
    )
    with pytest.raises(ValueError, match="path"):
        transport.prebuilt("GET", "/a b\r\nX: y", b"")


def test_raw_response_header_lookup() -> None:
    """header() gives the first value of a lower-case name, or None."""
    response = RawResponse(200, [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")], b"")
    assert response.header(b"a") == b"1"
    assert response.header(b"c") is None


async def test_post_round_trip_with_prebuilt_bytes() -> None:
    """A prebuilt POST reaches the app whole, and its answer comes back whole."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_to(url) as transport:
        request = transport.prebuilt("POST", "/echo?x=1", b'{"account":"a"}')
        response = await transport.exchange(request, **TIMEOUTS)
    assert response.status == 200
    assert response.header(b"content-type") == b"application/json"
    assert json.loads(response.body) == {
        "method": "POST",
        "path": "/echo",
        "query": "x=1",
        "content_type": "application/json",
        "trace": None,
        "body": '{"account":"a"}',
    }


async def test_sequential_requests_reuse_one_connection() -> None:
    """Sequential requests travel on one kept-alive connection."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_to(url) as transport:
        for _ in range(5):
            assert (await get(transport, "/echo")).status == 200
    assert len(echo.ports) == 5
    assert len(set(echo.ports)) == 1


async def test_expired_idle_connection_is_not_reused() -> None:
    """A connection idle for longer than keepalive_expiry is closed, not reused."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_to(url, keepalive_expiry=0.0) as transport:
        await get(transport, "/echo")
        await get(transport, "/echo")
    assert len(set(echo.ports)) == 2


async def test_chunked_answer_is_assembled() -> None:
    """A chunked answer comes back as one body."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_to(url) as transport:
        response = await get(transport, "/chunked")
        again = await get(transport, "/chunked")
    assert response.header(b"transfer-encoding") == b"chunked"
    assert response.body == again.body == b"one,two,three"
    assert len(set(echo.ports)) == 1


async def test_connection_close_is_honoured() -> None:
    """An answer with Connection: close is not followed by another request on its connection."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_to(url) as transport:
        assert (await get(transport, "/close")).body == b"bye"
        assert (await get(transport, "/close")).body == b"bye"
    assert len(set(echo.ports)) == 2


async def test_http_10_answer_is_not_reused() -> None:
    """An HTTP/1.0 answer ends its connection's use, even with Connection: keep-alive."""
    answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(answering(answer, answer)) as server, pool_to(server.url) as transport:
        assert (await get(transport)).body == b"ok"
        assert (await get(transport)).body == b"ok"
        assert server.connections == 2


async def test_body_until_the_connection_closes() -> None:
    """An answer without length or chunking ends with the connection, and is kept whole."""
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, world"
    async with (
        RawServer(answering(answer, then_close=True)) as server,
        pool_to(server.url) as transport,
    ):
        response = await get(transport)
    assert response.body == b"hello, world"


async def test_interim_answer_is_skipped() -> None:
    """A 1xx answer before the real one is skipped."""
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with RawServer(answering(answer, OK)) as server, pool_to(server.url) as transport:
        response = await get(transport)
        assert (response.status, response.body) == (200, b"ok")
        assert (await get(transport)).body == b"ok"
        assert server.connections == 1


async def test_unasked_bytes_end_the_connections_use() -> None:
    """A connection on which the server sends more than the answer is not reused."""
    extra = OK + b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answering(extra, OK)) as server, pool_to(server.url) as transport:
        assert (await get(transport)).body == b"ok"
        server.handle = answering(OK)
        assert (await get(transport)).body == b"ok"
        assert server.connections == 2


# Connections the server closed


async def test_idle_connection_closed_by_server_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kept-alive connection the server closed while idle is replaced, not reported."""
    lost = asyncio.Event()
    connection_lost = transport_module._Connection.connection_lost

    def noticing(conn: transport_module._Connection, exc: Exception | None) -> None:
        connection_lost(conn, exc)
        lost.set()

    monkeypatch.setattr(transport_module._Connection, "connection_lost", noticing)
    async with (
        RawServer(answering(OK, then_close=True)) as server,
        pool_to(server.url) as transport,
    ):
        await get(transport)
        async with asyncio.timeout(5):
            await lost.wait()
        server.handle = answering(OK)
        assert (await get(transport)).body == b"ok"
        assert server.connections == 2


async def test_reset_noticed_only_when_writing_is_retried() -> None:
    """A pooled connection whose reset shows only when the request is written is replaced."""
    loop = asyncio.get_running_loop()

    async def answer_one(listener: socket.socket) -> socket.socket:
        sock, _ = await loop.sock_accept(listener)
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            request += await loop.sock_recv(sock, 65536)
        await loop.sock_sendall(sock, OK)
        return sock

    with loopback_socket() as listener:
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        async with pool_to(url) as transport:
            first = asyncio.ensure_future(answer_one(listener))
            await get(transport)
            server_side = await first
            reset_on_close(server_side)
            server_side.close()
            idle = transport._idle[-1].transport
            assert idle is not None
            # Block, without letting the loop run, until the reset reached the client's
            # socket: the transport has not seen it and can only find it by writing.
            readable, _, _ = select.select([idle.get_extra_info("socket").fileno()], [], [], 5)
            assert readable
            assert not idle.is_closing()
            second = asyncio.ensure_future(answer_one(listener))
            assert (await get(transport)).body == b"ok"
            (await second).close()


# Errors


async def test_refused_connection_is_connect_error() -> None:
    """A refused connection raises ConnectError, and gives its slot back."""
    with closed_port() as port:
        async with pool_to(f"http://127.0.0.1:{port}", max_connections=1) as transport:
            for _ in range(2):
                with pytest.raises(httpx.ConnectError):
                    await get(transport, pool=0.5)


async def test_slow_connect_is_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection not made within the connect timeout raises ConnectTimeout, slot freed."""
    loop = asyncio.get_running_loop()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await loop.create_future()

    monkeypatch.setattr(loop, "create_connection", never)
    async with pool_to("http://127.0.0.1:1", max_connections=1) as transport:
        for _ in range(2):
            with pytest.raises(httpx.ConnectTimeout):
                await get(transport, connect=0.05, pool=0.5)


async def test_slow_answer_is_read_timeout_and_connection_dropped() -> None:
    """No complete answer within the read timeout raises ReadTimeout; the connection goes."""
    held = HeldAnswers()
    async with held.server as server, pool_to(server.url) as transport:
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, read=0.05)
        held.release.set()
        assert (await get(transport)).body == b"ok"
        assert server.connections == 2


async def test_close_mid_answer_is_remote_protocol_error() -> None:
    """A server that closes before the answer is complete raises RemoteProtocolError."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with (
        RawServer(answering(partial, then_close=True)) as server,
        pool_to(server.url) as transport,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="before the answer was complete"):
            await get(transport)


async def test_reset_mid_answer_is_read_error() -> None:
    """A connection reset before the answer is complete raises ReadError."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        reset_on_close(writer.get_extra_info("socket"))
        writer.transport.abort()

    async with RawServer(handle) as server, pool_to(server.url) as transport:
        with pytest.raises(httpx.ReadError):
            await get(transport)


async def test_garbage_answer_is_remote_protocol_error() -> None:
    """An answer that is not HTTP raises RemoteProtocolError."""
    async with (
        RawServer(answering(b"SMTP ready\r\n\r\n")) as server,
        pool_to(server.url) as transport,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="unparsable"):
            await get(transport)
        await server.until(lambda: server.closed == 1)


async def test_switching_protocols_is_remote_protocol_error_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 101 Switching Protocols answer raises RemoteProtocolError and closes the
    connection, without the event loop logging a fatal transport error."""
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nzz"
    async with RawServer(answering(upgrade)) as server, pool_to(server.url) as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="switched protocols"):
            await get(transport)
        await server.until(lambda: server.closed == 1)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"320\r\n"
        + b"x" * 800
        + b"\r\n"
        + b"320\r\n"
        + b"x" * 800
        + b"\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_oversized_answer_is_refused_and_connection_closed(answer: bytes) -> None:
    """A body over max_response_size raises RemoteProtocolError and closes the connection."""
    async with (
        RawServer(answering(answer)) as server,
        pool_to(server.url, max_response_size=1024) as transport,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="larger than 1024 bytes"):
            await get(transport)
        await server.until(lambda: server.closed == 1)


# The pool


async def test_pool_limit_holds_concurrent_exchanges_to_its_size() -> None:
    """With two connections, three concurrent exchanges share two connections."""
    held = HeldAnswers()
    async with held.server as server, pool_to(server.url, max_connections=2) as transport:
        calls = [asyncio.ensure_future(get(transport)) for _ in range(3)]
        await server.until(lambda: held.arrived == 2)
        held.release.set()
        responses = await asyncio.gather(*calls)
        assert [response.body for response in responses] == [b"ok"] * 3
        assert held.arrived == 3
        assert server.connections == 2


async def test_pool_wait_is_pool_timeout() -> None:
    """A caller that finds the pool busy for longer than its pool timeout gets PoolTimeout."""
    held = HeldAnswers()
    async with held.server as server, pool_to(server.url, max_connections=1) as transport:
        busy = asyncio.ensure_future(get(transport))
        await server.until(lambda: held.arrived == 1)
        with pytest.raises(httpx.PoolTimeout):
            await get(transport, pool=0.05)
        held.release.set()
        assert (await busy).body == b"ok"
        assert (await get(transport)).body == b"ok"
        assert server.connections == 1


async def test_cancelled_exchange_closes_its_connection_and_frees_the_slot() -> None:
    """A cancelled caller's connection is closed, and its slot serves the next caller."""
    held = HeldAnswers()
    async with held.server as server, pool_to(server.url, max_connections=1) as transport:
        call = asyncio.ensure_future(get(transport))
        await server.until(lambda: held.arrived == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        held.release.set()
        assert (await get(transport, pool=1.0)).body == b"ok"
        assert server.connections == 2
        await server.until(lambda: server.closed == 1)  # the first one, once it answered


async def test_cancelled_pool_waiter_leaks_nothing() -> None:
    """A caller cancelled while waiting for the pool leaves it as it was."""
    held = HeldAnswers()
    async with held.server as server, pool_to(server.url, max_connections=1) as transport:
        busy = asyncio.ensure_future(get(transport))
        await server.until(lambda: held.arrived == 1)
        waiting = asyncio.ensure_future(get(transport))
        await asyncio.sleep(0)  # its first step queues it for the connection
        assert len(transport._waiters) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.release.set()
        assert (await busy).body == b"ok"
        assert (await get(transport, pool=1.0)).body == b"ok"
        assert server.connections == 1
        assert not transport._waiters


async def test_aclose_closes_connections_and_fails_callers() -> None:
    """aclose() closes every connection, fails busy and waiting callers, and is idempotent."""
    held = HeldAnswers()
    async with held.server as server:
        transport = UpstreamTransport(server.url, max_connections=1)
        busy = asyncio.ensure_future(get(transport))
        await server.until(lambda: held.arrived == 1)
        waiting = asyncio.ensure_future(get(transport))
        await asyncio.sleep(0)  # its first step queues it for the connection
        assert len(transport._waiters) == 1
        await transport.aclose()
        with pytest.raises(httpx.ReadError, match="closed"):
            await busy
        with pytest.raises(httpx.ConnectError, match="closed"):
            await waiting
        held.release.set()  # the server answers, and finds the connection gone
        await server.until(lambda: server.closed == 1)
        await transport.aclose()
        with pytest.raises(httpx.ConnectError, match="closed"):
            await get(transport)


async def test_aclose_closes_idle_connections() -> None:
    """aclose() closes idle kept-alive connections."""
    async with RawServer(answering(OK)) as server:
        transport = UpstreamTransport(server.url, max_connections=2)
        await get(transport)
        await transport.aclose()
        await server.until(lambda: server.closed == 1)


# TLS


async def test_https_connects_with_tls_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """An https base URL connects with an SSL context, naming the host, on port 443."""
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    async def refuse(factory: Any, host: str, port: int, **kwargs: Any) -> Any:
        seen.update(kwargs, host=host, port=port)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(loop, "create_connection", refuse)
    async with pool_to("https://jobserver.test") as transport:
        with pytest.raises(httpx.ConnectError):
            await get(transport)
        assert transport.prebuilt("GET", "/", b"").startswith(
            b"GET / HTTP/1.1\r\nHost: jobserver.test\r\n"
        )
    assert isinstance(seen["ssl"], ssl.SSLContext)
    assert (seen["host"], seen["port"], seen["server_hostname"]) == (
        "jobserver.test",
        443,
        "jobserver.test",
    )


OPENSSL_SELF_SIGNED = (
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
    " -nodes -days 1 -subj /CN=127.0.0.1"
)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *OPENSSL_SELF_SIGNED.split(),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_round_trip(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request over TLS to a server with a trusted certificate is answered."""
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx.create_ssl_context() trusts it
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with (
        RawServer(answering(OK, OK), server_context) as server,
        pool_to(server.url) as transport,
    ):
        assert (await get(transport)).body == b"ok"
        assert (await get(transport)).body == b"ok"
        assert server.connections == 1


# The httpx path


async def test_async_client_round_trip() -> None:
    """An httpx.AsyncClient on the transport sends method, path, query, headers and body."""
    echo = EchoApp()
    async with (
        run_server(echo.app) as url,
        httpx.AsyncClient(
            transport=UpstreamTransport(url, max_connections=2), base_url=url
        ) as client,
    ):
        response = await client.post(
            "/echo", params={"x": "1"}, json={"a": 1}, headers={"x-trace": "t"}
        )
        chunked = await client.get("/chunked")
    assert response.status_code == 200
    assert response.request.url == f"{url}/echo?x=1"
    assert response.json() == {
        "method": "POST",
        "path": "/echo",
        "query": "x=1",
        "content_type": "application/json",
        "trace": "t",
        "body": '{"a":1}',
    }
    assert chunked.text == "one,two,three"
    assert len(set(echo.ports)) == 1


async def test_head_answer_ends_with_its_head() -> None:
    """A HEAD answer ends with its head, though it announces a body's length."""
    echo = EchoApp()
    async with (
        run_server(echo.app) as url,
        httpx.AsyncClient(transport=UpstreamTransport(url, max_connections=1)) as client,
    ):
        head = await client.head(f"{url}/echo")
        after = await client.get(f"{url}/echo")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""
    assert after.json()["method"] == "GET"


async def test_async_client_errors_carry_the_request() -> None:
    """Errors on the httpx path are httpx's, with the request attached."""
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(transport=UpstreamTransport(url, max_connections=1)) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.get(f"{url}/status/1")
    assert caught.value.request.url == f"{url}/status/1"


async def test_async_client_read_timeout_from_the_request() -> None:
    """The request's read timeout bounds the wait for its answer."""
    held = HeldAnswers()
    async with (
        held.server as server,
        httpx.AsyncClient(transport=UpstreamTransport(server.url, max_connections=1)) as client,
    ):
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(f"{server.url}/slow", timeout=httpx.Timeout(5.0, read=0.05))
        held.release.set()
    assert caught.value.request.url.path == "/slow"


async def test_another_origin_is_refused() -> None:
    """A request for another origin than the transport's is refused, never sent."""
    async with httpx.AsyncClient(
        transport=UpstreamTransport("http://jobserver.test", max_connections=1)
    ) as client:
        for url in (
            "http://elsewhere.test/start",
            "https://jobserver.test/start",
            "http://jobserver.test:81/",
        ):
            with pytest.raises(httpx.UnsupportedProtocol, match="reaches only"):
                await client.get(url)


async def test_respx_intercepts_requests_through_the_transport() -> None:
    """respx.mock(using="httpx") answers for a client built on the transport."""
    transport = UpstreamTransport("http://jobserver.test", max_connections=1)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        respx.mock(using="httpx", base_url="http://jobserver.test") as mock,
    ):
        route = mock.post("/start").respond(200, json={"state": "running", "id": "abc"})
        response = await client.post("http://jobserver.test/start", json={"account": "a"})
    assert response.json() == {"state": "running", "id": "abc"}
    assert route.call_count == 1
    assert not transport._connections


# uvloop, the loop of production


UVLOOP_SCENARIOS: list[Callable[[], Awaitable[None]]] = [
    test_post_round_trip_with_prebuilt_bytes,
    test_sequential_requests_reuse_one_connection,
    test_chunked_answer_is_assembled,
    test_reset_noticed_only_when_writing_is_retried,
    test_slow_answer_is_read_timeout_and_connection_dropped,
    test_close_mid_answer_is_remote_protocol_error,
    test_reset_mid_answer_is_read_error,
    test_pool_limit_holds_concurrent_exchanges_to_its_size,
    test_cancelled_exchange_closes_its_connection_and_frees_the_slot,
    test_aclose_closes_connections_and_fails_callers,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """The scenario behaves the same on uvloop."""

    async def run() -> None:
        await scenario()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
