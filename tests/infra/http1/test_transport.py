"""The pool under httpx (``infra/http1/transport.py``): requests as httpx builds them,
answers as httpx reads them, errors with their request, origins, respx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from infra.http1 import ConnectionPool, Http1Transport, Origin
from tests.conftest import closed_port, run_server
from tests.infra.http1.servers import OK, EchoApp, HeldAnswers, RawServer, answering


def client_on(max_connections: int = 2, only: Origin | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http1Transport(ConnectionPool(max_connections), only=only))


async def test_async_client_round_trip() -> None:
    """An httpx.AsyncClient on the transport sends method, path, query, headers and body,
    and reads a chunked answer, on one connection."""
    echo = EchoApp()
    async with run_server(echo.app) as url, client_on() as client:
        response = await client.post(
            f"{url}/echo", params={"x": "1"}, json={"a": 1}, headers={"x-trace": "t"}
        )
        chunked = await client.get(f"{url}/chunked")
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


async def test_a_streamed_body_goes_whole_with_its_length() -> None:
    """A body httpx would send chunked is read whole and sent with a Content-Length."""
    echo = EchoApp()

    async def parts() -> AsyncIterator[bytes]:
        yield b"a,"
        yield b"b"

    async with run_server(echo.app) as url, client_on() as client:
        response = await client.post(f"{url}/echo", content=parts())
    assert response.json()["body"] == "a,b"


async def test_head_answer_ends_with_its_head() -> None:
    """A HEAD answer ends with its head, though it announces a body's length."""
    echo = EchoApp()
    async with run_server(echo.app) as url, client_on(1) as client:
        head = await client.head(f"{url}/echo")
        after = await client.get(f"{url}/echo")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""
    assert after.json()["method"] == "GET"


async def test_any_origin_without_only() -> None:
    """Without ``only`` the transport reaches every http origin, each on its connections."""
    async with (
        RawServer(answering(OK)) as first,
        RawServer(answering(OK)) as second,
        client_on() as client,
    ):
        assert (await client.get(first.url)).text == "ok"
        assert (await client.get(second.url)).text == "ok"


async def test_another_origin_than_only_is_refused() -> None:
    """A request for another origin than ``only`` is refused, never sent."""
    async with client_on(1, only=Origin("http", "jobserver.test", 80)) as client:
        for url in (
            "http://elsewhere.test/start",
            "https://jobserver.test/start",
            "http://jobserver.test:81/",
        ):
            with pytest.raises(httpx.UnsupportedProtocol, match="reaches only"):
                await client.get(url)


async def test_errors_carry_the_request() -> None:
    """Errors are httpx's, with the request attached."""
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}"
        async with client_on(1) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.get(f"{url}/status/1")
    assert caught.value.request.url == f"{url}/status/1"


async def test_read_timeout_from_the_request() -> None:
    """The request's read timeout bounds the wait for its answer."""
    held = HeldAnswers()
    async with held.server as server, client_on(1) as client:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(f"{server.url}/slow", timeout=httpx.Timeout(5.0, read=0.05))
        held.release.set()
    assert caught.value.request.url.path == "/slow"


async def test_a_header_that_would_break_the_request_is_refused() -> None:
    """A header httpx lets through that would break the request's framing is refused
    as LocalProtocolError, never sent."""
    transport = Http1Transport(ConnectionPool(1))
    for header, error in [((b"x-b\r\nx-c", b"2"), "header name"), ((b"x", b"1\n2"), "value")]:
        request = httpx.Request("GET", "http://jobserver.test/", headers=[header])
        with pytest.raises(httpx.LocalProtocolError, match=error):
            await transport.handle_async_request(request)
    await transport.aclose()


async def test_respx_intercepts_requests_through_the_transport() -> None:
    """respx.mock(using="httpx") answers for a client built on the transport."""
    pool = ConnectionPool(1)
    async with (
        httpx.AsyncClient(transport=Http1Transport(pool)) as client,
        respx.mock(using="httpx", base_url="http://jobserver.test") as mock,
    ):
        route = mock.post("/start").respond(200, json={"state": "running", "id": "abc"})
        response = await client.post("http://jobserver.test/start", json={"account": "a"})
    assert response.json() == {"state": "running", "id": "abc"}
    assert route.call_count == 1
    assert pool.connections == 0


async def test_closing_the_client_closes_the_pool() -> None:
    """Closing the client closes the transport's pool and its connections."""
    async with RawServer(answering(OK)) as server:
        pool = ConnectionPool(1)
        async with httpx.AsyncClient(transport=Http1Transport(pool)) as client:
            await client.get(server.url)
        await server.until(lambda: server.closed == 1)
        with pytest.raises(httpx.ConnectError, match="closed"):
            await Http1Transport(pool).handle_async_request(httpx.Request("GET", server.url))
