"""Fault injection and seeded randomness: each knob, through the HTTP API where it shows."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from jobserver.config import Settings
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.jobs import draw_job_id
from tests.jobserver.servers import callback_receiver, jobserver_client


async def start(client: httpx.AsyncClient, account: str, **fields: Any) -> httpx.Response:
    return await client.post("/start", json={"account": account, **fields})


async def run_states(seed: int, jobs: int, **overrides: Any) -> list[tuple[str, str]]:
    """(id, state) of ``jobs`` sequential wait: true jobs on a fresh server."""
    async with jobserver_client(seed=seed, job_duration=0.0, **overrides) as client:
        results = []
        for _ in range(jobs):
            job = (await start(client, "acme", wait=True)).json()
            results.append((job["id"], job["state"]))
    return results


async def test_failure_rate_one_fails_every_job_without_a_proof() -> None:
    """failure_rate 1: the job ends failed with an error message and no proof."""
    async with jobserver_client(failure_rate=1.0) as client:
        job = (await start(client, "acme", wait=True)).json()
    assert job["state"] == "failed"
    assert set(job) == {"id", "state", "startedAt", "error"}
    assert "failure_rate" in job["error"]


async def test_seeded_failure_rate_is_partial_and_reproducible() -> None:
    """With a seed, failure_rate 0.5 fails some jobs, and the same seed gives the same run."""
    first = await run_states(7, 30, failure_rate=0.5)
    second = await run_states(7, 30, failure_rate=0.5)
    states = [state for _, state in first]
    assert first == second
    assert 0 < states.count("failed") < 30
    assert set(states) == {"completed", "failed"}


async def test_faults_do_not_change_seeded_job_ids() -> None:
    """Job ids depend on the seed only: turning on failures keeps the same ids."""
    plain = await run_states(3, 5)
    faulty = await run_states(3, 5, failure_rate=1.0)
    assert [job_id for job_id, _ in plain] == [job_id for job_id, _ in faulty]


async def test_start_error_count_refuses_the_first_starts_without_creating_jobs() -> None:
    """The first N starts are 503 with Retry-After, and no job (no id) is consumed by them."""
    expected_ids = [job_id for job_id, _ in await run_states(11, 2)]
    async with jobserver_client(seed=11, job_duration=0.0, start_error_count=5) as client:
        refused = [await start(client, "acme", wait=True) for _ in range(5)]
        accepted = [await start(client, "acme", wait=True) for _ in range(2)]
    assert [r.status_code for r in refused] == [503] * 5
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert all(r.json()["error"] == "start_failed" for r in refused)
    assert [r.json()["id"] for r in accepted] == expected_ids


async def test_start_error_rate_answers_the_configured_status() -> None:
    """start_error_rate 1 with start_error_status 500: 500 JSON, no Retry-After."""
    async with jobserver_client(start_error_rate=1.0, start_error_status=500) as client:
        response = await start(client, "acme")
    assert response.status_code == 500
    assert response.json()["error"] == "start_failed"
    assert "retry-after" not in response.headers


async def test_seeded_start_error_rate_is_partial() -> None:
    """start_error_rate 0.5 with a seed refuses some starts and accepts others."""
    async with jobserver_client(seed=5, start_error_rate=0.5) as client:
        statuses = [(await start(client, "acme")).status_code for _ in range(30)]
    assert set(statuses) == {200, 503}


async def test_start_latency_is_spent_inside_the_account_gate() -> None:
    """Two starts of one account take two latencies; of two accounts, about one."""
    latency = 0.2
    async with jobserver_client(start_latency=latency, job_duration=5.0) as client:
        began = time.monotonic()
        await asyncio.gather(start(client, "acme"), start(client, "acme"))
        same_account = time.monotonic() - began
        began = time.monotonic()
        await asyncio.gather(start(client, "a"), start(client, "b"))
        two_accounts = time.monotonic() - began
    assert same_account >= 2 * latency - 0.01
    assert latency - 0.01 <= two_accounts < 2 * latency


async def test_callback_duplicate_rate_sends_the_callback_twice() -> None:
    """callback_duplicate_rate 1: the same body and webhook-id arrive twice."""
    async with (
        callback_receiver() as receiver,
        jobserver_client(callback_duplicate_rate=1.0, callback_secret="s3cret") as client,
    ):
        await start(client, "acme", callback=receiver.url)
        first, second = await receiver.next(), await receiver.next()
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_callback_delay_postpones_the_callback() -> None:
    """callback_delay: the callback arrives that long after the job ended."""
    delay = 0.3
    async with callback_receiver() as receiver, jobserver_client(callback_delay=delay) as client:
        response = await start(client, "acme", wait=True, callback=receiver.url)
        ended = time.monotonic()
        delivery = await receiver.next()
    assert json.loads(delivery.body) == response.json()
    assert delivery.received_at - ended >= delay - 0.05


def test_callback_drop_rate_one_sends_no_callback() -> None:
    """callback_drop_rate 1: every callback is sent zero times, and counted as dropped."""
    faults = FaultInjector(Settings(callback_drop_rate=1.0), RandomStreams(1))
    assert [faults.callback_copies() for _ in range(5)] == [0] * 5
    assert faults.injected["callback_drop"] == 5


def test_seeded_drop_rate_drops_some_callbacks_reproducibly() -> None:
    """callback_drop_rate 0.3 with a seed drops some, keeps most, the same way each run."""
    settings = Settings(callback_drop_rate=0.3, seed=2)

    def copies() -> list[int]:
        faults = FaultInjector(settings, RandomStreams(settings.seed))
        return [faults.callback_copies() for _ in range(100)]

    run = copies()
    assert run == copies()
    assert set(run) == {0, 1}
    assert 10 < run.count(0) < 50


def test_unseeded_streams_use_secrets_for_ids() -> None:
    """Without a seed, webhook ids have the asked length and differ between fresh servers."""
    first = RandomStreams(None).token_hex("message-ids", 12)
    second = RandomStreams(None).token_hex("message-ids", 12)
    assert len(first) == 24
    assert first != second


def test_seeded_streams_are_independent_per_purpose() -> None:
    """Draws from one purpose do not shift another purpose's stream."""
    quiet = RandomStreams(9)
    busy = RandomStreams(9)
    for _ in range(10):
        busy.stream("failure").random()
    assert quiet.token_hex("message-ids", 12) == busy.token_hex("message-ids", 12)
    assert draw_job_id(quiet) == draw_job_id(busy)


