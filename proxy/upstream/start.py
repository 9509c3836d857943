"""Starting jobs at the job server: ``/start`` with its retries.

``/start`` is retried only when no job can have been created: the connection was
refused or never established, or the job server answered ``503``/``429``. A busy
answer pauses the account's lane for its ``Retry-After`` (at least the backoff), so one
burst is not followed by another, and halves the lane's limit, which grows back by one
with each accepted start. Retries use capped exponential backoff with full jitter, go
first when their lane reopens, and stop at the retry budget or the job's deadline,
whichever is first. Which starts may go out at all is the lanes' to say
(``proxy.upstream.lanes``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from proxy.bodies import decode_json
from proxy.config import Settings
from proxy.dialects.dialect import Dialect
from proxy.errors import (
    JobTimeout,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    said,
)
from proxy.jobs import Job, parse_retry_after
from proxy.upstream.client import job_server_errors
from proxy.upstream.lanes import AccountLanes, Fate
from proxy.upstream.transport import UpstreamTransport

logger = logging.getLogger(__name__)

RETRY_BASE = 0.05
RETRY_CAP = 1.0
RETRYABLE_STATUS = frozenset({429, 503})
JSON_HEADERS = ((b"content-type", b"application/json"),)


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base·2^attempt))."""
    return rng.uniform(0.0, min(RETRY_CAP, RETRY_BASE * 2**attempt))


@dataclass(frozen=True, slots=True)
class _StartCall:
    """One job's start, as it goes out on each attempt."""

    lane: str
    content: bytes
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)
class StartProgress:
    """What the caller of :meth:`Upstream.start` may learn of it, even when it is cut short."""

    #: A request went out that the job server may have made a job of: it was answered
    #: other than 4xx, 429 or 503, or its fate is unknown (given up under way, failed
    #: after sending). False: surely no job exists.
    job_may_exist: bool = False
    #: Told of each retry to come: its number (1 for the first) and the pause before it.
    on_retry: Callable[[int, float], None] | None = None
    #: An attempt left its lane for the job server (it may be under way, or done).
    sent: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """A job server answer that is passed on to the client as it is: ``raw`` its bytes,
    ``body`` what they decode to."""

    status_code: int
    body: Any
    # When the request that the job server accepted was sent: a better mark of the
    # job's start than when a busy event loop got round to reading the answer.
    sent_at: float = 0.0
    raw: bytes = b""

    def job(self) -> Job:
        """The job the answer carries (its id is the dialect's to check): an answer that
        is not a JSON object is UpstreamBadResponse."""
        if not isinstance(self.body, dict):
            raise UpstreamBadResponse(f"the job server answered {said(self.body)}, not a job")
        job: Job = self.body
        return job


