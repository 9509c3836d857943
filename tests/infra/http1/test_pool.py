"""The keep-alive pool (``infra/http1/pool.py``): reuse, stale and expired connections,
the bound and the line, cancellation, closing, several origins, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.http1 import Answer, ConnectionPool, Origin, request
from tests.conftest import closed_port, loopback_socket, run_server
from tests.infra.http1.servers import (
    OK,
    EchoApp,
    HeldAnswers,
    RawServer,
    answering,
    reset_on_close,
    self_signed_certificate,
    tls_server_context,
)

TIMEOUTS: dict[str, float | None] = {"connect": 5.0, "read": 5.0, "pool": 5.0}


@contextlib.asynccontextmanager
async def pool_of(max_connections: int = 10, **options: Any) -> AsyncIterator[ConnectionPool]:
    async with ConnectionPool(max_connections, **options) as pool:
        yield pool


async def get(
    connections: ConnectionPool, url: str, path: str = "/", **timeouts: float | None
) -> Answer:
    """GET ``path`` of ``url``'s origin through ``connections``; ``timeouts`` as exchange's."""
    origin = Origin.of(url)
    wire = request("GET", path, origin.authority)
    return await connections.exchange(origin, wire, **(TIMEOUTS | timeouts))


# Reuse


async def test_sequential_requests_reuse_one_connection() -> None:
    """Sequential requests travel on one kept-alive connection."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_of() as pool:
        for _ in range(5):
            assert (await get(pool, url, "/echo")).status == 200
    assert len(echo.ports) == 5
    assert len(set(echo.ports)) == 1


async def test_an_answer_that_ends_the_connections_use_is_honoured() -> None:
    """After Connection: close the next request goes on a new connection."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_of() as pool:
        assert (await get(pool, url, "/close")).body == b"bye"
        assert (await get(pool, url, "/close")).body == b"bye"
    assert len(set(echo.ports)) == 2


async def test_expired_idle_connection_is_not_reused() -> None:
    """A connection idle for idle_expiry is never taken again, whenever its timer runs."""
    echo = EchoApp()
    async with run_server(echo.app) as url, pool_of(idle_expiry=0.0) as pool:
        await get(pool, url, "/echo")
        await get(pool, url, "/echo")
    assert len(set(echo.ports)) == 2


async def test_idle_connections_are_closed_by_their_timer() -> None:
    """A connection left idle for idle_expiry is closed, with no request to notice it."""
    async with RawServer(answering(OK)) as server, pool_of(idle_expiry=0.05) as pool:
        await get(pool, server.url)
        await server.until(lambda: server.closed == 1)
        assert pool.connections == 0


# Stale connections: replaced, never reported


async def test_idle_connection_closed_by_server_is_replaced() -> None:
    """A kept-alive connection the server closed while idle is replaced, not reported."""
    async with (
        RawServer(answering(OK, then_close=True)) as server,
        pool_of() as pool,
    ):
        await get(pool, server.url)
        await server.until(lambda: server.closed == 1)
        server.handle = answering(OK)
        assert (await get(pool, server.url)).body == b"ok"
        assert server.connections == 2


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_an_end_not_yet_handled_is_found_before_writing(ending: str) -> None:
    """A pooled connection whose close or reset reached its socket, but not yet the
    event loop, is not written to: the request goes out on a new connection."""
    loop = asyncio.get_running_loop()

    async def answer_one(listener: socket.socket) -> socket.socket:
        sock, _ = await loop.sock_accept(listener)
        received = b""
        while not received.endswith(b"\r\n\r\n"):
            received += await loop.sock_recv(sock, 65536)
        await loop.sock_sendall(sock, OK)
        return sock

    with loopback_socket() as listener:
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        async with pool_of() as pool:
            first = asyncio.ensure_future(answer_one(listener))
            await get(pool, url)
            server_side = await first
            if ending == "reset":
                reset_on_close(server_side)
                server_side.close()
            else:
                server_side.shutdown(socket.SHUT_WR)
            client_transport = next(iter(pool._alive)).transport
            assert client_transport is not None
            client_socket = client_transport.get_extra_info("socket")
            # Block, without letting the loop run, until the end reached the client's
            # socket: the pool can find it only by looking there.
            readable, _, _ = select.select([client_socket.fileno()], [], [], 5)
            assert readable
            second = asyncio.ensure_future(answer_one(listener))
            assert (await get(pool, url)).body == b"ok"
            (await second).close()
            server_side.close()


# Errors give their place back


async def test_refused_connection_is_connect_error_and_gives_its_place_back() -> None:
    """A refused connection raises ConnectError, and its place serves the next call."""
    with closed_port() as port:
        async with pool_of(1) as pool:
            for _ in range(2):
                with pytest.raises(httpx.ConnectError):
                    await get(pool, f"http://127.0.0.1:{port}", pool=0.5)


async def test_slow_connect_is_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection not made within the connect timeout raises ConnectTimeout, place freed."""
    loop = asyncio.get_running_loop()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await loop.create_future()

    monkeypatch.setattr(loop, "create_connection", never)
    async with pool_of(1) as pool:
        for _ in range(2):
            with pytest.raises(httpx.ConnectTimeout):
                await get(pool, "http://127.0.0.1:1", connect=0.05, pool=0.5)


