"""The held request in each form a client may ask for: Prefer wait=N, respond-async, and
a stream of the job's events; without a preference, nothing changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from starlette.responses import JSONResponse, Response

from tests.conftest import eventually
from tests.proxy.conftest import PROXY_URL, FakeJobServer, ProxyFactory, ProxyUnderTest, sample

HELD = {"account": "acme", "wait": True}


def post(proxy: ProxyUnderTest, prefer: str) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(proxy.client.post("/proxy", json=HELD, headers={"prefer": prefer}))


def ref_of(response: httpx.Response) -> str:
    location = response.headers["location"]
    assert location.startswith(f"{PROXY_URL}/jobs/")
    return location.rsplit("/", 1)[1]


async def test_prefer_wait_answers_a_job_done_in_time_as_a_plain_hold(
    proxy: ProxyUnderTest,
) -> None:
    """With Prefer: wait=N, a job that ends within N seconds is answered 200 as ever."""
    request = post(proxy, "wait=10")
    job_id = await proxy.upstream.next_job()
    job = proxy.upstream.finish(job_id)
    await proxy.upstream.callback(job_id)
    response = await request
    assert (response.status_code, response.json()) == (200, job)


async def test_prefer_wait_answers_202_and_the_job_goes_on(proxy: ProxyUnderTest) -> None:
    """A job longer than the wait is answered 202 with Location and Retry-After; it goes
    on, counted as held, and GET /jobs/{ref} gives it running, then done."""
    request = post(proxy, "wait=0.1")
    job_id = await proxy.upstream.next_job()
    accepted = await request
    assert accepted.status_code == 202
    assert int(accepted.headers["retry-after"]) >= 1
    ref = ref_of(accepted)
    assert accepted.json() == {"ref": ref, "id": job_id, "state": "running"}
    assert len(proxy.services.waiters) == 1
    running = await proxy.client.get(f"/jobs/{ref}")
    assert running.json() == {"ref": ref, "id": job_id, "state": "running"}
    assert "retry-after" in running.headers
    job = proxy.upstream.finish(job_id)
    assert (await proxy.upstream.callback(job_id)).status_code == 200
    done = await proxy.client.get(f"/jobs/{ref}")
    assert (done.status_code, done.json()) == (200, job)
    await eventually(lambda: len(proxy.services.waiters) == 0)


async def test_prefer_wait_may_answer_before_the_job_server_accepted_the_job(
    proxy_factory: ProxyFactory,
) -> None:
    """A 202 may come while the start still waits: its id is null, and the job is started
    all the same and can be read by its ref."""
    upstream = FakeJobServer()
    gate = asyncio.Event()

    async def slow_gate(body: dict[str, Any]) -> Response | None:
        await gate.wait()
        return None

    upstream.on_start = slow_gate
    async with proxy_factory(upstream) as proxy, proxy.on_a_port() as client:
        accepted = await client.post("/proxy", json=HELD, headers={"prefer": "wait=0.05"})
        assert accepted.status_code == 202
        assert accepted.json()["id"] is None
        gate.set()
        job_id = await upstream.next_job()
        await upstream.callback(job_id, upstream.finish(job_id))
        done = await client.get(f"/jobs/{ref_of(accepted)}")
    assert done.json()["id"] == job_id


async def test_respond_async_answers_202_once_the_job_is_accepted(proxy: ProxyUnderTest) -> None:
    """Prefer: respond-async is answered 202 as soon as the job server accepted the job,
    with Preference-Applied and the job's id."""
    request = post(proxy, "respond-async")
    job_id = await proxy.upstream.next_job()
    accepted = await request
    assert accepted.status_code == 202
    assert accepted.headers["preference-applied"] == "respond-async"
    assert accepted.json()["id"] == job_id
    metrics = (await proxy.client.get("/metrics")).text
    assert sample(metrics, 'jobproxy_requests_total{outcome="accepted"}') == 1
    assert sample(metrics, "jobproxy_pending_jobs") == 1


async def test_unknown_preferences_change_nothing(proxy: ProxyUnderTest) -> None:
    """A Prefer header without wait or respond-async holds the request as a plain one."""
    request = post(proxy, "handling=lenient, return=minimal")
    job_id = await proxy.upstream.next_job()
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    response = await request
    assert response.status_code == 200
    assert "location" not in response.headers


async def test_a_job_that_ended_in_an_error_is_answered_with_it(
    proxy_factory: ProxyFactory,
) -> None:
    """A tracked job whose deadline passed is answered with the 504 that ended it."""
    async with proxy_factory(job_deadline=0.3) as proxy:
        accepted = await post(proxy, "respond-async")
        await eventually(lambda: len(proxy.services.waiters) == 0)
        ended = await proxy.client.get(f"/jobs/{ref_of(accepted)}")
    assert ended.status_code == 504
    assert ended.json()["error"] == "job_timeout"