async def test_status_error_rate_one_answers_500_json() -> None:
    """status_error_rate 1: GET /status of a known job is 500 status_failed, as JSON."""
    async with jobserver_client(status_error_rate=1.0, job_duration=5.0) as client:
        job_id = (await start(client, "acme")).json()["id"]
        response = await client.get(f"/status/{job_id}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {
        "error": "status_failed",
        "detail": "injected fault: status_error_rate",
    }


async def test_seeded_status_error_rate_fails_some_polls_the_same_way_each_run() -> None:
    """status_error_rate 0.5 with a seed answers some polls 500 and others the job, reproducibly."""

    async def statuses() -> list[int]:
        async with jobserver_client(seed=4, status_error_rate=0.5, job_duration=5.0) as client:
            job_id = (await start(client, "acme")).json()["id"]
            return [(await client.get(f"/status/{job_id}")).status_code for _ in range(30)]

    run = await statuses()
    assert run == await statuses()
    assert set(run) == {200, 500}


def test_status_errors_are_counted_with_the_other_faults() -> None:
    """Each injected /status error is counted in the faults' injected counts."""
    faults = FaultInjector(Settings(status_error_rate=0.5, seed=6), RandomStreams(6))
    failed = sum(faults.status_error() for _ in range(40))
    assert 0 < failed < 40
    assert faults.injected["status_error"] == failed
