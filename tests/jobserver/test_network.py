"""Simulated network latency: requests, answers and callbacks each travel ``latency``."""

from __future__ import annotations

import asyncio
import time

from tests.jobserver.servers import callback_receiver, jobserver_client

LATENCY = 0.25
# asyncio may fire a timer up to its clock resolution early.
EARLY = 0.01


async def test_a_start_costs_a_round_trip() -> None:
    """A /start is answered no sooner than one latency in and one latency out."""
    async with jobserver_client(latency=LATENCY) as client:
        began = time.monotonic()
        response = await client.post("/start", json={"account": "acme"})
        took = time.monotonic() - began
    assert response.status_code == 200
    assert took >= 2 * LATENCY - EARLY


async def test_starts_of_one_account_queue_at_the_server_not_on_the_wire() -> None:
    """Overlapping starts of one account all reach its gate; answers leave after it is freed.

    If the answer's delay were spent inside the gate, five starts would take six
    latencies; travelling outside it, they take two (plus microseconds of handling).
    """
    async with jobserver_client(latency=LATENCY) as client:
        began = time.monotonic()
        answers = await asyncio.gather(
            *(client.post("/start", json={"account": "acme"}) for _ in range(5))
        )
        took = time.monotonic() - began
        health = (await client.get("/healthz")).json()
    assert [answer.status_code for answer in answers] == [200] * 5
    assert health["start_queue_peak"] == 5
    assert 2 * LATENCY - EARLY <= took < 3 * LATENCY


async def test_status_answers_travel_too() -> None:
    """GET /status costs a round trip, found or not."""
    async with jobserver_client(latency=LATENCY) as client:
        began = time.monotonic()
        response = await client.get("/status/0123456789abcdef")
        took = time.monotonic() - began
    assert response.status_code == 404
    assert took >= 2 * LATENCY - EARLY


async def test_a_callback_arrives_one_latency_after_the_job_ends() -> None:
    """The callback reaches its receiver no sooner than the job's end plus the latency."""
    async with (
        callback_receiver() as receiver,
        jobserver_client(latency=LATENCY, job_duration=0.1) as client,
    ):
        began = time.monotonic()
        await client.post("/start", json={"account": "acme", "callback": receiver.url})
        delivery = await receiver.next()
    # In: LATENCY, job: 0.1 s, callback on its way: LATENCY.
    assert delivery.received_at - began >= 2 * LATENCY + 0.1 - EARLY


async def test_the_peak_counts_requests_waiting_behind_a_held_gate() -> None:
    """Without latency, two starts of one account, one holding the gate for a while,
    make the peak 2: whichever gets in first, the other waits behind it."""
    async with jobserver_client(start_latency=0.3) as client:
        answers = await asyncio.gather(
            *(client.post("/start", json={"account": "acme"}) for _ in range(2))
        )
        health = (await client.get("/healthz")).json()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert health["start_queue_peak"] == 2
