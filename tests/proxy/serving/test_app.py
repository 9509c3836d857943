"""Routing, the held-request flow and error mapping, in process against a fake job server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from proxy.config import Settings
from proxy.serving.app import create_app
from proxy.waiting.waiters import MAX_EARLY_RESULTS
from tests.conftest import app_lifespan, closed_port, eventually, run_server
from tests.proxy.conftest import (
    PROXY_URL,
    FakeJobServer,
    ProxyFactory,
    ProxyUnderTest,
    post_and_leave,
    sample,
)


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


def _calling_back_first(upstream: FakeJobServer, *jobs: dict[str, Any]) -> list[httpx.Response]:
    """Make the fake deliver ``jobs`` to the callback URL, awaiting each answer, before
    it answers /start (job id ``EARLY_ID``), as job servers that finish quick jobs inline
    do; returns the answers its callbacks got."""
    answers: list[httpx.Response] = []

    async def call_back_first(body: dict[str, Any]) -> Response:
        assert upstream.to_proxy is not None
        for job in jobs:
            # A callback whose answer waited for /start would wait forever: bounded here.
            async with asyncio.timeout(5):
                answers.append(await upstream.to_proxy.post(body["callback"], json=job))
        return JSONResponse({"state": "running", "id": EARLY_ID})

    upstream.on_start = call_back_first
    return answers


def _bound(proxy: ProxyUnderTest) -> bool:
    """Whether the held request's job was named by the answer to its /start."""
    return any(waiter.job_id is not None for waiter in proxy.services.waiters)


EARLY_ID = "1234567890abc"
EARLY_JOB = {"id": EARLY_ID, "state": "completed", "startedAt": "x", "proof": "B" * 40}


async def test_callback_before_start_answer_is_answered_at_once_and_resolves(
    proxy_factory: ProxyFactory,
) -> None:
    """A callback that arrives before the start response is answered 200 at once (the job
    server may await it before answering /start) and answers the client."""
    upstream = FakeJobServer()
    answers = _calling_back_first(upstream, EARLY_JOB)
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
        metrics = (await proxy.client.get("/metrics")).text
    assert response.status_code == 200
    assert response.json() == EARLY_JOB
    assert [(answer.status_code, answer.json()) for answer in answers] == [
        (200, {"status": "early"})
    ]
    assert sample(metrics, 'jobproxy_callbacks_total{outcome="early"}') == 1


async def test_early_callback_of_another_job_is_dropped_and_counted(
    proxy_factory: ProxyFactory,
) -> None:
    """A callback that comes before /start answered, carrying another job's id, is
    answered at once, then dropped and counted: the client gets its own job."""
    upstream = FakeJobServer()
    other = {**EARLY_JOB, "id": "fedcba9876543", "proof": "C" * 40}
    answers = _calling_back_first(upstream, other, EARLY_JOB)
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
        metrics = (await proxy.client.get("/metrics")).text
    assert response.json() == EARLY_JOB
    assert [answer.status_code for answer in answers] == [200, 200]
    assert sample(metrics, 'jobproxy_callbacks_total{outcome="early_mismatch"}') == 1


async def test_early_callback_alone_of_another_job_leaves_the_client_waiting(
    proxy_factory: ProxyFactory,
) -> None:
    """An early callback with the wrong id never answers the client: its own job does."""
    upstream = FakeJobServer()
    other = {**EARLY_JOB, "id": "fedcba9876543"}
    answers = _calling_back_first(upstream, other)
    async with proxy_factory(upstream) as proxy:
        request = asyncio.ensure_future(
            proxy.client.post("/proxy", json={"account": "a", "wait": True})
        )
        await eventually(lambda: bool(proxy.services.waiters) and _bound(proxy))
        assert not request.done()
        upstream.jobs[EARLY_ID] = EARLY_JOB
        assert upstream.to_proxy is not None
        token_url = upstream.starts[0]["callback"]
        delivered = await upstream.to_proxy.post(token_url, json=EARLY_JOB)
        response = await request
    assert answers[0].status_code == 200
    assert delivered.status_code == 200
    assert response.json() == EARLY_JOB