class Upstream:
    """The job server, as the proxy uses it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        dialect: Dialect,
        native: UpstreamTransport | None = None,
    ) -> None:
        """``native``: the project's transport that ``client`` was built on; starts then
        go to it as prebuilt bytes, past the client's per-call work."""
        self._client = client
        self._dialect = dialect
        self._start_url = httpx.URL(settings.upstream_url.rstrip("/") + dialect.start_path)
        self._native = native
        self.base_url = settings.upstream_url.rstrip("/")
        self._timeout = settings.start_timeout
        self._budget = settings.start_retry_budget
        self._rng = random.Random()
        self.lanes = AccountLanes(
            settings.upstream_max_per_account,
            settings.upstream_max_connections,
            withdrawn_ttl=settings.job_deadline,
        )

    async def start(
        self,
        lane: str,
        content: bytes,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        *,
        deadline: float,
        progress: StartProgress | None = None,
    ) -> UpstreamAnswer:
        """Start a job (the dialect's start: POST ``/start``, say) in the ``lane`` of its
        account, with ``content`` as the body, retrying while it is safe.

        Returns the answer to pass on. ``deadline`` is a ``time.monotonic()`` value the
        call never goes past, the wait for a place in the lane included. Cancelled (its
        client left), a start not sent yet is never sent, and one under way is withdrawn:
        its connection is closed, so a job server that honours disconnects starts nothing.
        ``progress`` learns whether a job may exist, however the call ends.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeout("the deadline passed before the job server accepted the job")
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                call = _StartCall(lane, content, headers)
                return await self._start(call, deadline, progress or StartProgress())
        except TimeoutError:
            if not scope.expired():
                raise
            raise JobTimeout("the deadline passed before the job server accepted the job") from None

    async def _start(
        self, call: _StartCall, deadline: float, progress: StartProgress
    ) -> UpstreamAnswer:
        attempt = 0
        # Only time spent failing counts against the retry budget: the failed attempts
        # and the pauses after them, never the wait for a place in the lane; a safe
        # failure is retried whenever its pause fits what is left of the budget.
        spent = 0.0
        while True:
            lane, seq = await self.lanes.enter(call.lane, first=attempt > 0)
            progress.sent = True
            fate, accepted, maybe_job = Fate.UNKNOWN, False, True
            try:
                sent_at = time.monotonic()
                pause = 0.0
                try:
                    with job_server_errors(self._start_url):
                        status, raw, retry_after = await self._post(call, deadline - sent_at)
                except UpstreamUnavailable as unreachable:
                    fate, failure, maybe_job = Fate.NOT_SENT, unreachable, False
                else:
                    fate = Fate.ANSWERED
                    # A refusal (4xx) or a busy answer made no job; any other answer may have.
                    maybe_job = status not in RETRYABLE_STATUS and not 400 <= status < 500
                    if status not in RETRYABLE_STATUS:
                        accepted = 200 <= status < 300
                        return _answer(status, raw, sent_at)
                    failure = UpstreamUnavailable(
                        f"the job server answered {status} to every attempt"
                    )
                    pause = parse_retry_after(retry_after)
                # Retry-After is a floor: a "0" must not turn the retries into a hot loop.
                delay = max(pause, backoff_delay(attempt, self._rng))
                failed_at = time.monotonic()
                if spent + delay > self._budget or failed_at + delay > deadline:
                    raise failure
                spent += failed_at - sent_at + delay
                self.lanes.pause(lane, delay)
                if progress.on_retry is not None:
                    progress.on_retry(attempt + 1, delay)
            finally:
                self.lanes.leave(lane, seq, fate, accepted=accepted)
                progress.job_may_exist |= maybe_job
            attempt += 1
            logger.debug("retrying /start in %.3f s (attempt %d): %s", delay, attempt, failure)

    async def _post(self, call: _StartCall, remaining: float) -> tuple[int, bytes, bytes | None]:
        """One start: its status, body and Retry-After.

        Connecting is bounded by start_timeout (a dead job server is retried); once sent,
        a job server that queues the request behind the account's others may take as
        long as the job's deadline allows. The deadline itself is the caller's to keep
        (:meth:`start`): no timeout here may end the call at that same instant with
        another answer.
        """
        connect = self._timeout if self._timeout < remaining else None
        native = self._native
        if native is not None:
            dialect = self._dialect
            wire = native.prebuilt(
                dialect.start_method, dialect.start_path, call.content, headers=call.headers
            )
            raw = await native.exchange(wire, connect=connect, read=None, pool=None)
            return raw.status, raw.body, raw.header(b"retry-after")
        timeout = httpx.Timeout(None, connect=connect)
        # A request built here and sent as it is skips the client's merging of URLs,
        # headers and cookies.
        request = httpx.Request(
            self._dialect.start_method,
            self._start_url,
            content=call.content,
            headers=[*JSON_HEADERS, *call.headers],
            extensions={"timeout": timeout.as_dict()},
        )
        response = await self._client.send(request)
        retry_after = response.headers.get("retry-after")
        return response.status_code, response.content, retry_after and retry_after.encode()

    async def reachable(self, timeout: float) -> bool:
        """Whether the job server answers HTTP at all (any status below 500)."""
        url = f"{self.base_url}{self._dialect.status_of('0000000000000000')}"
        try:
            with job_server_errors(httpx.URL(url)):
                response = await self._client.get(url, timeout=timeout)
        except UpstreamError:
            return False
        return response.status_code < 500


def _answer(status: int, raw: bytes, sent_at: float) -> UpstreamAnswer:
    try:
        body = decode_json(raw)
    except ValueError:
        raise UpstreamBadResponse(
            f"the job server answered {status} with a body that is not JSON"
        ) from None
    if 400 <= status < 500:
        raise UpstreamRejected(status, body)
    if not 200 <= status < 300:
        raise UpstreamBadResponse(f"the job server answered {status}: {said(body)}")
    return UpstreamAnswer(status, body, sent_at, raw)
