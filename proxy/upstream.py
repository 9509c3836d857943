"""Calls to the job server, and the one place where httpx errors become ours
(:func:`job_server_errors`).

The job server is remote: every ``/start`` costs a round trip. It serves one connection
per account at a time and queues the others itself, next to its handler, where a queued
request costs microseconds; a request held back here would cost a whole round trip. So
an account's starts overlap on the wire, bounded per account (:class:`AccountLanes`:
``upstream_max_per_account`` in flight, the rest wait here in order) and overall by the
connection pool (``upstream_max_connections``); connections are kept alive for reuse.

``/start`` is retried only when no job can have been created: the connection was
refused or never established, or the job server answered ``503``/``429``. A busy
answer pauses the account's lane for its ``Retry-After`` (at least the backoff), so one
burst is not followed by another, and halves the lane's limit, which grows back by one
with each accepted start. Retries use capped exponential backoff with full jitter, go
first when their lane reopens, and stop at the retry budget or the job's deadline,
whichever is first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from proxy.bodies import decode_json
from proxy.config import Settings
from proxy.dialect import Dialect
from proxy.errors import (
    JobTimeout,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimedOut,
    UpstreamUnavailable,
    said,
)
from proxy.jobs import Job, parse_retry_after
from proxy.transport import UpstreamTransport

logger = logging.getLogger(__name__)

RETRY_BASE = 0.05
RETRY_CAP = 1.0
RETRYABLE_STATUS = frozenset({429, 503})
JSON_HEADERS = ((b"content-type", b"application/json"),)
KEEPALIVE_EXPIRY = 4.0


def native_transport(settings: Settings) -> UpstreamTransport | None:
    """The project's own transport (``proxy.transport``) when the settings choose it: a
    keep-alive pool to the job server's origin, with idle connections given up before
    uvicorn's own keep-alive timeout (5 s) would close them under a request."""
    if settings.upstream_transport != "native":
        return None
    return UpstreamTransport(
        settings.upstream_url,
        max_connections=settings.upstream_max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )


def build_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one outbound client of the proxy, on ``transport``: the project's own
    (:func:`native_transport`), or a test's fake; None: httpx's own pool."""
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
    )
    # The pool wait is bounded by each call's own timeout, never by a fixed pool timeout.
    timeout = httpx.Timeout(settings.start_timeout, pool=None)
    return httpx.AsyncClient(transport=transport, limits=limits, timeout=timeout)


def nothing_was_sent(exc: httpx.TransportError) -> bool:
    """True when the request cannot have reached the job server (so a retry is safe)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _reason(exc: BaseException) -> str:
    """An exception in words: its kind, and its message when it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def job_server_errors(url: httpx.URL) -> Iterator[None]:
    """The one place where httpx's errors become the proxy's, as httpx itself maps
    httpcore's: a request that cannot have left is UpstreamUnavailable (safe to retry),
    any other failure UpstreamBadResponse (a job may have been started)."""
    try:
        yield
    except httpx.TransportError as exc:
        if nothing_was_sent(exc):
            raise UpstreamUnavailable(
                f"cannot reach the job server at {url} ({_reason(exc)})"
            ) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise UpstreamTimedOut(
                f"the job server did not answer in time ({_reason(exc)})"
            ) from exc
        raise UpstreamBadResponse(
            f"the connection to the job server failed ({_reason(exc)})"
        ) from exc


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base·2^attempt))."""
    return rng.uniform(0.0, min(RETRY_CAP, RETRY_BASE * 2**attempt))


class Fate(str, Enum):
    """What the job server made of one ``/start`` that left its lane."""

    #: It answered (any status): it is done with the request.
    ANSWERED = "answered"
    #: It never got the request (no connection): nothing to wait for.
    NOT_SENT = "not_sent"
    #: Unknown: the request may be queued or handled there still (the client left, the
    #: deadline passed, the connection failed after sending).
    UNKNOWN = "unknown"


class _Lane:
    """One account's starts: how many are out, who waits, whether it is paused.

    ``in_flight`` counts the starts on the wire and the *withdrawn* ones: starts that
    were sent and then given up without an answer, which the job server may still be
    working on behind its account gate. Each keeps its place until a start of the
    account sent after it is answered (the gate serves an account's requests in order,
    so the job server is done with it by then) or until ``withdrawn_ttl`` has passed.
    """

    __slots__ = (
        "account",
        "expiry",
        "in_flight",
        "limit",
        "paused_until",
        "queued",
        "sent",
        "timer",
        "waiting",
        "withdrawn",
    )

    def __init__(self, account: str, limit: int) -> None:
        self.account = account
        self.limit = limit
        self.in_flight = 0
        self.sent = 0  # sequence number of the next start that leaves the lane
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.withdrawn: collections.deque[tuple[int, float]] = collections.deque()  # (seq, when)
        self.paused_until = -math.inf
        self.timer: asyncio.TimerHandle | None = None  # set while the lane is paused
        self.expiry: asyncio.TimerHandle | None = None  # set while starts are withdrawn
        self.queued = False  # in the queue of lanes waiting for a free connection

    def has_room(self) -> bool:
        """Whether one more start may go: below the limit, or none of those out is live
        (withdrawn starts must not block an account for good)."""
        return self.in_flight < self.limit or self.in_flight == len(self.withdrawn)


