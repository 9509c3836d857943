"""The overdue watch: which jobs are presumed lost and polled, and which are left alone."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from proxy.answers import json_answer
from proxy.config import Settings
from proxy.dialects.dialect import load_dialect
from proxy.polling.overdue import (
    LATE_FACTOR,
    MIN_SLACK,
    PEAK_BUCKET,
    PEAK_WINDOW,
    Lateness,
    OverdueWatch,
)
from proxy.waiting.deliveries import AnsweredBy
from proxy.waiting.waiters import Waiter
from tests.conftest import eventually

INITIAL = 0.5
WORK_SAMPLE = load_dialect("work-sample")


@pytest.fixture
async def watch() -> AsyncIterator[OverdueWatch]:
    never = httpx.MockTransport(lambda request: httpx.Response(200, json={"state": "running"}))
    async with httpx.AsyncClient(transport=never) as client:
        yield OverdueWatch(Settings(poll_initial=INITIAL), client, WORK_SAMPLE)


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


def test_lateness_expects_initial_until_two_callbacks_then_mean_plus_k_deviations() -> None:
    """Before two callbacks the expected lateness is the initial guess; then it is learned."""
    lateness = Lateness()
    lateness.add(0.5, now=1.0)
    assert lateness.expected(k=2.0, initial=0.9) == 0.9
    lateness.add(0.5, now=1.0)
    assert lateness.expected(k=2.0, initial=0.9) == pytest.approx(0.5)
    lateness.add(1.5, now=1.0)
    assert lateness.expected(k=2.0, initial=0.9) > lateness.expected(k=0.0, initial=0.9) > 0.5


def test_lateness_follows_the_recent_callbacks() -> None:
    """Callbacks that have become twice as late move the expected lateness to them."""
    lateness = Lateness()
    for _ in range(100):
        lateness.add(0.5, now=1.0)
    for _ in range(300):
        lateness.add(1.0, now=1.0)
    assert lateness.expected(k=0.0, initial=0.0) == pytest.approx(1.0, abs=0.01)


def test_negative_and_non_finite_lateness_is_ignored() -> None:
    """Nonsense samples leave the measure as it was."""
    lateness = Lateness()
    for bad in (-1.0, float("nan"), float("inf")):
        lateness.add(bad, now=1.0)
    assert lateness.count == 0
    assert lateness.peak(now=1.0) == 0.0


def test_the_peak_is_the_latest_callback_of_the_window_and_is_forgotten() -> None:
    """The peak is the latest of the recent callbacks; after the window it is gone."""
    lateness = Lateness()
    lateness.add(3.0, now=100.0)
    lateness.add(1.0, now=100.0 + PEAK_BUCKET)
    assert lateness.peak(now=100.0 + PEAK_BUCKET) == 3.0
    assert lateness.peak(now=100.0 + PEAK_WINDOW + PEAK_BUCKET / 2) == 1.0
    assert lateness.peak(now=100.0 + 2 * PEAK_WINDOW) == 0.0


async def test_nothing_is_polled_before_it_is_overdue(watch: OverdueWatch) -> None:
    """A job younger than the lost-callback bound is not polled; the watch looks again."""
    job = waiter(started_at=100.0)
    watch.track(job, deadline=200.0)
    assert watch.check(now=100.2) == PEAK_BUCKET
    assert job.poll is None


async def test_without_callbacks_a_job_is_polled_once_late_by_half_again_the_expected(
    watch: OverdueWatch,
) -> None:
    """With no callback measured, a job is presumed lost past LATE_FACTOR times the
    initial expectation, and not before."""
    job = waiter(started_at=100.0)
    watch.track(job, deadline=200.0)
    bound = LATE_FACTOR * INITIAL + MIN_SLACK
    watch.check(now=100.0 + bound - 0.01)
    assert job.poll is None
    watch.check(now=100.0 + bound)
    assert job.poll is not None
    cleanup(job)


async def test_a_job_as_late_as_callbacks_now_arriving_is_left_alone(
    watch: OverdueWatch,
) -> None:
    """Callbacks arriving 3 s late (a busy job server): a job 3.5 s old is not polled."""
    now = 200.0
    for _ in range(10):
        watch.lateness.add(3.0, now=now)
    job = waiter(started_at=now - 3.5)
    watch.track(job, deadline=300.0)
    watch.check(now=now)
    assert job.poll is None


async def test_order_of_callbacks_does_not_matter(watch: OverdueWatch) -> None:
    """Jobs started later being answered first says nothing: only lateness counts."""
    now = 100.0 + INITIAL + 0.1
    mine = waiter(started_at=100.0)
    watch.track(mine, deadline=200.0)
    for n in range(20):
        watch.answered(waiter(started_at=100.05 + n / 100), now=now)
    watch.check(now=now)
    assert mine.poll is None


async def test_a_lost_callback_on_a_quiet_job_server_is_polled_soon_after_its_peers(
    watch: OverdueWatch,
) -> None:
    """Its peers called back after 0.5 s; the job without one is polled before 1 s."""
    now = 100.5
    for n in range(20):
        watch.answered(waiter(started_at=100.0 + n / 1000), now=now + n / 1000)
    mine = waiter(started_at=100.0)
    watch.track(mine, deadline=200.0)
    watch.check(now=100.0 + LATE_FACTOR * 0.52 + MIN_SLACK)
    assert mine.poll is not None
    cleanup(mine)


async def test_a_poll_that_came_too_soon_pushes_the_bound_out_then_it_decays(
    watch: OverdueWatch,
) -> None:
    """A callback for a job a poll had answered doubles the bound; it halves back later."""
    now = 50.0
    before = watch.lost_after(now)
    watch.polled_too_soon(now)
    assert watch.lost_after(now) == pytest.approx(2 * (before - MIN_SLACK) + MIN_SLACK)
    assert watch.lost_after(now + 1_000) == pytest.approx(before)


async def test_only_the_oldest_jobs_are_examined(watch: OverdueWatch) -> None:
    """Answered waiters leave the queue; the first job not overdue stops the scan."""
    done, lost, waiting = waiter(99.0), waiter(100.0), waiter(101.0)
    done.settle(json_answer(b'{"id":"x","state":"completed"}'), AnsweredBy.CALLBACK, "completed")
    for each in (done, lost, waiting):
        watch.track(each, deadline=200.0)
    bound = LATE_FACTOR * INITIAL + MIN_SLACK
    watch.check(now=100.0 + bound + 0.1)
    assert lost.poll is not None
    assert waiting.poll is None
    cleanup(lost)


async def test_poll_answer_settles_the_waiter(watch: OverdueWatch) -> None:
    """The status poll's answer settles the waiter, marked as answered by a poll."""
    finished = {"id": "abc", "state": "completed", "proof": "A" * 40}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=finished))
    async with httpx.AsyncClient(transport=transport) as client:
        polling = OverdueWatch(Settings(poll_initial=INITIAL), client, WORK_SAMPLE)
        job = waiter(started_at=0.0)
        polling.track(job, deadline=time.monotonic() + 5)
        polling.check(now=10.0)
        assert await answer_of(job) == (200, finished)
    assert job.answered_by == "poll"


