"""Job store, account gate and job runner, without HTTP."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from jobserver.config import Settings
from jobserver.errors import QueueFull
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.jobs import (
    AccountGate,
    Job,
    JobRunner,
    JobState,
    JobStore,
    draw_job_id,
    utc_timestamp,
)
from jobserver.proofs import make_proof

WAIT = 5.0
# The real server's ids: 13 to 16 lowercase hex digits, no leading zero.
REAL_JOB_ID = re.compile(r"[1-9a-f][0-9a-f]{12,15}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_runner(
    store: JobStore, finished: list[Job] | None = None, **overrides: object
) -> JobRunner:
    settings = Settings(**{"job_duration": 0.01, "job_duration_spread": 0.0, **overrides})  # type: ignore[arg-type]
    streams = RandomStreams(settings.seed)
    sink = finished if finished is not None else []
    return JobRunner(settings, store, FaultInjector(settings, streams), streams, sink.append)


def test_utc_timestamp_has_milliseconds_and_z() -> None:
    """startedAt is ISO-8601 UTC with exactly three fraction digits and a Z."""
    moment = datetime(2026, 11, 25, 13, 9, 6, 123456, tzinfo=UTC)
    assert utc_timestamp(moment) == "2026-11-25T13:09:06.123Z"
    assert utc_timestamp(moment.replace(microsecond=0)) == "2026-11-25T13:09:06.000Z"


def test_job_ids_are_like_the_real_servers() -> None:
    """Ids have 13 to 16 hex digits without a leading zero, about half shorter than 16."""
    streams = RandomStreams(7)
    ids = [draw_job_id(streams) for _ in range(4000)]
    assert all(REAL_JOB_ID.fullmatch(job_id) for job_id in ids)
    assert len(set(ids)) == len(ids)
    lengths = Counter(len(job_id) for job_id in ids)
    assert set(lengths) == {13, 14, 15, 16}
    assert 0.4 < (len(ids) - lengths[16]) / len(ids) < 0.6


def test_job_ids_follow_the_seed() -> None:
    """The same seed draws the same ids; another seed, or none, draws others."""

    def first_ids(seed: int | None) -> list[str]:
        streams = RandomStreams(seed)
        return [draw_job_id(streams) for _ in range(20)]

    assert first_ids(3) == first_ids(3)
    assert first_ids(3) != first_ids(4)
    unseeded = first_ids(None)
    assert all(REAL_JOB_ID.fullmatch(job_id) for job_id in unseeded)
    assert unseeded != first_ids(None)


async def test_runner_gives_jobs_the_seeded_ids() -> None:
    """The runner's jobs carry the ids the seed draws, in order."""
    store = JobStore(ttl=60)
    runner = make_runner(store, seed=5)
    jobs = [runner.submit("acme", None) for _ in range(3)]
    await runner.close(WAIT)
    streams = RandomStreams(5)
    assert [job.id for job in jobs] == [draw_job_id(streams) for _ in range(3)]


def test_store_keeps_finished_jobs_for_the_ttl_then_evicts_them() -> None:
    """A finished job is visible until status_ttl has passed, then gone."""
    clock = FakeClock()
    store = JobStore(ttl=300.0, clock=clock)
    job = Job("0123456789abcdef", "acme", None)
    store.add(job)
    store.finished(job)
    clock.now += 299.0
    assert store.get(job.id) is job
    clock.now += 1.0
    assert store.get(job.id) is None
    assert len(store) == 0


def test_store_never_evicts_running_jobs() -> None:
    """Only finished jobs expire: a running job stays however long it runs."""
    clock = FakeClock()
    store = JobStore(ttl=1.0, clock=clock)
    running = Job("00000000000000aa", "acme", None)
    store.add(running)
    clock.now += 10_000.0
    assert store.get(running.id) is running


