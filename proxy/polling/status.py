"""Learned poll schedules and status polling of the job server.

The proxy normally answers a held request when the job server's callback arrives. If a
callback is presumed lost (``proxy.polling.overdue``), it polls ``GET {base_url}/status/{id}``
with capped exponential backoff and full jitter, and answers from whichever comes first.

The poller is usable on its own::

    from proxy.polling import PollSchedule, wait_for_job

    async with httpx.AsyncClient() as client:
        job = await wait_for_job(
            client, "http://127.0.0.1:8001", "3f2a...", deadline=time.monotonic() + 30,
            schedule=PollSchedule(first_delay=0.5),  # about the job's duration
        )
    print(job["state"])  # "completed" or "failed"
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from proxy.bodies import decode_json
from proxy.dialects.dialect import Dialect, UnreadableJob, load_dialect
from proxy.errors import JobLost, JobTimeout, UpstreamError, UpstreamTimedOut
from proxy.jobs import parse_retry_after
from proxy.upstream.client import job_server_errors

logger = logging.getLogger(__name__)


@functools.cache
def work_sample() -> Dialect:
    """The dialect polled when none is given: the work sample's ``/status/{id}``."""
    return load_dialect("work-sample")


# Jitter needs no state of its own per poll: a Random() is 2.5 KB.
_JITTER = random.Random()
# A hung connection should not eat the whole budget; later polls get a fresh chance.
MAX_POLL_TIMEOUT = 10.0