async def test_polls_in_flight_are_bounded_over_all_jobs() -> None:
    """However many jobs are presumed lost at once, at most poll_max_in_flight status
    requests are under way at a time."""
    in_flight = peak = 0
    release = asyncio.Event()

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await release.wait()
            in_flight -= 1
            job_id = request.url.path.rsplit("/", 1)[-1]
            return httpx.Response(200, json={"id": job_id, "state": "completed"})

    async with httpx.AsyncClient(transport=Slow()) as client:
        polling = OverdueWatch(
            Settings(poll_initial=INITIAL, poll_max_in_flight=4), client, WORK_SAMPLE
        )
        now = time.monotonic()
        jobs = [waiter(started_at=now - 5.0, job_id=f"j{n}") for n in range(20)]
        for each in jobs:
            polling.track(each, deadline=now + 30)
        polling.check(now=now)
        await eventually(lambda: in_flight == 4)
        release.set()
        outcomes = await asyncio.gather(*(answer_of(each) for each in jobs))
    assert peak == 4
    assert all(status == 200 for status, _ in outcomes)


async def test_a_job_the_job_server_forgot_is_answered_job_lost() -> None:
    """A job whose status is 404 long after acceptance fails its waiter with JobLost."""
    forgot = httpx.MockTransport(lambda request: httpx.Response(404, json={"error": "not_found"}))
    async with httpx.AsyncClient(transport=forgot) as client:
        polling = OverdueWatch(
            Settings(poll_initial=INITIAL, poll_lost_grace=0.1), client, WORK_SAMPLE
        )
        now = time.monotonic()
        job = waiter(started_at=now - 5.0)
        polling.track(job, deadline=now + 5)
        polling.check(now=now)
        status, body = await answer_of(job)
    assert (status, body["error"], body["job_id"]) == (502, "job_lost", "abc")
    assert job.answered_by is AnsweredBy.LOST


