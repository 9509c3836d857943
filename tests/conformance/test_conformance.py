"""The proxy's end-to-end behaviours against every job server it is tried with.

Each behaviour runs in front of each entry of :data:`UPSTREAMS`: every shape of our
simulator (callbacks out of order, before the /start answer, a flaky status endpoint,
gates that honour disconnects) and a second job server written independently from the
protocol, in its own shapes. A behaviour holds for any job server that keeps the
protocol, or it does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conformance.upstreams import (
    UPSTREAMS,
    Faults,
    ProxyInFront,
    Upstream,
    proxy_in_front,
)
from tests.conftest import eventually
from tests.proxy.conftest import jobclient_in_process

HELD = {"account": "acme", "wait": True}
WAIT = 20.0
NO_FAULTS = Faults()
CLIENTS = 10

pytestmark = pytest.mark.parametrize("shape", list(UPSTREAMS))


@contextlib.asynccontextmanager
async def system(
    shape: str, faults: Faults = NO_FAULTS, **settings: object
) -> AsyncIterator[tuple[Upstream, ProxyInFront, httpx.AsyncClient]]:
    """A job server of ``shape`` with ``faults``, the proxy in front, a client to it."""
    async with (
        UPSTREAMS[shape](faults) as upstream,
        proxy_in_front(upstream, **settings) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=WAIT) as client,
    ):
        yield upstream, proxy, client


async def held(
    client: httpx.AsyncClient, count: int, account: str = "acme"
) -> list[httpx.Response]:
    return await asyncio.gather(
        *(client.post("/proxy", json={"account": account, "wait": True}) for _ in range(count))
    )


async def test_fifty_jobs_of_one_account_pass(shape: str) -> None:
    """The jobclient's 50 jobs of one account through the proxy pass within 5 s."""
    async with system(shape) as (_, proxy, _client):
        code, report = await jobclient_in_process(f"{proxy.url}/proxy")
    assert (code, report["result"]) == (0, "PASSED"), report


async def test_failed_jobs_are_answered_as_they_failed(shape: str) -> None:
    """A failed job is passed on as a 200 whose state is failed, its error included."""
    async with system(shape, Faults(failure_rate=1.0)) as (_, _proxy, client):
        answers = await held(client, 5)
    assert [answer.status_code for answer in answers] == [200] * 5
    assert all(answer.json()["state"] == "failed" for answer in answers)
    assert all(answer.json()["error"] for answer in answers)


async def test_each_job_is_answered_once_whatever_duplicates_come(shape: str) -> None:
    """With every callback sent twice, each client gets its own job, once."""
    async with system(shape, Faults(duplicate_rate=1.0)) as (upstream, _proxy, client):
        answers = await held(client, 10)
        await upstream.callbacks_sent()
    jobs = [answer.json() for answer in answers]
    assert all(job["state"] == "completed" for job in jobs)
    assert len({job["id"] for job in jobs}) == 10


async def test_lost_callbacks_are_answered_by_status_polls(shape: str) -> None:
    """With every callback lost, each client still gets its own completed job, however
    flaky the status endpoint of its shape; none is called lost."""
    async with system(shape, Faults(drop_rate=1.0)) as (upstream, _proxy, client):
        answers = await held(client, 10, "lost")
        polls = await upstream.count("status_polls")
    assert [answer.status_code for answer in answers] == [200] * 10, answers[0].text
    assert all(answer.json()["state"] == "completed" for answer in answers)
    assert polls >= 10


async def test_clients_that_leave_leave_nothing_pending(shape: str) -> None:
    """Clients that hang up while their starts wait at the account's gate are no longer
    held; a job server that honours disconnects starts few of their jobs."""
    faults = Faults(gate_time=0.1)
    async with (
        system(shape, faults) as (upstream, proxy, _client),
        httpx.AsyncClient(base_url=proxy.url, timeout=0.25) as impatient,
    ):
        answers = await asyncio.gather(
            *(impatient.post("/proxy", json=HELD) for _ in range(CLIENTS)), return_exceptions=True
        )
        left = [answer for answer in answers if isinstance(answer, httpx.TimeoutException)]
        assert len(left) >= CLIENTS - 4  # a few went through the gate before they left
        await eventually(lambda: len(proxy.services.waiters) == 0)
        if upstream.honours_disconnects:

            async def settled() -> bool:
                handled = await upstream.count("jobs_started")
                return handled + await upstream.count("starts_abandoned") >= CLIENTS

            await eventually(settled, timeout=WAIT)
            started = await upstream.count("jobs_started")
            assert started <= 4  # those through the gate before their clients left


async def test_a_drain_answers_held_jobs_as_they_finish(shape: str) -> None:
    """During the drain, held jobs are answered by their callbacks (or polls), not 503."""
    async with system(shape, Faults(job_duration=0.15)) as (_, proxy, client):
        requests = asyncio.ensure_future(held(client, 5, "drain"))
        await eventually(lambda: len(proxy.services.waiters) == 5)
        finished, failed = await proxy.services.waiters.drain(10)
        answers = await requests
    assert (finished, failed) == (5, 0)
    assert [answer.status_code for answer in answers] == [200] * 5


async def test_a_job_is_read_back_by_its_ref(shape: str) -> None:
    """respond-async gets a 202 and a ref; a long poll on the ref gets the job."""
    async with system(shape, Faults(job_duration=0.2)) as (_, _proxy, client):
        accepted = await client.post("/proxy", json=HELD, headers={"prefer": "respond-async"})
        if accepted.status_code == 200:
            # A job server that calls back before answering /start: the job was done
            # when it was accepted, and is answered as such.
            done = accepted
        else:
            assert accepted.status_code == 202
            location = accepted.headers["location"]
            done = await client.get(location, headers={"prefer": "wait=10"})
            assert done.json()["id"] == accepted.json()["id"]
    assert done.status_code == 200
    assert done.json()["state"] == "completed"