@dataclass(frozen=True)
class PollSchedule:
    """When to poll: first after ``first_delay`` seconds, then with jittered backoff.

    The n-th delay (n = 0, 1, ...) is uniform(0, min(cap, base·factor^n)): capped
    exponential backoff with full jitter.
    """

    first_delay: float = 0.0
    base: float = 0.05
    cap: float = 2.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        for name in ("first_delay", "base", "cap", "factor"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"PollSchedule.{name} must be a finite number >= 0, got {value!r}")
        # A zero backoff would turn polling into a busy loop against the job server.
        if self.base == 0 or self.cap == 0 or self.factor < 1:
            raise ValueError(f"PollSchedule needs base > 0, cap > 0 and factor >= 1: {self!r}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Yield the successive delays between polls, forever."""
        rng = _JITTER if rng is None else rng
        ceiling = min(self.cap, self.base)
        while True:
            yield rng.uniform(0.0, ceiling)
            # Grow a running ceiling instead of computing factor**n, which overflows.
            ceiling = min(self.cap, ceiling * self.factor)


@dataclass(frozen=True)
class LostJob:
    """When a polled job counts as lost (:class:`JobLost`) rather than polled to the deadline:
    only on evidence, never on a few failures in a row (a flaky status endpoint fails
    so by chance).

    ``known_since`` is when (on the poller's clock) the job server acknowledged the job:
    a ``404`` more than ``grace`` seconds later means it no longer knows the job. Failed
    polls (no answer, a 5xx other than 503, a malformed answer; never a 404 or a 429/503
    that asks to come back later) with no usable answer between them for ``after``
    seconds mean it cannot be asked about the job; a 404 within the grace or a busy
    answer is the job server answering, and ends such a run.
    """

    known_since: float
    grace: float = 1.0
    after: float = 10.0


class _Failure(NamedTuple):
    reason: str
    #: ``jobproxy_upstream_errors_total``'s kind for a failure to ask the job server.
    kind: str = "status_error"
    retry_after: float = 0.0
    not_found: bool = False  # a 404 early on is normal: the job may not be visible yet
    busy: bool = False  # 429/503: the job server asks to come back later


def status_url(base_url: str, job_id: str, dialect: Dialect | None = None) -> str:
    """The job server's status URL for ``job_id`` (quoted) under ``base_url``: the
    dialect's status path, the work sample's ``/status/{id}`` by default."""
    return base_url.rstrip("/") + (dialect or work_sample()).status_of(job_id)


async def wait_for_job(
    client: httpx.AsyncClient,
    base_url: str,
    job_id: str,
    *,
    deadline: float,
    schedule: PollSchedule | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    lost: LostJob | None = None,
    poll_timeout: float = MAX_POLL_TIMEOUT,
    slots: asyncio.Semaphore | None = None,
    dialect: Dialect | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Poll the job's status until it has ended, and return that answer: the work
    sample's job (completed or failed), or the job of ``dialect``.

    ``deadline`` is an absolute time on ``clock``; ``schedule.first_delay`` counts from
    this call. Transport errors, timeouts, 404, 5xx and malformed answers are logged and
    polling goes on; ``Retry-After`` on 429/503 is honoured. With ``lost``, a job the
    job server no longer knows, or cannot be asked about, raises ``JobLost`` instead
    (see :class:`LostJob`). ``on_update`` sees every well-formed answer, running or final
    (its exceptions propagate). Each poll waits at most ``poll_timeout`` for its answer;
    with ``slots``, each holds one of them while it is under way (so that many jobs polled
    at once send only so many requests at a time). ``on_failure`` is told the kind of
    each poll that failed to get an answer (``status_unreachable``, ``status_timeout``,
    ``status_error``, ``status_bad_response``; not a 404, a busy answer or a poll the
    deadline cut short). Raises ``JobTimeout`` when the deadline passes; never sleeps
    past it.
    """
    if not job_id:
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    if not base_url:
        raise ValueError("base_url must not be empty")
    schedule = schedule or PollSchedule()
    dialect = dialect or work_sample()
    url = status_url(base_url, job_id, dialect)
    delays = schedule.delays(rng)
    polls = 0
    streak = FailureStreak(on_failure=on_failure)
    last_answer = "none yet"

    def time_left() -> float:
        left = deadline - clock()
        if left <= 0:
            raise JobTimeout(
                f"Job {job_id!r} did not finish before the deadline "
                f"({polls} status polls; last answer: {last_answer})."
            )
        return left

    pause = schedule.first_delay
    while True:
        if pause > 0:
            await sleep(min(pause, time_left()))
        if slots is None:
            outcome = await _poll_once(client, url, job_id, dialect, min(time_left(), poll_timeout))
        else:
            async with slots:
                budget = min(time_left(), poll_timeout)
                outcome = await _poll_once(client, url, job_id, dialect, budget)
        polls += 1
        if isinstance(outcome, _Failure):
            time_left()  # a poll the deadline cut short is no failure of the job server's
            # A 404 or a busy answer is the job server answering: not a failure to ask it.
            counted = not (outcome.not_found or outcome.busy)
            if counted:
                streak.failed(clock(), outcome.kind)
            else:
                streak.end()
            last_answer = outcome.reason
            if lost is not None:
                _check_lost(lost, outcome, streak, job_id, clock())
            quiet = not counted or streak.count > 1
            level = logging.DEBUG if quiet else logging.WARNING
            logger.log(level, "status poll %d of job %s failed: %s", polls, job_id, last_answer)
            pause = max(next(delays), outcome.retry_after)
            continue
        streak.end()
        state = dialect.state(outcome)
        last_answer = f"state {state}"
        if on_update is not None:
            on_update(outcome)
        if state in dialect.final:
            logger.debug("job %s is %s after %d status polls", job_id, state, polls)
            return outcome
        pause = next(delays)


@dataclass(slots=True)
class FailureStreak:
    """Failed polls with no usable answer between them, and since when; each failure is
    told to ``on_failure`` by its kind."""

    count: int = 0
    since: float = 0.0
    on_failure: Callable[[str], None] | None = None

    def failed(self, now: float, kind: str) -> None:
        if not self.count:
            self.since = now
        self.count += 1
        if self.on_failure is not None:
            self.on_failure(kind)

    def end(self) -> None:
        """A usable answer, or the job server answering: the streak is over."""
        self.count = 0


def _check_lost(
    lost: LostJob, failure: _Failure, streak: FailureStreak, job_id: str, now: float
) -> None:
    if failure.not_found and now - lost.known_since > lost.grace:
        raise JobLost(
            f"job {job_id} is lost: the job server no longer knows it "
            f"(404 {now - lost.known_since:.1f} s after accepting it)",
            job_id=job_id,
        )
    if streak.count and now - streak.since >= lost.after:
        raise JobLost(
            f"job {job_id} is lost: no usable status answer for {now - streak.since:.1f} s "
            f"({streak.count} attempts; last: {failure.reason})",
            job_id=job_id,
        )


async def _poll_once(
    client: httpx.AsyncClient, url: str, job_id: str, dialect: Dialect, budget: float
) -> dict[str, Any] | _Failure:
    try:
        # httpx timeouts bound each network step; asyncio.timeout bounds the whole request.
        async with asyncio.timeout(budget):
            with job_server_errors(httpx.URL(url)):
                response = await client.get(url, timeout=httpx.Timeout(budget))
    except TimeoutError:
        return _Failure(f"no answer within {budget:.2f} s", "status_timeout")
    except UpstreamError as exc:
        timed_out = isinstance(exc, UpstreamTimedOut)
        return _Failure(str(exc.detail), "status_timeout" if timed_out else "status_unreachable")
    return _read_answer(response, job_id, dialect)


def _read_answer(
    response: httpx.Response, job_id: str, dialect: Dialect
) -> dict[str, Any] | _Failure:
    status = response.status_code
    if status in (429, 503):
        return _Failure(f"HTTP {status}", retry_after=retry_after_seconds(response), busy=True)
    if status == 404:
        return _Failure("HTTP 404", not_found=True)
    if not response.is_success:
        return _Failure(f"HTTP {status}")
    try:
        job = decode_json(response.content)
        named, _ = dialect.read(job)
    except ValueError as exc:  # not JSON, or UnreadableJob
        why = f"not a job: {exc}" if isinstance(exc, UnreadableJob) else "not JSON"
        return _Failure(f"a status answer that is {why}", "status_bad_response")
    # The answer must name the job asked about: any other is no answer about it.
    if named != job_id:
        return _Failure(f"a status answer of another job ({named})", "status_bad_response")
    answer: dict[str, Any] = job
    return answer


def retry_after_seconds(response: httpx.Response) -> float:
    """Seconds a response's ``Retry-After`` header asks for; 0.0 when absent or unusable."""
    return parse_retry_after(response.headers.get("Retry-After"))
