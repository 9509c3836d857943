"""Deciding when a callback is lost, so that the job's status is polled instead.

A job is *due* once it has run for its expected duration (``mean + k·stddev`` of observed
durations, ``poll_initial`` before there are any). A due job without a callback is only
*presumed lost* when the callbacks tell so:

* **overtaken**: a job that surely started later, by more than a *slack*, has already
  been answered by its callback (its /start was sent after the answer to ours was
  read: on a busy job server the moment a job starts is only known within that
  window), or
* **silence**: no callback at all has arrived for longer than the slack and half the
  expected duration (a busy event loop pauses for a moment without anything being
  lost), as when every callback is lost or the job is the only one.

The slack is the larger of ``k·stddev`` (jobs that start this close may finish in either
order), ``MIN_SLACK`` and half of how late the oldest due job already is: under load
callbacks arrive late, and the later they are the more they are reordered on the way.
So a busy job server is not handed a status poll per job on top of its work, while a
lost callback on a quiet one is polled for right after it is due. Silence is weaker
evidence (a busy proxy or job server also falls silent for a moment), so at most
``SILENCE_PROBES`` polls it started run at once: the oldest due jobs are swept that
many at a time, and the sweep stops as soon as callbacks flow again.

Presumed-lost jobs are polled (``proxy.polling.wait_for_job``) and the poll's answer
settles the waiter just as a callback would. A job the job server no longer knows (a
``404`` more than ``poll_lost_grace`` after it accepted the job) or cannot be asked
about (``poll_max_failures`` failed polls in a row) is answered ``JobLost`` at once, so
a probe of a lost job ends within a status round trip or a few backoffs, and when every
callback stops, N held jobs are all probed within about N / ``SILENCE_PROBES`` of those.

Waiters are watched in the order their jobs started, so one task checks only the
oldest ones: if the oldest due job is not presumed lost, no younger one is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable

import httpx

from proxy.answers import encode, json_answer
from proxy.config import Settings
from proxy.errors import JobLost, JobTimeout
from proxy.jobs import Job
from proxy.polling import DurationStats, LostJob, PollSchedule, wait_for_job
from proxy.waiters import AnsweredBy, Waiter

logger = logging.getLogger(__name__)

MIN_SLACK = 0.02  # seconds: callback delivery reorders jobs that start this close
LATENESS_SHARE = 0.5  # of the oldest due job's lateness, added to the slack
SILENCE_SHARE = 0.5  # of the expected duration without any callback: all are lost
SILENCE_PROBES = 32
RECHECK_INTERVAL = 0.05  # how often a due-but-not-lost head is looked at again


class OverdueWatch:
    """Starts a status poll for each held job whose callback is presumed lost."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.stats = DurationStats()
        self._settings = settings
        self._client = client
        self._base_url = settings.upstream_url.rstrip("/")
        self._queue: collections.deque[tuple[Waiter, float]] = collections.deque()
        self._wake = asyncio.Event()
        self._newest_answered = -math.inf  # /start sent time of the newest job called back
        self._last_callback = -math.inf
        self._probes = 0  # polls under way that silence started

    def expected(self) -> float:
        return self.stats.expected(self._settings.poll_k, self._settings.poll_initial)

    def slack(self, lateness: float) -> float:
        spread = self._settings.poll_k * self.stats.stddev
        return max(MIN_SLACK, spread, LATENESS_SHARE * lateness)

    def track(self, waiter: Waiter, deadline: float) -> None:
        """Watch a waiter whose job the job server accepted, in the order of acceptance."""
        self._queue.append((waiter, deadline))
        if len(self._queue) == 1:
            self._wake.set()

    def answered(self, waiter: Waiter, now: float) -> None:
        """A callback answered ``waiter``: learn its duration and the callbacks' progress."""
        self.stats.add(now - waiter.started_at)
        self._newest_answered = max(self._newest_answered, waiter.started_at)
        self._last_callback = now

    async def run(self) -> None:
        """Check the oldest due waiters until cancelled."""
        while True:
            pause = self.check(time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    def check(self, now: float) -> float | None:
        """Start polls for presumed-lost waiters; return how long to sleep (None: until woken)."""
        expected = self.expected()
        slack: float | None = None  # fixed by the oldest due job, so the scan stays monotonic
        while self._queue:
            waiter, deadline = self._queue[0]
            if waiter.settled:
                self._queue.popleft()
                continue
            due = waiter.started_at + expected
            if now < due:
                return due - now
            slack = self.slack(now - due) if slack is None else slack
            overtaken = self._newest_answered > waiter.accepted_at + slack
            silent = now - self._last_callback > max(slack, SILENCE_SHARE * expected)
            if not overtaken and (not silent or self._probes >= SILENCE_PROBES):
                return RECHECK_INTERVAL
            self._queue.popleft()
            logger.debug(
                "job %s presumed lost: %.3f s late, %s (slack %.3f s)",
                waiter.job_id,
                now - due,
                "overtaken" if overtaken else "no callbacks",
                slack,
            )
            waiter.poll = asyncio.create_task(self._settle_by_poll(waiter, deadline))
            if not overtaken:
                self._probes += 1
                waiter.poll.add_done_callback(self._probe_done)
        return None

    def _probe_done(self, _: asyncio.Task[None]) -> None:
        self._probes -= 1
        self._wake.set()

    def poll(
        self, job_id: str, deadline: float, *, known_since: float, first_delay: float = 0.0
    ) -> Awaitable[Job]:
        """Poll the job's status on the configured schedule until it ends or ``deadline``;
        ``known_since`` is when the job server acknowledged the job (see ``LostJob``)."""
        settings = self._settings
        schedule = PollSchedule(
            first_delay=first_delay, base=settings.poll_backoff_base, cap=settings.poll_backoff_cap
        )
        lost = LostJob(known_since, settings.poll_lost_grace, settings.poll_max_failures)
        return wait_for_job(
            self._client,
            self._base_url,
            job_id,
            deadline=deadline,
            schedule=schedule,
            lost=lost,
            poll_timeout=settings.poll_timeout,
        )

    async def _settle_by_poll(self, waiter: Waiter, deadline: float) -> None:
        assert waiter.job_id is not None
        try:
            job = await self.poll(waiter.job_id, deadline, known_since=waiter.accepted_at)
        except JobTimeout:
            return  # the held request answers 504 at the same deadline
        except JobLost as lost:
            if waiter.fail(lost, AnsweredBy.POLL):
                logger.warning("%s", lost.detail)
                await waiter.respond()
            return
        if waiter.settle(json_answer(encode(job)), AnsweredBy.POLL, str(job["state"])):
            logger.debug("job %s answered by a status poll: its callback is lost", waiter.job_id)
            await waiter.respond()