class AccountLanes:
    """Which ``/start`` calls may go out: at most ``per_account`` of one account and
    ``total`` of all accounts in flight (``total`` is the connection pool's size, so no
    call ever waits inside the HTTP client, where a waiting request costs a kilobyte).

    A waiting call is a plain future in its account's FIFO. When the pool is full,
    accounts take turns for the connections that free up (round robin), so one
    account's burst does not hold back the others. A cancelled waiter (its client left)
    is skipped when its turn comes: a start that was never sent is never sent. A start
    withdrawn after it was sent keeps its place in its account's limit (see
    :class:`_Lane`), so clients that hang up cannot pile starts up at the job server. A
    lane lives only while it has calls out, waiters, withdrawn starts or a pause.
    """

    def __init__(self, per_account: int, total: int, withdrawn_ttl: float = 30.0) -> None:
        self._per_account = per_account
        self._total = total
        self._withdrawn_ttl = withdrawn_ttl
        self._in_flight = 0  # starts on the wire, all accounts (withdrawn ones are not)
        self._lanes: dict[str, _Lane] = {}
        self._ready: collections.deque[_Lane] = collections.deque()

    def __len__(self) -> int:
        return len(self._lanes)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def enter(self, account: str, *, first: bool = False) -> tuple[_Lane, int]:
        """Wait for a place in the account's lane; ``first`` puts a retry ahead of the
        queue. Returns the lane and the start's sequence number in it."""
        lane = self._lanes.get(account)
        if lane is None:
            lane = self._lanes[account] = _Lane(account, self._per_account)
        if (
            lane.has_room()
            and not lane.waiting
            and lane.timer is None
            and self._in_flight < self._total
            and not self._ready
        ):
            self._take_place(lane)
        else:
            place = asyncio.get_running_loop().create_future()
            if first:
                lane.waiting.appendleft(place)
            else:
                lane.waiting.append(place)
            self._schedule(lane)
            self._pump()
            try:
                await place
            except asyncio.CancelledError:
                if place.done() and not place.cancelled():
                    self._release(lane)  # the place came as we left: hand it on
                else:
                    self._tidy(lane)
                raise
        lane.sent += 1
        return lane, lane.sent - 1

    def leave(self, lane: _Lane, seq: int, fate: Fate, *, accepted: bool = False) -> None:
        """Give the place of start ``seq`` back, or keep it while its fate is unknown;
        an accepted start lets the lane's limit grow by one."""
        if accepted and lane.limit < self._per_account:
            lane.limit += 1
        if fate is Fate.UNKNOWN:
            self._withdraw(lane, seq)
            return
        if fate is Fate.ANSWERED:
            self._answered_after(lane, seq)
        self._release(lane)

    def pause(self, lane: _Lane, seconds: float) -> None:
        """Send none of the account's starts for ``seconds``; the first busy answer of a
        burst also halves its limit (later ones of the same burst find it paused)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if lane.paused_until <= now:
            lane.limit = max(1, lane.limit // 2)
        if now + seconds > lane.paused_until:
            lane.paused_until = now + seconds
            if lane.timer is not None:
                lane.timer.cancel()
            lane.timer = loop.call_at(lane.paused_until, self._reopen, lane)

    def _take_place(self, lane: _Lane) -> None:
        lane.in_flight += 1
        self._in_flight += 1

    def _release(self, lane: _Lane) -> None:
        lane.in_flight -= 1
        self._in_flight -= 1
        self._schedule(lane)
        self._pump()
        self._tidy(lane)

    def _withdraw(self, lane: _Lane, seq: int) -> None:
        """Start ``seq`` went without an answer: its connection is free, its place is not."""
        loop = asyncio.get_running_loop()
        lane.withdrawn.append((seq, loop.time()))
        self._in_flight -= 1
        if lane.expiry is None:
            lane.expiry = loop.call_later(self._withdrawn_ttl, self._expire_withdrawn, lane)
        self._pump()  # a connection is free for another account

    def _answered_after(self, lane: _Lane, seq: int) -> None:
        """Start ``seq`` was answered: the job server is done with those sent before it."""
        withdrawn = lane.withdrawn
        while withdrawn and withdrawn[0][0] < seq:
            withdrawn.popleft()
            lane.in_flight -= 1
        if not withdrawn and lane.expiry is not None:
            lane.expiry.cancel()
            lane.expiry = None

    def _expire_withdrawn(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        lane.expiry = None
        withdrawn = lane.withdrawn
        too_old = loop.time() - self._withdrawn_ttl
        while withdrawn and withdrawn[0][1] <= too_old:
            withdrawn.popleft()
            lane.in_flight -= 1
        if withdrawn:
            lane.expiry = loop.call_at(
                withdrawn[0][1] + self._withdrawn_ttl, self._expire_withdrawn, lane
            )
        self._schedule(lane)
        self._pump()
        self._tidy(lane)

    def _reopen(self, lane: _Lane) -> None:
        lane.timer = None
        self._schedule(lane)
        self._pump()
        self._tidy(lane)

    def _schedule(self, lane: _Lane) -> None:
        """Queue the lane for a connection if it has waiters it may send now."""
        if not lane.queued and lane.waiting and lane.has_room() and not lane.timer:
            lane.queued = True
            self._ready.append(lane)

    def _pump(self) -> None:
        """Hand free connections to the queued lanes, one start each, in turn."""
        while self._ready and self._in_flight < self._total:
            lane = self._ready.popleft()
            lane.queued = False
            if lane.timer is not None or not lane.has_room():
                continue  # queued again when it reopens or a start of it ends
            while lane.waiting:
                place = lane.waiting.popleft()
                if not place.done():  # else its client left: never send that start
                    self._take_place(lane)
                    place.set_result(None)
                    break
            self._schedule(lane)
            self._tidy(lane)

    def _tidy(self, lane: _Lane) -> None:
        """Forget a lane that has nothing left to do."""
        while lane.waiting and lane.waiting[0].done():
            lane.waiting.popleft()
        idle = not (lane.in_flight or lane.waiting or lane.timer or lane.queued)
        if idle and self._lanes.get(lane.account) is lane:
            del self._lanes[lane.account]


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
