"""The overdue watch: which due jobs are presumed lost and polled, and which are left alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from proxy.answers import json_answer
from proxy.config import Settings
from proxy.overdue import MIN_SLACK, RECHECK_INTERVAL, SILENCE_PROBES, OverdueWatch
from proxy.waiters import Waiter

INITIAL = 0.5


@pytest.fixture
async def watch() -> AsyncIterator[OverdueWatch]:
    never = httpx.MockTransport(lambda request: httpx.Response(200, json={"state": "running"}))
    async with httpx.AsyncClient(transport=never) as client:
        yield OverdueWatch(Settings(poll_initial=INITIAL), client)


def waiter(started_at: float, job_id: str = "abc", accepted_after: float = 0.001) -> Waiter:
    held = Waiter("r.t", job_id, started_at, started_at + accepted_after)
    held.future = asyncio.get_running_loop().create_future()  # where its answer lands
    return held


async def answer_of(held: Waiter) -> tuple[int, dict[str, object]]:
    """The status and JSON body the waiter was answered with."""
    assert held.future is not None
    async with asyncio.timeout(5):
        status, _, body = await held.future
    return status, orjson.loads(body)


def cleanup(*waiters: Waiter) -> None:
    for each in waiters:
        if each.poll is not None:
            each.poll.cancel()


async def test_nothing_is_polled_before_it_is_due(watch: OverdueWatch) -> None:
    """A job younger than its expected duration is not polled; the watch sleeps until due."""
    job = waiter(started_at=100.0)
    watch.track(job, deadline=200.0)
    assert watch.check(now=100.2) == pytest.approx(INITIAL - 0.2)
    assert job.poll is None


async def test_due_job_without_any_callbacks_is_polled(watch: OverdueWatch) -> None:
    """With no callback arriving at all, a due job is presumed lost and polled."""
    job = waiter(started_at=100.0)
    watch.track(job, deadline=200.0)
    watch.check(now=100.0 + INITIAL)
    assert job.poll is not None
    cleanup(job)


async def test_due_job_is_left_alone_while_callbacks_flow(watch: OverdueWatch) -> None:
    """Callbacks of older jobs still arriving: a due job waits for its own callback."""
    older, mine = waiter(started_at=99.0), waiter(started_at=100.0)
    now = 100.0 + INITIAL + 0.5
    watch.answered(older, now=now)
    watch.track(mine, deadline=200.0)
    assert watch.check(now=now) == RECHECK_INTERVAL
    assert mine.poll is None


async def test_overtaken_job_is_polled(watch: OverdueWatch) -> None:
    """A later job answered by callback while mine is due: mine is presumed lost."""
    mine, later = waiter(started_at=100.0), waiter(started_at=100.0 + 2 * MIN_SLACK)
    now = 100.0 + INITIAL + 0.01
    watch.track(mine, deadline=200.0)
    watch.answered(later, now=now)
    watch.check(now=now)
    assert mine.poll is not None
    cleanup(mine)


async def test_the_later_callbacks_come_the_more_slack_they_get(watch: OverdueWatch) -> None:
    """Half a second late, a job overtaken by one started 0.1 s after it is not yet lost."""
    mine, later = waiter(started_at=100.0), waiter(started_at=100.1)
    now = 100.0 + INITIAL + 0.5
    watch.track(mine, deadline=200.0)
    watch.answered(later, now=now)
    assert watch.check(now=now) == RECHECK_INTERVAL
    assert mine.poll is None


async def test_a_job_sent_before_ours_was_accepted_does_not_overtake(
    watch: OverdueWatch,
) -> None:
    """A job whose /start went out before the answer to ours came back may have started
    first on a busy job server: its callback does not make ours lost."""
    mine = waiter(started_at=100.0, accepted_after=0.3)
    other = waiter(started_at=100.2)
    now = 100.0 + INITIAL + 0.01
    watch.track(mine, deadline=200.0)
    watch.answered(other, now=now)
    assert watch.check(now=now) == RECHECK_INTERVAL
    assert mine.poll is None


async def test_only_the_oldest_due_jobs_are_examined(watch: OverdueWatch) -> None:
    """Answered waiters leave the queue; the first job not lost stops the scan."""
    done, lost, waiting = waiter(99.0), waiter(100.0), waiter(101.0)
    done.settle(json_answer(b'{"id":"x","state":"completed"}'), "callback", "completed")
    for each in (done, lost, waiting):
        watch.track(each, deadline=200.0)
    now = 101.0 + INITIAL - 0.1
    assert watch.check(now=now) == pytest.approx(0.1)
    assert lost.poll is not None
    assert waiting.poll is None
    cleanup(lost)


async def test_poll_answer_settles_the_waiter(watch: OverdueWatch) -> None:
    """The status poll's answer settles the waiter, marked as answered by a poll."""
    finished = {"id": "abc", "state": "completed", "proof": "A" * 40}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=finished))
    async with httpx.AsyncClient(transport=transport) as client:
        polling = OverdueWatch(Settings(poll_initial=INITIAL), client)
        job = waiter(started_at=0.0)
        polling.track(job, deadline=time.monotonic() + 5)
        polling.check(now=10.0)
        assert await answer_of(job) == (200, finished)
    assert job.answered_by == "poll"


async def test_silence_polls_only_a_few_jobs_at_once(watch: OverdueWatch) -> None:
    """Without callbacks, due jobs are swept SILENCE_PROBES at a time, not all at once."""
    jobs = [waiter(started_at=100.0 + n / 1000) for n in range(SILENCE_PROBES + 5)]
    for each in jobs:
        watch.track(each, deadline=200.0)
    assert watch.check(now=102.0) == RECHECK_INTERVAL
    polled = [each for each in jobs if each.poll is not None]
    assert polled == jobs[:SILENCE_PROBES]
    cleanup(*jobs)


async def test_a_job_the_job_server_forgot_is_answered_job_lost() -> None:
    """A due job whose status is 404 long after acceptance fails its waiter with JobLost."""
    forgot = httpx.MockTransport(lambda request: httpx.Response(404, json={"error": "not_found"}))
    async with httpx.AsyncClient(transport=forgot) as client:
        polling = OverdueWatch(Settings(poll_initial=INITIAL, poll_lost_grace=0.1), client)
        now = time.monotonic()
        job = waiter(started_at=now - 5.0)
        polling.track(job, deadline=now + 5)
        polling.check(now=now)
        status, body = await answer_of(job)
    assert (status, body["error"], body["job_id"]) == (502, "job_lost", "abc")


async def test_every_silent_job_is_probed_in_turn_when_the_job_server_forgot_them() -> None:
    """With no callbacks at all and a job server that forgot every job, all held jobs are
    answered JobLost, SILENCE_PROBES at a time, long before their deadline."""
    forgot = httpx.MockTransport(lambda request: httpx.Response(404, json={"error": "not_found"}))
    async with httpx.AsyncClient(transport=forgot) as client:
        polling = OverdueWatch(Settings(poll_initial=INITIAL, poll_lost_grace=0.1), client)
        now = time.monotonic()
        jobs = [waiter(started_at=now - 5.0 + n / 1000, job_id=f"j{n}") for n in range(200)]
        for each in jobs:
            polling.track(each, deadline=now + 60)
        watching = asyncio.create_task(polling.run())
        try:
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(*(answer_of(each) for each in jobs))
        finally:
            watching.cancel()
    assert all((status, body["error"]) == (502, "job_lost") for status, body in outcomes)
