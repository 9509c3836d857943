"""Idempotency-Key: a client's retry gets its first request's job, never a second job.

A request carrying ``Idempotency-Key`` *claims* the key (scoped to its account) for its
callback token, and its job's ref when it is tracked. A retry with the same key and the
same body finds the claim and follows that job: it returns the stored result at once
when there is one, else waits for it (and polls the job server once the job id is
known), or reads the job by its ref as the first request could. The same key with
another body is a 422.

The held request (``proxy.holding.held``) runs a keyed job as any other, and tells
:class:`KeyedRequests` what happens: the claim is released when no job can exist, the
job's id is bound to it once accepted, its result is stored when decided. A keyed
request whose client leaves once its start is under way is not withdrawn: its job goes
on, so that its result is there for the retry. A request without a key does no
idempotency work at all. :class:`LocalResults` keeps claims and results in this process;
``proxy.shared.bus`` keeps them in Redis so a retry may land on any replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.answers import Answer, encode, json_answer
from proxy.bodies import decode_json
from proxy.config import Settings
from proxy.dialects.dialect import Dialect, JobRequest
from proxy.errors import (
    BadRequest,
    BusUnavailable,
    IdempotencyConflict,
    JobTimeout,
)
from proxy.expiring import ExpiringMap
from proxy.jobs import Job
from proxy.polling.overdue import OverdueWatch
from proxy.polling.status import PollSchedule
from proxy.waiting.waiters import Waiter

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
STORE_TIMEOUT = 1.0  # seconds the results being stored may take when the proxy stops


@dataclass(frozen=True, slots=True)
class Claim:
    """Who runs the job for an Idempotency-Key: ``owner`` is True for the first request;
    ``ref`` names the job when the first request had it tracked."""

    owner: bool
    token: str
    job_id: str | None = None
    ref: str | None = None


def check_key(value: str) -> str:
    if not 0 < len(value) <= MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        raise BadRequest(f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return value


def scoped_key(lane: str, key: str) -> str:
    """The key as stored: scoped to its account (the lane), so that tenants' keys never
    meet; the account itself is not stored, only a digest of it."""
    return f"{hashlib.sha256(lane.encode()).hexdigest()[:32]}:{key}"


def fingerprint(fields: dict[str, Any]) -> str:
    """A digest of the request body's meaning (key order and spacing do not matter)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResultStore(Protocol):
    """Claims of Idempotency-Keys and results of jobs, by callback token."""

    async def claim(self, key: str, digest: str, token: str, ref: str | None) -> Claim: ...
    async def bind_job(self, key: str, job_id: str) -> None: ...
    async def release(self, key: str, token: str) -> None: ...
    async def job_id_for(self, key: str) -> str | None: ...
    async def put_result(self, token: str, job: Job) -> bool: ...
    async def get_result(self, token: str) -> Job | None: ...


@dataclass(slots=True)
class _Record:
    digest: str
    token: str
    ref: str | None
    job_id: str | None = None


class LocalResults:
    """The in-process store: claims and results live ``ttl`` seconds, ``max_keys`` of each
    at most (the oldest leave first)."""

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._claims = ExpiringMap(ttl, max_keys)
        self._results = ExpiringMap(ttl, max_keys)

    def __len__(self) -> int:
        return len(self._claims) + len(self._results)

    @property
    def evicted(self) -> int:
        return self._claims.evicted + self._results.evicted

    def close(self) -> None:
        self._claims.close()
        self._results.close()

    async def claim(self, key: str, digest: str, token: str, ref: str | None) -> Claim:
        record: _Record | None = self._claims.get(key)
        if record is None:
            self._claims.put(key, _Record(digest, token, ref))
            return Claim(owner=True, token=token, ref=ref)
        if record.digest != digest:
            raise IdempotencyConflict("this Idempotency-Key was used with another body")
        return Claim(False, record.token, record.job_id, record.ref)

    async def bind_job(self, key: str, job_id: str) -> None:
        record: _Record | None = self._claims.get(key)
        if record is not None:
            record.job_id = job_id

    async def release(self, key: str, token: str) -> None:
        record: _Record | None = self._claims.get(key)
        if record is not None and record.token == token:
            self._claims.pop(key)

    async def job_id_for(self, key: str) -> str | None:
        record: _Record | None = self._claims.get(key)
        return None if record is None else record.job_id

    async def put_result(self, token: str, job: Job) -> bool:
        if self._results.get(token) is not None:
            return False
        self._results.put(token, job)
        return True

    async def get_result(self, token: str) -> Job | None:
        result: Job | None = self._results.get(token)
        return result


