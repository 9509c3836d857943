"""Routing, the held-request flow and error mapping, in process against a fake job server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from tests.proxy.conftest import FakeJobServer, ProxyFactory, ProxyUnderTest


async def test_held_request_answers_with_the_callback_job(proxy: ProxyUnderTest) -> None:
    """A wait:true request is answered with the job JSON the callback delivers, unchanged."""
    request, job_id = await proxy.held_job()
    job = proxy.upstream.finish(job_id)
    delivered = await proxy.upstream.callback(job_id)
    response = await request
    assert delivered.status_code == 200
    assert response.status_code == 200
    assert response.json() == job


async def test_upstream_gets_wait_false_and_a_callback_url(proxy: ProxyUnderTest) -> None:
    """The job server is asked with wait:false and a callback URL on the proxy's public URL."""
    request, job_id = await proxy.held_job("team-a")
    (start,) = proxy.upstream.starts
    assert start["account"] == "team-a"
    assert start["wait"] is False
    assert start["callback"].startswith("http://proxy.test/callback/")
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    await request


async def test_start_is_an_alias_of_proxy(proxy: ProxyUnderTest) -> None:
    """POST /start behaves exactly like POST /proxy."""
    request = asyncio.ensure_future(
        proxy.client.post("/start", json={"account": "acme", "wait": True})
    )
    job_id = await proxy.upstream.next_job()
    job = proxy.upstream.finish(job_id)
    await proxy.upstream.callback(job_id)
    assert (await request).json() == job


async def test_failed_job_is_a_200_with_state_failed(proxy: ProxyUnderTest) -> None:
    """A failed job is passed through as a 200 whose state is failed, error included."""
    request, job_id = await proxy.held_job()
    job = proxy.upstream.finish(job_id, state="failed")
    await proxy.upstream.callback(job_id)
    response = await request
    assert response.status_code == 200
    assert response.json() == job
    assert response.json()["error"] == "it broke"


async def test_callback_before_start_answer_resolves(proxy_factory: ProxyFactory) -> None:
    """A callback that arrives before the start response still resolves the waiter."""
    upstream = FakeJobServer()

    async def call_back_first(body: dict[str, Any]) -> Response:
        job = {"id": "1234567890abc", "state": "completed", "startedAt": "x", "proof": "B" * 40}
        assert upstream.to_proxy is not None
        delivered = await upstream.to_proxy.post(body["callback"], json=job)
        assert delivered.status_code == 200
        return JSONResponse({"state": "running", "id": "1234567890abc"})

    upstream.on_start = call_back_first
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 200
    assert response.json()["id"] == "1234567890abc"
    assert response.json()["proof"] == "B" * 40


async def test_duplicate_callback_is_harmless(proxy: ProxyUnderTest) -> None:
    """A second callback for an answered job gets 404 and changes nothing."""
    request, job_id = await proxy.held_job()
    job = proxy.upstream.finish(job_id)
    first = await proxy.upstream.callback(job_id)
    response = await request
    second = await proxy.upstream.callback(job_id)
    assert first.status_code == 200
    assert second.status_code == 404
    assert second.json()["error"] == "unknown_callback"
    assert response.json() == job