async def test_every_job_is_probed_when_the_job_server_forgot_them_all() -> None:
    """With no callbacks at all and a job server that forgot every job, all held jobs are
    answered JobLost long before their deadline."""
    forgot = httpx.MockTransport(lambda request: httpx.Response(404, json={"error": "not_found"}))
    async with httpx.AsyncClient(transport=forgot) as client:
        polling = OverdueWatch(
            Settings(poll_initial=INITIAL, poll_lost_grace=0.1), client, WORK_SAMPLE
        )
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


@pytest.mark.parametrize("shuffled", [False, True], ids=["in-order", "out-of-order"])
@pytest.mark.parametrize("jobs", [2_000, 10_000])
async def test_a_backlog_of_callbacks_none_lost_presumes_under_1_percent_lost(
    watch: OverdueWatch, jobs: int, shuffled: bool
) -> None:
    """A job server that starts 2,500 jobs a second but sends only 2,000 callbacks a
    second, in start order or at random from its backlog: with no callback lost, the
    watch presumes fewer than 1 % of the jobs lost."""
    rng = random.Random(7)
    waiters = [waiter(started_at=n / 2_500, job_id=f"j{n}") for n in range(jobs)]
    pending: list[Waiter] = []
    finished = 0
    now = 0.0
    for tick in range(1, 100_000):
        now = tick / 1_000
        while finished < jobs and waiters[finished].started_at + 0.5 <= now:
            watch.track(waiters[finished], deadline=1_000.0)
            pending.append(waiters[finished])
            finished += 1
        for _ in range(2):  # two callbacks a millisecond
            if pending:
                if shuffled:
                    index = rng.randrange(len(pending))
                    pending[index], pending[-1] = pending[-1], pending[index]
                called_back = pending.pop() if shuffled else pending.pop(0)
                if called_back.settle(json_answer(b"{}"), AnsweredBy.CALLBACK, "completed"):
                    watch.answered(called_back, now)
                else:
                    watch.polled_too_soon(now)
        watch.check(now)
        if finished == jobs and not pending:
            break
    polled = [each for each in waiters if each.poll is not None]
    cleanup(*waiters)
    assert len(polled) < jobs / 100


async def test_a_job_whose_client_left_is_never_polled(watch: OverdueWatch) -> None:
    """A waiter released because its client went away is dropped, not polled."""
    gone = waiter(started_at=100.0)
    watch.track(gone, deadline=200.0)
    gone.release()
    assert watch.check(now=150.0) is None
    assert gone.poll is None
