"""The proxy's end-to-end behaviours against every job server it is tried with.

Each behaviour runs in front of each entry of :data:`UPSTREAMS`: every shape of our
simulator (callbacks out of order, before the /start answer, a flaky status endpoint,
gates that honour disconnects) and a second job server written independently from the
protocol, in its own shapes; each in every dialect it speaks (the work sample's, the
predictions API's), spoken by the client as that dialect's clients speak. A behaviour
holds for any job server that keeps the protocol, or it does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conformance.upstreams import (
    UPSTREAMS,
    Faults,
    ProxyInFront,
    Speaker,
    Upstream,
    proxy_in_front,
)
from tests.conftest import eventually
from tests.proxy.conftest import jobclient_in_process

WAIT = 20.0
NO_FAULTS = Faults()
CLIENTS = 10
FIFTY = 50
JOBCLIENT_DEADLINE = 5.0  # the jobclient's rule: 50 jobs within 5 s

every_upstream = pytest.mark.parametrize("shape", list(UPSTREAMS))


@contextlib.asynccontextmanager
async def system(
    shape: str, faults: Faults = NO_FAULTS, **settings: object
) -> AsyncIterator[tuple[Upstream, ProxyInFront, Client]]:
    """A job server of ``shape`` with ``faults``, the proxy in front, a client to it."""
    kind = UPSTREAMS[shape]
    async with (
        kind.run(faults) as upstream,
        proxy_in_front(upstream.url, upstream_dialect=kind.speaker.dialect, **settings) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=WAIT) as http,
    ):
        yield upstream, proxy, Client(http, kind.speaker)


@dataclass
class Client:
    """A client of the proxy that speaks the upstream's dialect."""

    http: httpx.AsyncClient
    speaker: Speaker

    async def hold(self, lane: str = "acme", prefer: str = "") -> httpx.Response:
        return await self.http.post(self.speaker.path, **self.speaker.held(lane, prefer))

    async def held(self, count: int, lane: str = "acme") -> list[httpx.Response]:
        return await asyncio.gather(*(self.hold(lane) for _ in range(count)))

    def states(self, answers: list[httpx.Response]) -> list[str]:
        return [self.speaker.state(answer.json()) for answer in answers]


@pytest.mark.parametrize(
    "shape", [name for name in UPSTREAMS if not name.startswith("work-sample/")]
)
async def test_fifty_jobs_of_one_lane_are_answered_within_the_jobclients_deadline(
    shape: str,
) -> None:
    """50 held jobs of one lane (account, token) are answered, each its own, within 5 s
    (in the work sample's dialect, the jobclient itself checks that: the test below)."""
    async with system(shape) as (_, _proxy, client):
        began = time.monotonic()
        answers = await client.held(FIFTY)
        took = time.monotonic() - began
    assert [answer.status_code for answer in answers] == [200] * FIFTY
    assert client.states(answers) == [client.speaker.completed] * FIFTY
    assert len({answer.json()["id"] for answer in answers}) == FIFTY
    assert took < JOBCLIENT_DEADLINE


@pytest.mark.parametrize("shape", [name for name in UPSTREAMS if name.startswith("work-sample/")])
async def test_the_jobclient_passes(shape: str) -> None:
    """The jobclient's 50 jobs of one account through the proxy pass within 5 s."""
    async with system(shape) as (_, proxy, _client):
        code, report = await jobclient_in_process(f"{proxy.url}/proxy")
    assert (code, report["result"]) == (0, "PASSED"), report


@every_upstream
async def test_failed_jobs_are_answered_as_they_failed(shape: str) -> None:
    """A failed job is passed on as a 200 whose state is failed, its error included."""
    async with system(shape, Faults(failure_rate=1.0)) as (_, _proxy, client):
        answers = await client.held(5)
    assert [answer.status_code for answer in answers] == [200] * 5
    assert client.states(answers) == [client.speaker.failed] * 5
    assert all(answer.json()["error"] for answer in answers)


@every_upstream
async def test_each_job_is_answered_once_whatever_duplicates_come(shape: str) -> None:
    """With every callback sent twice, each client gets its own job, once."""
    async with system(shape, Faults(duplicate_rate=1.0)) as (upstream, _proxy, client):
        answers = await client.held(10)
        await upstream.callbacks_sent()
    assert client.states(answers) == [client.speaker.completed] * 10
    assert len({answer.json()["id"] for answer in answers}) == 10


@every_upstream
async def test_lost_callbacks_are_answered_by_status_polls(shape: str) -> None:
    """With every callback lost, each client still gets its own completed job, however
    flaky the status endpoint of its shape; none is called lost."""
    async with system(shape, Faults(drop_rate=1.0)) as (upstream, _proxy, client):
        answers = await client.held(10, "lost")
        polls = await upstream.count("status_polls")
    assert [answer.status_code for answer in answers] == [200] * 10, answers[0].text
    assert client.states(answers) == [client.speaker.completed] * 10
    assert len({answer.json()["id"] for answer in answers}) == 10
    assert polls >= 10


@every_upstream
async def test_clients_that_leave_leave_nothing_pending(shape: str) -> None:
    """Clients that hang up while their starts wait at the lane's gate are no longer
    held; a job server that honours disconnects starts few of their jobs."""
    faults = Faults(gate_time=0.1)
    async with system(shape, faults) as (upstream, proxy, client):
        impatient = Client(httpx.AsyncClient(base_url=proxy.url, timeout=0.25), client.speaker)
        async with impatient.http:
            answers = await asyncio.gather(
                *(impatient.hold() for _ in range(CLIENTS)), return_exceptions=True
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


@every_upstream
async def test_a_drain_answers_held_jobs_as_they_finish(shape: str) -> None:
    """During the drain, held jobs are answered by their callbacks (or polls), not 503."""
    async with system(shape, Faults(job_duration=0.15)) as (_, proxy, client):
        requests = asyncio.ensure_future(client.held(5, "drain"))
        await eventually(lambda: len(proxy.services.waiters) == 5)
        finished, failed = await proxy.services.waiters.drain(10)
        answers = await requests
    assert (finished, failed) == (5, 0)
    assert [answer.status_code for answer in answers] == [200] * 5


@every_upstream
async def test_a_job_is_read_back_by_its_ref(shape: str) -> None:
    """respond-async gets a 202 and a ref; a long poll on the ref gets the job."""
    async with system(shape, Faults(job_duration=0.2)) as (_, _proxy, client):
        accepted = await client.hold(prefer="respond-async")
        if accepted.status_code == 200:
            # A job server that calls back before answering its start: the job was done
            # when it was accepted, and is answered as such.
            done = accepted
        else:
            assert accepted.status_code == 202
            location = accepted.headers["location"]
            done = await client.http.get(location, headers={"prefer": "wait=10"})
            assert done.json()["id"] == accepted.json()["id"]
    assert done.status_code == 200
    assert client.speaker.state(done.json()) == client.speaker.completed