async def test_early_callbacks_beyond_the_few_kept_are_asked_to_come_back(
    proxy_factory: ProxyFactory,
) -> None:
    """A job server that floods one token with results before answering /start gets 503
    for those beyond the few kept, still at once; the client gets its own job."""
    upstream = FakeJobServer()
    others = [{**EARLY_JOB, "id": f"fedcba987654{n}"} for n in range(MAX_EARLY_RESULTS)]
    answers = _calling_back_first(upstream, *others, EARLY_JOB)
    async with proxy_factory(upstream) as proxy:
        request = asyncio.ensure_future(
            proxy.client.post("/proxy", json={"account": "a", "wait": True})
        )
        await eventually(lambda: _bound(proxy))
        assert upstream.to_proxy is not None
        again = await upstream.to_proxy.post(upstream.starts[0]["callback"], json=EARLY_JOB)
        response = await request
    assert [answer.status_code for answer in answers] == [200] * MAX_EARLY_RESULTS + [503]
    assert again.status_code == 200
    assert response.json() == EARLY_JOB


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
        assert len(proxy.services.waiters) == 0


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


async def test_upstream_down_is_502_within_the_retry_budget() -> None:
    """With nothing listening upstream, a held request gets 502 JSON within 6 s."""
    with closed_port() as port:
        settings = Settings(upstream_url=f"http://127.0.0.1:{port}", public_url=PROXY_URL)
        async with (
            app_lifespan(create_app(settings)) as (app, _),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=PROXY_URL) as client,
        ):
            began = time.monotonic()
            response = await client.post("/proxy", json={"account": "a", "wait": True})
            took = time.monotonic() - began
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert took < 6


async def test_upstream_answer_without_id_is_502(proxy_factory: ProxyFactory) -> None:
    """A start answer that is JSON but carries no job id becomes a 502."""
    upstream = FakeJobServer()

    async def no_id(body: dict[str, Any]) -> Response:
        return JSONResponse({"state": "running"})

    upstream.on_start = no_id
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 502
    assert len(proxy.services.waiters) == 0


@pytest.mark.parametrize("wait", [True, False])
@pytest.mark.parametrize("answer", [{"state": "completed", "proof": "A" * 40}, {"id": 7}])
async def test_start_answer_without_a_valid_id_is_502_whatever_its_state(
    proxy_factory: ProxyFactory, wait: bool, answer: dict[str, Any]
) -> None:
    """A /start answer with no usable job id is a 502, even one claiming a final state."""
    upstream = FakeJobServer()

    async def no_id(body: dict[str, Any]) -> Response:
        return JSONResponse(answer)

    upstream.on_start = no_id
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": wait})
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_bad_response"


async def test_upstream_400_is_passed_on(proxy_factory: ProxyFactory) -> None:
    """A 4xx from the job server reaches the client with its status and answer."""
    upstream = FakeJobServer()

    async def refuse(body: dict[str, Any]) -> Response:
        return JSONResponse({"error": "bad_request", "detail": "account: banned"}, 400)

    upstream.on_start = refuse
    async with proxy_factory(upstream) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 400
    assert response.json() == {
        "error": "upstream_rejected",
        "detail": "the job server refused the job with 400: bad_request: account: banned",
        "upstream": {"error": "bad_request", "detail": "account: banned"},
    }


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
    assert wrong.json()["error"] == "job_mismatch"
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

    async with proxy_factory(transport=httpx.MockTransport(refuse)) as proxy:
        response = await proxy.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "not_ready"


async def test_the_bare_base_url_is_an_alias_of_proxy(proxy: ProxyUnderTest) -> None:
    """POST / behaves like POST /proxy, as clients pointed at the proxy's base URL expect."""
    request = asyncio.ensure_future(proxy.client.post("/", json={"account": "acme", "wait": True}))
    job_id = await proxy.upstream.next_job()
    job = proxy.upstream.finish(job_id)
    await proxy.upstream.callback(job_id)
    assert (await request).json() == job


async def test_readyz_is_503_while_draining(proxy: ProxyUnderTest) -> None:
    """While the proxy drains on shutdown, readyz answers 503 so balancers stop sending."""
    proxy.services.waiters.closing = True
    response = await proxy.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "the proxy is shutting down"