async def test_slow_answer_is_read_timeout_and_connection_dropped() -> None:
    """No complete answer within the read timeout raises ReadTimeout; the connection goes."""
    held = HeldAnswers()
    async with held.server as server, pool_of() as pool:
        with pytest.raises(httpx.ReadTimeout):
            await get(pool, server.url, read=0.05)
        held.release.set()
        assert (await get(pool, server.url)).body == b"ok"
        assert server.connections == 2


# The bound and the line


async def test_pool_limit_holds_concurrent_exchanges_to_its_size() -> None:
    """With two connections, three concurrent exchanges share two connections."""
    held = HeldAnswers()
    async with held.server as server, pool_of(2) as pool:
        calls = [asyncio.ensure_future(get(pool, server.url)) for _ in range(3)]
        await server.until(lambda: held.arrived == 2)
        assert pool.waiting == 1
        held.release.set()
        answers = await asyncio.gather(*calls)
        assert [answer.body for answer in answers] == [b"ok"] * 3
        assert held.arrived == 3
        assert server.connections == 2


async def test_pool_wait_is_pool_timeout() -> None:
    """A caller that finds the pool busy for longer than its pool timeout gets PoolTimeout."""
    held = HeldAnswers()
    async with held.server as server, pool_of(1) as pool:
        busy = asyncio.ensure_future(get(pool, server.url))
        await server.until(lambda: held.arrived == 1)
        with pytest.raises(httpx.PoolTimeout):
            await get(pool, server.url, pool=0.05)
        held.release.set()
        assert (await busy).body == b"ok"
        assert (await get(pool, server.url)).body == b"ok"
        assert server.connections == 1


