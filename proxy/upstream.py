"""Calls to the job server, and the one place where httpx errors become ours.

The job server handles one connection per account at a time, so ``/start`` calls of
one account queue here (:class:`AccountQueue`) rather than each holding a pooled
connection while it waits in the job server's queue: connections are then only needed
for the accounts that are active, and one busy account cannot take the whole pool.

``/start`` is retried only when no job can have been created: the connection was
refused or never established, or the job server answered ``503``/``429`` (honouring
``Retry-After``). Retries use capped exponential backoff with full jitter and stop at
the retry budget or the job's deadline, whichever is first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from proxy.config import Settings
from proxy.errors import (
    JobTimeout,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.polling import FINAL_STATES, retry_after_seconds

logger = logging.getLogger(__name__)

RETRY_BASE = 0.05
RETRY_CAP = 1.0
RETRYABLE_STATUS = frozenset({429, 503})
MAX_JOB_ID_LENGTH = 256
JSON_HEADERS = {"content-type": "application/json"}

Job = dict[str, Any]


def build_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one outbound client of the proxy; ``transport`` lets tests plug in a fake."""
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
    )
    if transport is None and settings.upstream_transport == "aiohttp":
        transport = AiohttpTransport(limits=limits)
    # The pool wait is bounded by each call's own timeout, never by a fixed pool timeout.
    timeout = httpx.Timeout(settings.start_timeout, pool=None)
    return httpx.AsyncClient(transport=transport, limits=limits, timeout=timeout)


def nothing_was_sent(exc: httpx.TransportError) -> bool:
    """True when the request cannot have reached the job server (so a retry is safe)."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        # httpx-aiohttp maps every aiohttp connection error, including a server that hung
        # up after reading the request, to ConnectTimeout: look at the original instead.
        return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base·2^attempt))."""
    return rng.uniform(0.0, min(RETRY_CAP, RETRY_BASE * 2**attempt))


def is_terminal(job: Job) -> bool:
    return job.get("state") in FINAL_STATES


def job_id_of(job: Job) -> str:
    job_id = job.get("id")
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_LENGTH:
        raise UpstreamBadResponse(f"the job server's answer has no valid job id: {job!r:.200}")
    return job_id


class AccountQueue:
    """One ``/start`` in flight per account, first come first served (``asyncio.Lock``
    wakes its waiters in order); an account's lock lives only while it is in use."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def turn(self, account: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(account, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[account]


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """A job server answer that is passed on to the client as it is."""

    status_code: int
    body: Any
    # When the request that the job server accepted was sent: a better mark of the
    # job's start than when a busy event loop got round to reading the answer.
    sent_at: float = 0.0


class Upstream:
    """The job server, as the proxy uses it."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self._client = client
        self._start_url = httpx.URL(settings.upstream_url.rstrip("/") + "/start")
        self.base_url = settings.upstream_url.rstrip("/")
        self._timeout = settings.start_timeout
        self._budget = settings.start_retry_budget
        self._rng = random.Random()
        self._accounts = AccountQueue()
        self.retries = 0

    async def start(self, body: Job, *, deadline: float) -> UpstreamAnswer:
        """POST ``/start`` in the account's turn, retrying while it is safe.

        Returns the answer to pass on. ``deadline`` is a ``time.monotonic()`` value the
        call never goes past, the wait for the account's turn included.
        """
        give_up = min(deadline, time.monotonic() + self._budget)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout("the deadline passed before the job server accepted the job")
            pause = 0.0
            try:
                response, sent_at = await self._post_in_turn(body, deadline)
            except httpx.TransportError as exc:
                if not nothing_was_sent(exc):
                    raise _translate(exc) from exc
                failure: UpstreamError = UpstreamUnavailable(
                    f"cannot reach the job server at {self._start_url}: {exc!r}"
                )
            else:
                if response.status_code not in RETRYABLE_STATUS:
                    return _answer(response, sent_at)
                failure = UpstreamUnavailable(
                    f"the job server answered {response.status_code} to every attempt"
                )
                pause = retry_after_seconds(response)
            # Retry-After is a floor: a "0" must not turn the retries into a hot loop.
            delay = max(pause, backoff_delay(attempt, self._rng))
            if time.monotonic() + delay > give_up:
                raise failure
            attempt += 1
            self.retries += 1
            logger.debug("retrying /start in %.3f s (attempt %d): %s", delay, attempt, failure)
            await asyncio.sleep(delay)

    async def _post_in_turn(self, body: Job, deadline: float) -> tuple[httpx.Response, float]:
        """One attempt, made in the account's turn; the turn is not kept while backing off."""
        scope = asyncio.timeout(deadline - time.monotonic())
        try:
            async with scope, self._accounts.turn(body["account"]):
                sent_at = time.monotonic()
                remaining = deadline - sent_at
                # A request built here and sent as it is skips the client's per-call
                # merging of URLs, headers and cookies: a quarter of the call's CPU.
                request = httpx.Request(
                    "POST",
                    self._start_url,
                    content=json.dumps(body, separators=(",", ":")).encode(),
                    headers=JSON_HEADERS,
                    extensions={"timeout": self._attempt_timeout(remaining)},
                )
                response = await self._client.send(request)
                return response, sent_at
        except TimeoutError:
            if not scope.expired():
                raise
            raise JobTimeout("the deadline passed before the job server accepted the job") from None

    def _attempt_timeout(self, remaining: float) -> dict[str, float | None]:
        # Connecting is bounded by start_timeout (a dead job server is retried); once
        # the request is sent, a job server that queues it behind the account's other
        # requests may take as long as the job's deadline allows.
        connect = min(self._timeout, remaining)
        return httpx.Timeout(remaining, connect=connect, pool=remaining).as_dict()

    async def reachable(self, timeout: float) -> bool:
        """Whether the job server answers HTTP at all (any status below 500)."""
        try:
            response = await self._client.get(
                f"{self.base_url}/status/0000000000000000", timeout=timeout
            )
        except httpx.HTTPError:
            return False
        return response.status_code < 500


def _answer(response: httpx.Response, sent_at: float) -> UpstreamAnswer:
    try:
        body = response.json()
    except ValueError:
        raise UpstreamBadResponse(
            f"the job server answered {response.status_code} with a body that is not JSON"
        ) from None
    if 400 <= response.status_code < 500:
        raise UpstreamRejected(response.status_code, body)
    if not 200 <= response.status_code < 300:
        raise UpstreamBadResponse(f"the job server answered {response.status_code}: {body!r:.200}")
    return UpstreamAnswer(response.status_code, body, sent_at)


def _translate(exc: httpx.TransportError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamBadResponse(f"the job server did not answer in time: {exc!r}")
    return UpstreamBadResponse(f"the connection to the job server failed: {exc!r}")