async def test_unknown_callback_token_is_404(proxy: ProxyUnderTest) -> None:
    """A callback on a token the proxy never issued is a 404 JSON error."""
    response = await proxy.client.post(
        "/callback/nobody.nothing", json={"id": "abc", "state": "completed"}
    )
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_callback"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (b"{}", "account"),
        (b'{"account": ""}', "account"),
        (b'{"account": 7}', "account"),
        (b'{"account": "' + b"x" * 257 + b'"}', "account"),
        (b'{"account": "a", "wait": "yes"}', "wait"),
        (b'{"account": "a", "callback": "not a url"}', "callback"),
        (b'{"account": "a", "callback": "ftp://host/x"}', "callback"),
    ],
)
async def test_bad_body_is_400_naming_the_problem(
    proxy: ProxyUnderTest, body: bytes, message: str
) -> None:
    """Each kind of bad body is a 400 JSON error whose detail names the field."""
    response = await proxy.client.post(
        "/proxy", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert message in response.json()["detail"]
    assert proxy.upstream.starts == []


async def test_body_over_the_limit_is_413(proxy_factory: ProxyFactory) -> None:
    """A body larger than max_body_size is refused with 413 before it is parsed."""
    async with proxy_factory(max_body_size=100) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a" * 200})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


async def test_deadline_gives_504(proxy_factory: ProxyFactory) -> None:
    """A job whose result never comes is answered 504 at the deadline."""
    async with proxy_factory(job_deadline=0.3, poll_initial=5.0) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
        assert response.status_code == 504
        assert response.json()["error"] == "job_timeout"
        assert len(proxy.app.state.services.waiters) == 0


async def test_wait_false_is_forwarded_as_is(proxy: ProxyUnderTest) -> None:
    """wait:false goes upstream with the client's own callback and its answer comes back."""
    response = await proxy.client.post(
        "/proxy", json={"account": "a", "wait": False, "callback": "http://client.test/cb"}
    )
    assert response.status_code == 200
    assert response.json()["state"] == "running"
    assert proxy.upstream.starts == [
        {"account": "a", "wait": False, "callback": "http://client.test/cb"}
    ]


async def test_upstream_garbage_is_502(proxy_factory: ProxyFactory) -> None:
    """An upstream answer that is not JSON becomes a 502 JSON error."""
    upstream = FakeJobServer()

    async def garbage(body: dict[str, Any]) -> Response:
        return Response(b"<html>oops</html>", 200)

    upstream.on_start = garbage
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_bad_response"


async def test_upstream_answer_without_id_is_502(proxy_factory: ProxyFactory) -> None:
    """A start answer that is JSON but carries no job id becomes a 502."""
    upstream = FakeJobServer()

    async def no_id(body: dict[str, Any]) -> Response:
        return JSONResponse({"state": "running"})

    upstream.on_start = no_id
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 502
    assert len(proxy.app.state.services.waiters) == 0


async def test_upstream_400_is_passed_on(proxy_factory: ProxyFactory) -> None:
    """A 4xx from the job server reaches the client with its status and answer."""
    upstream = FakeJobServer()

    async def refuse(body: dict[str, Any]) -> Response:
        return JSONResponse({"error": "bad_request", "detail": "account: banned"}, 400)

    upstream.on_start = refuse
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 400
    assert response.json()["error"] == "upstream_rejected"
    assert response.json()["detail"] == {"error": "bad_request", "detail": "account: banned"}


async def test_at_capacity_is_503_with_retry_after(proxy_factory: ProxyFactory) -> None:
    """Beyond max_pending held requests the proxy answers 503 with Retry-After."""
    async with proxy_factory(max_pending=1) as proxy:
        request, job_id = await proxy.held_job()
        response = await proxy.client.post("/proxy", json={"account": "b", "wait": True})
        assert response.status_code == 503
        assert response.json()["error"] == "at_capacity"
        assert response.headers["retry-after"].isdigit()
        await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
        assert (await request).status_code == 200


async def test_callback_with_wrong_job_id_is_400(proxy: ProxyUnderTest) -> None:
    """A callback whose job id differs from the job started under that token is refused."""
    request, job_id = await proxy.held_job()
    wrong = await proxy.upstream.callback(job_id, {"id": "ffff", "state": "completed"})
    assert wrong.status_code == 400
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    assert (await request).status_code == 200


async def test_unknown_route_is_json_404(proxy: ProxyUnderTest) -> None:
    """Routes that do not exist answer with the JSON error shape."""
    response = await proxy.client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_health_and_metrics(proxy: ProxyUnderTest) -> None:
    """healthz is ok, readyz sees the upstream, metrics expose the pending gauge."""
    assert (await proxy.client.get("/healthz")).json() == {"status": "ok"}
    ready = await proxy.client.get("/readyz")
    assert ready.status_code == 200
    metrics = await proxy.client.get("/metrics")
    assert "jobproxy_pending_jobs 0.0" in metrics.text


async def test_readyz_is_503_when_upstream_is_down(proxy_factory: ProxyFactory) -> None:
    """readyz answers 503 JSON when the job server cannot be reached."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with proxy_factory() as proxy:
        proxy.app.state.services.upstream._client._transport = httpx.MockTransport(refuse)
        response = await proxy.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "not_ready"