async def test_cancelled_exchange_closes_its_connection_and_frees_the_place() -> None:
    """A cancelled caller's connection is closed, and its place serves the next caller."""
    held = HeldAnswers()
    async with held.server as server, pool_of(1) as pool:
        call = asyncio.ensure_future(get(pool, server.url))
        await server.until(lambda: held.arrived == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        held.release.set()
        assert (await get(pool, server.url, pool=1.0)).body == b"ok"
        assert server.connections == 2
        await server.until(lambda: server.closed == 1)  # the first one, once it answered


async def test_cancelled_caller_in_line_leaks_nothing() -> None:
    """A caller cancelled while waiting in line leaves the pool as it was."""
    held = HeldAnswers()
    async with held.server as server, pool_of(1) as pool:
        busy = asyncio.ensure_future(get(pool, server.url))
        await server.until(lambda: held.arrived == 1)
        waiting = asyncio.ensure_future(get(pool, server.url))
        await asyncio.sleep(0)  # its first step puts it in line
        assert pool.waiting == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.release.set()
        assert (await busy).body == b"ok"
        assert (await get(pool, server.url, pool=1.0)).body == b"ok"
        assert server.connections == 1
        assert pool.waiting == 0


# Several origins under one bound


async def test_at_the_bound_another_origin_takes_the_oldest_idle_connections_place() -> None:
    """At the bound, a request to another origin closes the idle connection unused the
    longest and opens its own in its place."""
    async with (
        RawServer(answering(OK, OK)) as first,
        RawServer(answering(OK)) as second,
        pool_of(1) as pool,
    ):
        await get(pool, first.url)
        assert (await get(pool, second.url, pool=0.5)).body == b"ok"
        await first.until(lambda: first.closed == 1)
        assert (await get(pool, first.url, pool=0.5)).body == b"ok"
        assert (first.connections, second.connections) == (2, 1)


async def test_a_released_connection_makes_way_for_the_first_in_line() -> None:
    """A connection given back while a caller for another origin is first in line is
    closed, and that caller opens its own in its place."""
    held = HeldAnswers()
    async with (
        held.server as first,
        RawServer(answering(OK)) as second,
        pool_of(1) as pool,
    ):
        busy = asyncio.ensure_future(get(pool, first.url))
        await first.until(lambda: held.arrived == 1)
        elsewhere = asyncio.ensure_future(get(pool, second.url))
        await asyncio.sleep(0)
        assert pool.waiting == 1
        held.release.set()
        assert (await busy).body == b"ok"
        assert (await elsewhere).body == b"ok"
        await first.until(lambda: first.closed == 1)


# Closing


async def test_aclose_closes_connections_and_fails_callers() -> None:
    """aclose() closes every connection, fails busy and waiting callers, and is idempotent."""
    held = HeldAnswers()
    async with held.server as server:
        pool = ConnectionPool(1)
        busy = asyncio.ensure_future(get(pool, server.url))
        await server.until(lambda: held.arrived == 1)
        waiting = asyncio.ensure_future(get(pool, server.url))
        await asyncio.sleep(0)  # its first step puts it in line
        assert pool.waiting == 1
        await pool.aclose()
        with pytest.raises(httpx.ReadError, match="closed"):
            await busy
        with pytest.raises(httpx.ConnectError, match="closed"):
            await waiting
        held.release.set()  # the server answers, and finds the connection gone
        await server.until(lambda: server.closed == 1)
        await pool.aclose()
        with pytest.raises(httpx.ConnectError, match="closed"):
            await get(pool, server.url)
        assert pool.connections == 0


async def test_aclose_closes_idle_connections() -> None:
    """aclose() closes idle kept-alive connections."""
    async with RawServer(answering(OK)) as server:
        pool = ConnectionPool(2)
        await get(pool, server.url)
        await pool.aclose()
        await server.until(lambda: server.closed == 1)


# TLS


async def test_https_connects_with_tls_naming_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """An https origin is reached over TLS (a default context unless given one), naming
    the host, on port 443 by default."""
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    async def refuse(factory: Any, host: str, port: int, **kwargs: Any) -> Any:
        seen.update(kwargs, host=host, port=port)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(loop, "create_connection", refuse)
    async with pool_of() as pool:
        with pytest.raises(httpx.ConnectError):
            await get(pool, "https://jobserver.test/")
    assert isinstance(seen["ssl"], ssl.SSLContext)
    assert (seen["host"], seen["port"], seen["server_hostname"]) == (
        "jobserver.test",
        443,
        "jobserver.test",
    )


async def test_https_round_trip_on_one_connection(tmp_path: Path) -> None:
    """Requests over TLS to a server with a trusted certificate share one connection."""
    cert, key = self_signed_certificate(tmp_path)
    client_context = ssl.create_default_context(cafile=cert)
    async with (
        RawServer(answering(OK, OK), tls_server_context(cert, key)) as server,
        pool_of(ssl_context=client_context) as pool,
    ):
        assert (await get(pool, server.url)).body == b"ok"
        assert (await get(pool, server.url)).body == b"ok"
        assert server.connections == 1


def test_a_pool_needs_a_connection() -> None:
    """max_connections below 1 is a ValueError."""
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionPool(0)
