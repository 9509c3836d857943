"""Idempotency-Key: a client's retry gets its first request's job, never a second job.

A request carrying ``Idempotency-Key`` *claims* the key for its callback token. A retry
with the same key and the same body finds the claim and follows that job: it returns
the stored result at once when there is one, else waits for it (and polls the job
server once the job id is known). The same key with another body is a 422.

:class:`KeyedRequests` is the one interface the app uses: :meth:`KeyedRequests.serve`
for a request with a key, :meth:`KeyedRequests.keep` for a result that came after its
holder was gone. A request without a key does no idempotency work at all.
:class:`LocalResults` keeps claims and results in this process; ``proxy.shared`` keeps
them in Redis so a retry may land on any replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.answers import Answer, encode, json_answer
from proxy.bodies import JobRequest, decode_json
from proxy.config import Settings
from proxy.errors import (
    BadRequest,
    BusUnavailable,
    IdempotencyConflict,
    JobTimeout,
)
from proxy.expiring import ExpiringMap
from proxy.jobs import Job, is_terminal, job_id_of
from proxy.metrics import Metrics, Outcome
from proxy.overdue import OverdueWatch
from proxy.polling import PollSchedule
from proxy.upstream import StartProgress, Upstream
from proxy.waiters import AnsweredBy, Delivery, Waiter

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Claim:
    """Who runs the job for an Idempotency-Key: ``owner`` is True for the first request."""

    owner: bool
    token: str
    job_id: str | None = None


def check_key(value: str) -> str:
    if not 0 < len(value) <= MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        raise BadRequest(f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return value


def scoped_key(account: str, key: str) -> str:
    """The key as stored: scoped to its account, so that tenants' keys never meet."""
    return f"{hashlib.sha256(account.encode()).hexdigest()[:32]}:{key}"


def fingerprint(fields: dict[str, Any]) -> str:
    """A digest of the request body's meaning (key order and spacing do not matter)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResultStore(Protocol):
    """Claims of Idempotency-Keys and results of jobs, by callback token."""

    async def claim(self, key: str, digest: str, token: str) -> Claim: ...
    async def bind_job(self, key: str, job_id: str) -> None: ...
    async def release(self, key: str, token: str) -> None: ...
    async def job_id_for(self, key: str) -> str | None: ...
    async def put_result(self, token: str, job: Job) -> bool: ...
    async def get_result(self, token: str) -> Job | None: ...


@dataclass(slots=True)
class _Record:
    digest: str
    token: str
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

    async def claim(self, key: str, digest: str, token: str) -> Claim:
        record: _Record | None = self._claims.get(key)
        if record is None:
            self._claims.put(key, _Record(digest, token))
            return Claim(owner=True, token=token)
        if record.digest != digest:
            raise IdempotencyConflict("this Idempotency-Key was used with another body")
        return Claim(owner=False, token=record.token, job_id=record.job_id)

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
        self,
        results: ResultStore,
        upstream: Upstream,
        watch: OverdueWatch,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._results = results
        self._upstream = upstream
        self._watch = watch
        self._settings = settings

    async def keep(self, token: str, job: Job, delivery: Delivery) -> Delivery:
        """Store a result whose holder is gone (``delivery`` said so) for the key's
        retries; ``STORED`` if this stored it."""
        return Delivery.STORED if await self._results.put_result(token, job) else delivery

    async def serve(self, waiter: Waiter, job_request: JobRequest, key: str) -> Answer:
        """Run the client's job, or follow the one its Idempotency-Key names."""
        results = self._results
        digest = fingerprint(dataclasses.asdict(job_request))
        key = scoped_key(job_request.account, key)
        claim = await results.claim(key, digest, waiter.token)
        if not claim.owner:
            return await self._follow(waiter, key, claim, job_request)
        callback = job_request.callback
        if job_request.wait:
            callback = f"{self._settings.public_url}/callback/{waiter.token}"
        progress = StartProgress()
        try:
            answer = await self._upstream.start(
                job_request.upstream_body(callback), deadline=waiter.deadline, progress=progress
            )
        except BaseException:
            # The client left, the deadline passed or the job server refused: when surely
            # no job was started for this key, a retry must start one.
            if not progress.job_may_exist:
                await _quietly(results.release(key, waiter.token))
            raise
        job = answer.job()
        if not job_request.wait:
            await _quietly(results.put_result(waiter.token, job))
            return json_answer(answer.raw, answer.status_code)
        if dropped := waiter.bind(job_id_of(job)):
            self._metrics.callback(Outcome.EARLY_MISMATCH, dropped)
        if is_terminal(job):
            waiter.settle(json_answer(answer.raw), AnsweredBy.START, str(job["state"]))
        if not waiter.settled:
            waiter.started_at, waiter.accepted_at = answer.sent_at, time.monotonic()
            await _quietly(results.bind_job(key, str(waiter.job_id)))
            self._watch.track(waiter, waiter.deadline)
        assert waiter.future is not None
        result = await waiter.future
        if result[0] == 200:
            await _quietly(results.put_result(waiter.token, decode_json(result[2])))
        return result

    async def _follow(
        self, waiter: Waiter, key: str, claim: Claim, job_request: JobRequest
    ) -> Answer:
        """A retry's answer: the first request's stored result, waited for if need be."""
        settings = self._settings
        deadline = time.monotonic() + settings.job_deadline
        schedule = PollSchedule(base=settings.poll_backoff_base, cap=settings.poll_backoff_cap)
        delays = schedule.delays()
        job_id = claim.job_id
        poll: asyncio.Future[Job] | None = None
        assert waiter.future is not None
        try:
            while True:
                result = await self._results.get_result(claim.token)
                if result is None and poll is not None and poll.done():
                    result = poll.result()  # raises JobLost
                if result is not None:
                    waiter.outcome = str(result.get("state"))
                    return json_answer(encode(result))
                if job_request.wait and poll is None:
                    job_id = job_id or await self._results.job_id_for(key)
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
