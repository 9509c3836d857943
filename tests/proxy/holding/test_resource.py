"""GET /jobs/{ref}: a tracked job read, long-polled and streamed by whoever has its ref."""

from __future__ import annotations

import asyncio

import httpx
from httpx_sse import aconnect_sse

from tests.conftest import eventually
from tests.proxy.conftest import ProxyFactory, ProxyUnderTest

HELD = {"account": "acme", "wait": True}


async def accepted_job(
    proxy: ProxyUnderTest, client: httpx.AsyncClient | None = None
) -> tuple[str, str]:
    """A job answered 202 (respond-async): its ref and the job server's id."""
    client = client or proxy.client
    request = asyncio.ensure_future(
        client.post("/proxy", json=HELD, headers={"prefer": "respond-async"})
    )
    job_id = await proxy.upstream.next_job()
    response = await request
    assert response.status_code == 202
    return response.headers["location"].rsplit("/", 1)[1], job_id


async def test_an_unknown_ref_is_404_unknown_job(proxy: ProxyUnderTest) -> None:
    """A ref never issued is answered 404 unknown_job, plain or streamed."""
    plain = await proxy.client.get("/jobs/not-a-ref")
    streamed = await proxy.client.get("/jobs/not-a-ref", headers={"accept": "text/event-stream"})
    assert (plain.status_code, plain.json()["error"]) == (404, "unknown_job")
    assert streamed.status_code == 404


async def test_a_long_poll_is_answered_when_the_job_ends(proxy: ProxyUnderTest) -> None:
    """GET with Prefer: wait=N is held until the job ends, then answered with it."""
    ref, job_id = await accepted_job(proxy)
    waiting = asyncio.ensure_future(proxy.client.get(f"/jobs/{ref}", headers={"prefer": "wait=10"}))
    await asyncio.sleep(0)
    job = proxy.upstream.finish(job_id)
    await proxy.upstream.callback(job_id)
    answer = await waiting
    assert (answer.status_code, answer.json()) == (200, job)


async def test_a_long_poll_whose_time_is_up_says_running(proxy: ProxyUnderTest) -> None:
    """A long poll that outlives its wait is answered with the job still running."""
    ref, job_id = await accepted_job(proxy)
    answer = await proxy.client.get(f"/jobs/{ref}", headers={"prefer": "wait=0.05"})
    assert answer.json() == {"ref": ref, "id": job_id, "state": "running"}
    assert "retry-after" in answer.headers


async def test_a_stream_resumes_after_its_last_event_id(proxy: ProxyUnderTest) -> None:
    """Last-Event-ID: n sends the events after n, then the rest as they come."""
    async with proxy.on_a_port() as client:
        ref, job_id = await accepted_job(proxy, client)
        headers = {"accept": "text/event-stream", "last-event-id": "1"}
        async with aconnect_sse(client, "GET", f"/jobs/{ref}", headers=headers) as source:
            events = source.aiter_sse()
            waiting = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # "accepted" (id 1) was seen already
            job = proxy.upstream.finish(job_id)
            await proxy.upstream.callback(job_id)
            final = await waiting
            rest = [event async for event in events]
    assert (final.event, final.id, final.json(), rest) == ("completed", "2", job, [])


async def test_a_finished_jobs_stream_sends_its_final_event_at_least(
    proxy: ProxyUnderTest,
) -> None:
    """A stream opened on a finished job, past every event it had, still gets the final
    one, and ends."""
    ref, job_id = await accepted_job(proxy)
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    async with proxy.on_a_port() as client:
        headers = {"accept": "text/event-stream", "last-event-id": "99"}
        async with aconnect_sse(client, "GET", f"/jobs/{ref}", headers=headers) as source:
            events = [event async for event in source.aiter_sse()]
    assert [event.event for event in events] == ["completed"]


async def test_a_stream_without_last_event_id_gets_every_event(proxy: ProxyUnderTest) -> None:
    """A stream opened without Last-Event-ID replays the job's events from the first."""
    ref, job_id = await accepted_job(proxy)
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    async with proxy.on_a_port() as client:
        headers = {"accept": "text/event-stream"}
        async with aconnect_sse(client, "GET", f"/jobs/{ref}", headers=headers) as source:
            events = [(event.id, event.event) async for event in source.aiter_sse()]
    assert events == [("1", "accepted"), ("2", "completed")]


async def test_finished_jobs_are_forgotten_after_result_ttl(proxy_factory: ProxyFactory) -> None:
    """A finished job is readable for result_ttl seconds, then 404."""
    async with proxy_factory(result_ttl=0.1) as proxy:
        ref, job_id = await accepted_job(proxy)
        await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
        assert (await proxy.client.get(f"/jobs/{ref}")).status_code == 200

        async def forgotten() -> bool:
            return (await proxy.client.get(f"/jobs/{ref}")).status_code == 404

        await eventually(forgotten)