async def test_a_client_that_leaves_withdraws_its_start_under_way() -> None:
    """A client that hangs up while its start is at the job server (sent, not answered)
    has that start's connection closed, and is no longer pending, at once."""
    arrived, disconnected = asyncio.Event(), asyncio.Event()

    async def held_start(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        arrived.set()
        if (await receive())["type"] == "http.disconnect":  # held until the proxy hangs up
            disconnected.set()

    leave = asyncio.Event()
    async with run_server(held_start, lifespan="off") as url:
        settings = Settings(upstream_url=url, public_url=PROXY_URL)
        async with app_lifespan(create_app(settings)) as (app, state):
            client = asyncio.ensure_future(
                post_and_leave(app, "/proxy", {"account": "a", "wait": True}, leave)
            )
            async with asyncio.timeout(5):
                await arrived.wait()
            assert len(state["services"].waiters) == 1
            leave.set()
            async with asyncio.timeout(5):  # not at the job's deadline (30 s)
                await client
            assert len(state["services"].waiters) == 0
            async with asyncio.timeout(5):
                await disconnected.wait()


async def test_a_start_answered_as_the_deadline_passes_is_answered_504(
    proxy_factory: ProxyFactory,
) -> None:
    """A /start whose answer comes only once the deadline has passed, with no callback
    after it, still gets its client a 504 then, not an answer that never comes."""
    upstream = FakeJobServer()
    async with proxy_factory(upstream, job_deadline=0.3) as proxy:

        async def answer_after_the_deadline(body: dict[str, Any]) -> Response | None:
            await eventually(lambda: all(waiter.settled for waiter in proxy.services.waiters))
            return None  # then answer as usual: the job is running

        upstream.on_start = answer_after_the_deadline
        async with asyncio.timeout(5):
            response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code == 504
    assert response.json()["error"] == "job_timeout"


async def test_a_job_server_that_never_answers_gives_every_client_the_same_504() -> None:
    """Starts that the job server never answers all end in one kind of answer, 504, at
    the deadline: no other timer answers some of them 502 at that same instant."""

    async def never_answers(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await asyncio.Event().wait()

    async with run_server(never_answers, lifespan="off") as url:
        settings = Settings(upstream_url=url, public_url=PROXY_URL, job_deadline=0.5)
        async with app_lifespan(create_app(settings)) as (app, _):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=PROXY_URL) as client:
                answers = await asyncio.gather(
                    *(client.post("/proxy", json={"account": "a", "wait": True}) for _ in range(30))
                )
    assert {(answer.status_code, answer.json()["error"]) for answer in answers} == {
        (504, "job_timeout")
    }


@pytest.mark.parametrize("stripped", [False, True], ids=["path kept", "path stripped"])
async def test_a_public_url_with_a_path_gets_its_callbacks(
    proxy_factory: ProxyFactory, stripped: bool
) -> None:
    """With public_url below a path (behind a load balancer), callback URLs carry the path
    and callbacks are taken with it or without it (a balancer that strips it)."""
    async with proxy_factory(public_url=f"{PROXY_URL}/jobs/") as proxy:
        request, job_id = await proxy.held_job()
        url = proxy.upstream.callbacks[job_id]
        assert url.startswith(f"{PROXY_URL}/jobs/callback/")
        if stripped:
            url = url.replace("/jobs/callback/", "/callback/")
        assert proxy.upstream.to_proxy is not None
        delivered = await proxy.upstream.to_proxy.post(url, json=proxy.upstream.finish(job_id))
        assert delivered.status_code == 200
        assert (await request).status_code == 200


@pytest.mark.parametrize("path", ["/proxy/", "/callback/", "/healthz/"])
async def test_a_trailing_slash_is_a_json_404_not_a_redirect(
    proxy: ProxyUnderTest, path: str
) -> None:
    """A path with a trailing slash is answered JSON 404, never a redirect built from the
    client's Host header."""
    response = await proxy.client.post(path, json={"account": "a"}, headers={"host": "evil.test"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