async def test_a_ref_is_not_the_callback_token(proxy: ProxyUnderTest) -> None:
    """Knowing a ref must not let anyone complete the job: it is not the token."""
    accepted = await post(proxy, "respond-async")
    ref = ref_of(accepted)
    token = proxy.upstream.starts[0]["callback"].rsplit("/", 1)[1]
    assert ref not in token
    assert len(ref) >= 22  # 128 bits in base64url
    forged = await proxy.client.post(f"/callback/{ref}", json={"id": "x", "state": "completed"})
    assert forged.status_code == 404


# Streams of the job's events.


async def events_of(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> list[ServerSentEvent]:
    headers = {"accept": "text/event-stream", **kwargs.pop("headers", {})}
    async with aconnect_sse(client, method, url, headers=headers, **kwargs) as source:
        return [event async for event in source.aiter_sse()]


async def test_a_held_request_streams_its_jobs_events(proxy: ProxyUnderTest) -> None:
    """Accept: text/event-stream on POST /proxy: accepted, then completed with the job
    JSON, with increasing ids, and a Location to come back to."""
    async with proxy.on_a_port() as client:
        headers = {"accept": "text/event-stream"}
        async with aconnect_sse(client, "POST", "/proxy", json=HELD, headers=headers) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            ref = source.response.headers["location"].rsplit("/", 1)[1]
            events = source.aiter_sse()
            accepted = await anext(events)
            job_id = accepted.json()["id"]
            job = proxy.upstream.finish(job_id)
            await proxy.upstream.callback(job_id)
            rest = [event async for event in events]
    assert (accepted.event, accepted.id) == ("accepted", "1")
    assert accepted.json() == {"ref": ref, "id": job_id, "state": "running"}
    assert [(event.event, event.id, event.json()) for event in rest] == [("completed", "2", job)]


async def test_a_late_callback_shows_as_polling_then_the_polls_answer(
    proxy_factory: ProxyFactory,
) -> None:
    """A job whose callback is overdue gets a polling event, then its final event."""
    async with proxy_factory(poll_initial=0.05) as proxy, proxy.on_a_port() as client:
        streaming = asyncio.ensure_future(events_of(client, "POST", "/proxy", json=HELD))
        job_id = await proxy.upstream.next_job()
        await eventually(lambda: any(waiter.poll for waiter in proxy.services.waiters))
        proxy.upstream.finish(job_id, state="failed")
        events = await streaming
    assert [event.event for event in events] == ["accepted", "polling", "failed"]
    assert events[-1].json()["error"] == "it broke"


async def test_a_retried_start_shows_as_retrying(proxy_factory: ProxyFactory) -> None:
    """A start answered 503 and retried gets a retrying event with its attempt."""
    upstream = FakeJobServer()
    busy = iter([True])

    async def busy_once(body: dict[str, Any]) -> Response | None:
        if next(busy, False):
            return JSONResponse({"error": "busy"}, 503, headers={"retry-after": "0"})
        return None

    upstream.on_start = busy_once
    async with proxy_factory(upstream) as proxy, proxy.on_a_port() as client:
        streaming = asyncio.ensure_future(events_of(client, "POST", "/proxy", json=HELD))
        job_id = await upstream.next_job()
        await upstream.callback(job_id, upstream.finish(job_id))
        events = await streaming
    assert [event.event for event in events] == ["retrying", "accepted", "completed"]
    assert events[0].json()["attempt"] == 1


async def test_a_stream_whose_client_leaves_leaves_its_job_running(proxy: ProxyUnderTest) -> None:
    """A stream's client that goes away does not withdraw its job: its result is kept."""
    async with proxy.on_a_port() as client:
        headers = {"accept": "text/event-stream"}
        async with aconnect_sse(client, "POST", "/proxy", json=HELD, headers=headers) as source:
            ref = source.response.headers["location"].rsplit("/", 1)[1]
            job_id = (await anext(source.aiter_sse())).json()["id"]
        assert len(proxy.services.waiters) == 1
        job = proxy.upstream.finish(job_id)
        assert (await proxy.upstream.callback(job_id)).status_code == 200
        done = await client.get(f"/jobs/{ref}")
    assert done.json() == job


async def test_a_quiet_stream_gets_heartbeats(proxy_factory: ProxyFactory) -> None:
    """A stream with nothing to say gets a comment every stream_heartbeat seconds."""
    async with proxy_factory(stream_heartbeat=0.05) as proxy, proxy.on_a_port() as client:
        headers = {"accept": "text/event-stream"}
        async with client.stream("POST", "/proxy", json=HELD, headers=headers) as response:
            job_id = await proxy.upstream.next_job()
            chunks = response.aiter_text()
            text = ""
            async with asyncio.timeout(5):
                while text.count(": keep-alive") < 2:
                    text += await anext(chunks)
            await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
            text += "".join([chunk async for chunk in chunks])
    assert "event: completed" in text
    assert json.loads(text.rsplit("data: ", 1)[1])["id"] == job_id