class KeyedRequests:
    """Requests with an ``Idempotency-Key``: each key's job runs once, retries follow it."""

    def __init__(
        self, results: ResultStore, watch: OverdueWatch, settings: Settings, dialect: Dialect
    ) -> None:
        self._dialect = dialect
        #: Where claims and results live: in this process, or in Redis.
        self.results = results
        self._watch = watch
        self._settings = settings
        self._storing: set[asyncio.Task[None]] = set()

    async def claim(
        self, waiter: Waiter, job_request: JobRequest, key: str, ref: str | None
    ) -> Claim:
        """Claim ``key`` (the header's value) for ``waiter``'s job, or learn whose it is."""
        digest = fingerprint(job_request.fingerprint())
        claim = await self.results.claim(
            scoped_key(job_request.lane, check_key(key)), digest, waiter.token, ref
        )
        if claim.owner:
            waiter.keeper = self.decided
        return claim

    async def release(self, job_request: JobRequest, key: str, waiter: Waiter) -> None:
        """Surely no job exists for the key: a retry must start one."""
        await _quietly(self.results.release(scoped_key(job_request.lane, key), waiter.token))

    async def bind(self, job_request: JobRequest, key: str, job_id: str) -> None:
        """The job server accepted the key's job: a retry can ask it about ``job_id``."""
        await _quietly(self.results.bind_job(scoped_key(job_request.lane, key), job_id))

    async def keep(self, waiter: Waiter, job: Job) -> None:
        """Keep a job's answer for the key's retries."""
        await _quietly(self.results.put_result(waiter.token, job))

    def decided(self, waiter: Waiter) -> None:
        """A keyed waiter's answer is decided: a job's answer is kept for the retries."""
        answer = waiter.answer
        if answer is None or answer[0] != 200:
            return
        task = asyncio.get_running_loop().create_task(self.keep(waiter, decode_json(answer[2])))
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)

    async def aclose(self) -> None:
        """Let the results being stored be stored (briefly), then stop."""
        if self._storing:
            await asyncio.wait(list(self._storing), timeout=STORE_TIMEOUT)
        for task in list(self._storing):
            task.cancel()

    async def follow(
        self, waiter: Waiter, job_request: JobRequest, key: str, claim: Claim
    ) -> Answer:
        """A retry's answer: the first request's stored result, waited for if need be."""
        settings = self._settings
        deadline = time.monotonic() + settings.job_deadline
        schedule = PollSchedule(base=settings.poll_backoff_base, cap=settings.poll_backoff_cap)
        delays = schedule.delays()
        job_id = claim.job_id
        poll: asyncio.Future[Job] | None = None
        waiter.future = asyncio.get_running_loop().create_future()  # the drain answers here
        try:
            while True:
                result = await self.results.get_result(claim.token)
                if result is None and poll is not None and poll.done():
                    result = poll.result()  # raises JobLost
                if result is not None:
                    waiter.outcome = str(self._dialect.state(result))
                    return json_answer(encode(result))
                if job_request.held and poll is None:
                    scoped = scoped_key(job_request.lane, key)
                    job_id = job_id or await self.results.job_id_for(scoped)
                    if job_id is not None:
                        # The first request's holder may be gone: ask the job server too.
                        polling = self._watch.poll(
                            job_id,
                            deadline,
                            known_since=time.monotonic(),
                            first_delay=self._watch.expected(),
                        )
                        poll = asyncio.ensure_future(polling)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JobTimeout("the job of this Idempotency-Key did not finish in time")
                watched: set[asyncio.Future[Any]] = {waiter.future, *([poll] if poll else [])}
                timeout = min(next(delays), remaining)
                await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if waiter.future.done():  # the drain answered this retry
                    return waiter.future.result()
        finally:
            if poll is not None:
                poll.cancel()


async def _quietly(step: Awaitable[Any]) -> None:
    """Bookkeeping for later retries must not fail the request at hand."""
    try:
        await step
    except BusUnavailable as exc:
        logger.warning("%s", exc.detail)
