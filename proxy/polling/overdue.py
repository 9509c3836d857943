"""Deciding when a callback is lost, so that the job's status is polled instead.

A job's callback is judged by how late callbacks are, never by the order they come in:
a job server may finish jobs, or send their callbacks, in any order and in bursts.
Each callback that answers a held request tells how late it came: the time from its
``/start`` to its arrival. Two measures are kept of that *lateness*:

* the **expected** lateness, learned over the recent callbacks (an exponentially
  weighted mean + ``poll_k`` deviations; ``poll_initial`` before there are any), and
* the **peak**: the latest callback that arrived in the last ``PEAK_WINDOW`` seconds.

A job is *presumed lost* once it is later than ``LATE_FACTOR`` times the larger of the
two, plus ``MIN_SLACK``. Under a burst, callbacks come late, and the later they come
the later the peak: a job is only polled once it is half again as late as callbacks
that do still arrive, so a busy job server is not sent a poll per job on top of its
work. On a quiet job server a lost callback is polled for about half a job's duration
after it was due. With every callback lost, the peak is empty and the expected lateness
alone decides.

Should a callback still come for a job that a poll already answered, that poll came too
soon: the factor doubles (up to ``MAX_BACKOFF``), and halves back every
``BACKOFF_HALF_LIFE`` seconds after.

Presumed-lost jobs are polled (``proxy.polling.status.wait_for_job``), at most
``poll_max_in_flight`` status requests at a time over all jobs (a slow job server thus
gets fewer polls a second), and the poll's answer settles the waiter just as a callback
would. A job the job server no longer knows (a ``404`` more than ``poll_lost_grace`` after
it accepted the job) or cannot be asked about (no usable answer for ``poll_lost_after``
seconds) is answered ``JobLost``.

Waiters are watched in the order their jobs started, so one task checks only the
oldest ones: every job is held to the same lateness, and if the oldest is not presumed
lost, no younger one is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

import httpx

from proxy.answers import encode, json_answer
from proxy.config import Settings
from proxy.dialects.dialect import Dialect
from proxy.errors import JobLost, JobTimeout
from proxy.jobs import Job
from proxy.polling.status import LostJob, PollSchedule, wait_for_job
from proxy.waiting.deliveries import AnsweredBy
from proxy.waiting.waiters import Waiter

logger = logging.getLogger(__name__)

LATE_FACTOR = 1.5  # a job is presumed lost this many times as late as callbacks are
MIN_SLACK = 0.05  # seconds added, for the jitter of a busy event loop
PEAK_WINDOW = 5.0  # seconds over which the latest callbacks' lateness is remembered
PEAK_BUCKET = 0.5  # seconds per remembered peak; also the longest sleep while watching
EWMA_WEIGHT = 1 / 32  # of each new callback in the expected lateness
MIN_SAMPLES = 2  # callbacks seen before the expected lateness replaces poll_initial
MAX_BACKOFF = 16.0
BACKOFF_HALF_LIFE = 10.0  # seconds


class Lateness:
    """How late callbacks come: an exponentially weighted mean and deviation of the
    recent ones, and the peak of those that arrived in the last ``PEAK_WINDOW``."""

    __slots__ = ("_mean", "_peaks", "_variance", "count")

    def __init__(self) -> None:
        self.count = 0
        self._mean = 0.0
        self._variance = 0.0
        self._peaks: collections.deque[list[float]] = collections.deque()  # [bucket, peak]

    def add(self, seconds: float, now: float) -> None:
        """Record one callback that came ``seconds`` after its job's ``/start`` was sent."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        self.count += 1
        if self.count == 1:
            self._mean = seconds
        else:
            delta = seconds - self._mean
            self._mean += EWMA_WEIGHT * delta
            self._variance = (1 - EWMA_WEIGHT) * (self._variance + EWMA_WEIGHT * delta * delta)
        bucket = now - now % PEAK_BUCKET
        peaks = self._peaks
        if peaks and peaks[-1][0] == bucket:
            peaks[-1][1] = max(peaks[-1][1], seconds)
        else:
            peaks.append([bucket, seconds])

    def expected(self, k: float, initial: float) -> float:
        """``initial`` until ``MIN_SAMPLES`` callbacks, then mean + k·deviation."""
        if self.count < MIN_SAMPLES:
            return initial
        return self._mean + k * math.sqrt(self._variance)

    def peak(self, now: float) -> float:
        """The latest callback of the last ``PEAK_WINDOW`` seconds; 0.0 when none came."""
        peaks = self._peaks
        while peaks and peaks[0][0] <= now - PEAK_WINDOW:
            peaks.popleft()
        return max((peak for _, peak in peaks), default=0.0)


