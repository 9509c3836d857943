"""The proxy's transport to the job server (``proxy/upstream/transport.py``): its one origin,
prebuilt requests below the base URL, and the fast path sharing the client's pool.

The client underneath (pool, stale connections, errors) is tested in tests/infra/http1.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx

from proxy.upstream.transport import UpstreamTransport
from tests.conftest import run_server
from tests.infra.http1.servers import (
    OK,
    EchoApp,
    RawServer,
    answering,
    self_signed_certificate,
    tls_server_context,
)

TIMEOUTS: dict[str, float | None] = {"connect": 5.0, "read": 5.0, "pool": 5.0}


def test_prebuilt_request_bytes() -> None:
    """A prebuilt request carries Host, Content-Type, its headers and Content-Length,
    below the base URL's path."""
    transport = UpstreamTransport("http://jobserver.test:8001/api/", max_connections=1)
    request = transport.prebuilt("POST", "/start", b'{"a":1}', headers=((b"X-Trace", b"t"),))
    assert request == (
        b"POST /api/start HTTP/1.1\r\nHost: jobserver.test:8001\r\n"
        b"Content-Type: application/json\r\nX-Trace: t\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}'
    )
    bare = transport.prebuilt("GET", "/status/1?x=1", b"", content_type=b"")
    assert bare == (
        b"GET /api/status/1?x=1 HTTP/1.1\r\nHost: jobserver.test:8001\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("start", ()),
        ("/a b\r\nX: y", ()),
        ("/start", ((b"X-A", b"1\r\nX-B: 2"),)),
    ],
    ids=["relative", "line-break", "header-injection"],
)
def test_a_request_that_would_break_framing_is_refused(
    path: str, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    """A path that is not one, or a header with a line break, is a ValueError."""
    transport = UpstreamTransport("http://jobserver.test", max_connections=1)
    with pytest.raises(ValueError, match="not a"):
        transport.prebuilt("POST", path, b"", headers=headers)


@pytest.mark.parametrize(
    "base_url", ["ftp://jobserver.test", "http://jobserver.test/?x=1", "jobserver.test"]
)
def test_a_base_url_is_an_http_url_without_query(base_url: str) -> None:
    """The base URL is http(s), with a host, and takes no query or fragment."""
    with pytest.raises(ValueError, match="base URL"):
        UpstreamTransport(base_url, max_connections=1)


async def test_prebuilt_round_trip_shares_the_clients_connection() -> None:
    """A prebuilt POST reaches the app below the base path, its answer comes back whole,
    and the httpx client on the same transport reuses its connection."""
    echo = EchoApp()
    async with run_server(echo.app) as url:
        transport = UpstreamTransport(f"{url}/api", max_connections=4)
        async with httpx.AsyncClient(transport=transport) as client:
            request = transport.prebuilt("POST", "/echo", b'{"account":"a"}')
            answer = await transport.exchange(request, **TIMEOUTS)
            response = await client.post(f"{url}/api/echo", content=b"again")
    assert answer.status == 200
    assert answer.header(b"content-type") == b"application/json"
    assert json.loads(answer.body)["path"] == "/api/echo"
    assert json.loads(answer.body)["body"] == '{"account":"a"}'
    assert response.json()["body"] == "again"
    assert len(set(echo.ports)) == 1


async def test_another_origin_is_refused() -> None:
    """A request for another origin than the job server's is refused, never sent."""
    transport = UpstreamTransport("http://jobserver.test", max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        for url in ("http://elsewhere.test/start", "https://jobserver.test/start"):
            with pytest.raises(httpx.UnsupportedProtocol, match="reaches only"):
                await client.get(url)


async def test_https_trusts_what_httpx_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https job server is reached with httpx's TLS context: a certificate trusted
    through SSL_CERT_FILE is accepted."""
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx.create_ssl_context() trusts it
    async with RawServer(answering(OK, OK), tls_server_context(cert, key)) as server:
        async with UpstreamTransport(server.url, max_connections=2) as transport:
            for _ in range(2):
                answer = await transport.exchange(
                    transport.prebuilt("GET", "/", b"", content_type=b""), **TIMEOUTS
                )
                assert answer.body == b"ok"
        assert server.connections == 1


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
    assert transport.pool.connections == 0