def test_store_evicts_in_finish_order_on_any_access() -> None:
    """Eviction happens as jobs are added or read: memory stays bounded by the TTL window."""
    clock = FakeClock()
    store = JobStore(ttl=10.0, clock=clock)
    for index in range(100):
        job = Job(f"{index:016x}", "acme", None)
        store.add(job)
        store.finished(job)
        clock.now += 1.0
    # Jobs finished more than 10 s ago are gone; the last ten remain.
    assert len(store) == 10
    assert store.get(f"{89:016x}") is None
    assert store.get(f"{91:016x}") is not None  # job 90 expires exactly now


async def test_gate_serves_one_account_in_arrival_order() -> None:
    """Holders of one account's gate run one at a time, first come first served."""
    gate = AccountGate()
    order: list[int] = []
    inside = 0

    async def visit(number: int) -> None:
        nonlocal inside
        async with gate.hold("acme"):
            inside += 1
            assert inside == 1
            order.append(number)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(visit(n) for n in range(5))), WAIT)
    assert order == [0, 1, 2, 3, 4]


async def test_gate_does_not_block_other_accounts() -> None:
    """While one account holds its gate, another account gets in at once."""
    gate = AccountGate()
    async with gate.hold("acme"), asyncio.timeout(WAIT), gate.hold("other"):
        assert len(gate) == 2


async def test_gate_forgets_idle_accounts() -> None:
    """Slots exist only while held or awaited, also after a waiter is cancelled."""
    gate = AccountGate()
    async with gate.hold("acme"):
        waiter = asyncio.create_task(gate.hold("acme").__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert len(gate) == 0


async def test_runner_completes_a_job_with_a_proof() -> None:
    """A job runs, completes with the HMAC proof of id, account and startedAt, and is reported."""
    store = JobStore(ttl=60.0)
    finished: list[Job] = []
    runner = make_runner(store, finished, secret="s")
    job = runner.submit("acme", httpx.URL("http://127.0.0.1:1/cb"))
    await asyncio.wait_for(job.finished.wait(), WAIT)
    assert job.state is JobState.COMPLETED
    assert job.started_at is not None
    assert job.proof == make_proof(b"s", job.id, "acme", job.started_at)
    assert finished == [job]
    assert store.get(job.id) is job
    await runner.close(WAIT)


async def test_runner_refuses_beyond_max_running_plus_queue() -> None:
    """max_running 2 and queue_size 1: the fourth concurrent job raises QueueFull."""
    runner = make_runner(JobStore(ttl=60.0), job_duration=60.0, max_running=2, queue_size=1)
    jobs = [runner.submit("acme", None) for _ in range(3)]
    with pytest.raises(QueueFull) as refused:
        runner.submit("acme", None)
    assert refused.value.retry_after == 60
    await asyncio.sleep(0)
    assert runner.running == 2
    assert await runner.close(WAIT) == 3
    assert all(job.state is JobState.RUNNING for job in jobs)


async def test_runner_close_cancels_unfinished_jobs() -> None:
    """close() cancels every job still running and reports how many."""
    runner = make_runner(JobStore(ttl=60.0), job_duration=60.0)
    for _ in range(4):
        runner.submit("acme", None)
    assert await runner.close(WAIT) == 4
    assert runner.admitted == 0


async def test_durations_follow_the_configured_spread() -> None:
    """Seeded durations have about the configured mean and spread, and are never negative."""
    runner = make_runner(JobStore(ttl=60.0), job_duration=0.5, job_duration_spread=0.05, seed=1)
    durations = [runner.draw_duration() for _ in range(2000)]
    mean = sum(durations) / len(durations)
    spread = (sum((d - mean) ** 2 for d in durations) / len(durations)) ** 0.5
    assert abs(mean - 0.5) < 0.01
    assert abs(spread - 0.05) < 0.01
    clipped = make_runner(JobStore(ttl=60.0), job_duration=0.0, job_duration_spread=1.0, seed=1)
    assert min(clipped.draw_duration() for _ in range(200)) == 0.0