class OverdueWatch:
    """Starts a status poll for each held job whose callback is presumed lost."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        dialect: Dialect,
        on_poll_failure: Callable[[str], None] | None = None,
    ) -> None:
        """``on_poll_failure`` is told the kind of each status poll that got no answer."""
        self._dialect = dialect
        self._on_poll_failure = on_poll_failure
        self.lateness = Lateness()
        self._settings = settings
        self._client = client
        self._base_url = settings.upstream_url.rstrip("/")
        self._queue: collections.deque[tuple[Waiter, float]] = collections.deque()
        self._wake = asyncio.Event()
        self._polls = asyncio.Semaphore(settings.poll_max_in_flight)
        self._backoff = 1.0
        self._backoff_since = -math.inf

    def expected(self) -> float:
        """How late a callback is expected to be, at most, from what was measured."""
        return self.lateness.expected(self._settings.poll_k, self._settings.poll_initial)

    def backoff(self, now: float) -> float:
        """The factor by which polls too soon have pushed the lost-callback bound out."""
        halvings = (now - self._backoff_since) / BACKOFF_HALF_LIFE
        return max(1.0, self._backoff / math.exp2(halvings))

    def lost_after(self, now: float) -> float:
        """Seconds after its ``/start`` from which a job without a callback is presumed lost."""
        late = max(self.expected(), self.lateness.peak(now))
        return LATE_FACTOR * self.backoff(now) * late + MIN_SLACK

    def track(self, waiter: Waiter, deadline: float) -> None:
        """Watch a waiter whose job the job server accepted, in the order of acceptance."""
        self._queue.append((waiter, deadline))
        if len(self._queue) == 1:
            self._wake.set()

    def answered(self, waiter: Waiter, now: float) -> None:
        """A callback answered ``waiter``: learn how late it came."""
        self.lateness.add(now - waiter.started_at, now)

    def polled_too_soon(self, now: float | None = None) -> None:
        """A callback came for a job that a poll had answered: wait longer from now on."""
        now = time.monotonic() if now is None else now
        self._backoff = min(MAX_BACKOFF, 2 * self.backoff(now))
        self._backoff_since = now
        logger.info(
            "a callback came for a job already answered by a status poll: jobs are now "
            "presumed lost %.0f times later than before",
            self._backoff,
        )

    async def run(self) -> None:
        """Check the oldest waiters until cancelled."""
        while True:
            pause = self.check(time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    def check(self, now: float) -> float | None:
        """Start polls for presumed-lost waiters; return how long to sleep (None: until woken)."""
        lost_after: float | None = None  # the same for every job at this instant
        while self._queue:
            waiter, deadline = self._queue[0]
            if waiter.settled or waiter.released:  # answered, or its client has gone
                self._queue.popleft()
                continue
            if lost_after is None:
                lost_after = self.lost_after(now)
            lost_at = waiter.started_at + lost_after
            if now < lost_at:
                # The bound moves as callbacks come and peaks are forgotten: look again soon.
                return min(lost_at - now, PEAK_BUCKET)
            self._queue.popleft()
            logger.debug(
                "job %s presumed lost: no callback %.3f s after its start (bound %.3f s)",
                waiter.job_id,
                now - waiter.started_at,
                lost_after,
            )
            if waiter.tracked is not None:
                waiter.tracked.emit("polling", {"ref": waiter.tracked.ref, "id": waiter.job_id})
            waiter.poll = asyncio.create_task(self._settle_by_poll(waiter, deadline))
        return None

    def poll(
        self, job_id: str, deadline: float, *, known_since: float, first_delay: float = 0.0
    ) -> Awaitable[Job]:
        """Poll the job's status on the configured schedule until it ends or ``deadline``;
        ``known_since`` is when the job server acknowledged the job (see ``LostJob``)."""
        settings = self._settings
        schedule = PollSchedule(
            first_delay=first_delay, base=settings.poll_backoff_base, cap=settings.poll_backoff_cap
        )
        lost = LostJob(known_since, settings.poll_lost_grace, settings.poll_lost_after)
        return wait_for_job(
            self._client,
            self._base_url,
            job_id,
            deadline=deadline,
            schedule=schedule,
            lost=lost,
            poll_timeout=settings.poll_timeout,
            slots=self._polls,
            dialect=self._dialect,
            on_failure=self._on_poll_failure,
        )

    async def _settle_by_poll(self, waiter: Waiter, deadline: float) -> None:
        assert waiter.job_id is not None
        try:
            job = await self.poll(waiter.job_id, deadline, known_since=waiter.accepted_at)
        except JobTimeout:
            return  # the held request answers 504 at the same deadline
        except JobLost as lost:
            if waiter.fail(lost, AnsweredBy.LOST):
                logger.warning("%s", lost.detail)
                await waiter.respond()
            return
        state = str(self._dialect.state(job))
        if waiter.settle(json_answer(encode(job)), AnsweredBy.POLL, state):
            logger.debug("job %s answered by a status poll: its callback is late", waiter.job_id)
            await waiter.respond()
