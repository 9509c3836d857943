"""Waiters: the futures that park held client requests until their job's result arrives.

A waiter is registered under a fresh, unguessable callback token (``proxy.waiting.tokens``)
*before* the job is started upstream, so a callback can never arrive before its waiter
exists. The holder removes its waiter in a ``finally`` (see :meth:`WaiterRegistry.hold`),
whatever happened: answered, timed out, client gone or shut down.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.types import Send

from proxy.answers import Answer, json_answer, send_answer
from proxy.errors import AtCapacity, JobTimeout, ProxyError, ShuttingDown
from proxy.holding.tracking import TrackedJob
from proxy.waiting.deliveries import AnsweredBy, Delivery, spent_delivery
from proxy.waiting.tokens import new_token, new_token_key

logger = logging.getLogger(__name__)

SPENT_TOKENS_KEPT = 16_384  # only to tell a late duplicate from a never-issued token
# Results kept for a waiter whose job is not named yet: a job server sends one; a few
# more (duplicates, another job's by mistake) are judged too, beyond that it must retry.
MAX_EARLY_RESULTS = 4


def log_late(job_id: str) -> None:
    """A job's result that came once its held request had ended without it."""
    logger.info(
        "job %s finished after its request had ended without it (its client left, or it "
        "was answered by the deadline, the drain or as lost): its result is dropped",
        job_id,
    )


@dataclass(frozen=True, slots=True)
class Result:
    """A finished job as a callback (or another replica) brought it: its id and state as
    the dialect reads them, and the bytes that answer the client."""

    job_id: str
    state: str
    body: bytes


@dataclass(slots=True, eq=False)
class Waiter:
    """One held request: its token, its job id once known, and its answer once decided.

    Only the job that ``/start`` named may settle it. A result that arrives before that
    answer is kept in ``early`` and judged in :meth:`bind`; its callback is answered at
    once, never after ``/start``: a job server may await that answer before it answers
    ``/start``. Whoever settles the waiter (callback,
    status poll, deadline, drain) sends the answer with :meth:`respond`: on the held
    request's ASGI ``send``, or into ``future`` for a holder that awaits it instead.
    """

    token: str
    job_id: str | None = None
    # The job started between sending its /start (started_at) and reading the answer
    # (accepted_at); nothing more precise is known before its result.
    started_at: float = 0.0
    accepted_at: float = 0.0
    answer: Answer | None = None
    answered_by: AnsweredBy | None = None
    outcome: str = ""  # the job's state, or the error word
    send: Send | None = None
    future: asyncio.Future[Answer] | None = None
    deadline: float = math.inf  # time.monotonic() by which it is answered, 504 if need be
    released: bool = False
    #: Keeps its answer once decided, for requests to come (``KeyedRequests`` sets it);
    #: a waiter with a keeper goes on when its client leaves.
    keeper: Callable[[Waiter], None] | None = None
    poll: asyncio.Task[None] | None = None
    early: list[Result] | None = None
    #: The job as clients may come back to it (GET /jobs/{ref}), when they may.
    tracked: TrackedJob | None = None
    #: Held by nobody: its client has its ref. It lives until its answer is decided.
    detached: bool = False
    registry: WaiterRegistry | None = None

    @property
    def settled(self) -> bool:
        return self.answer is not None

    def settle(self, answer: Answer, via: AnsweredBy, outcome: str) -> bool:
        """Decide the answer unless it is decided; True if this one counted (its caller
        then sends it with :meth:`respond`)."""
        if self.answer is not None:
            return False
        self.answer, self.answered_by, self.outcome = answer, via, outcome
        if self.future is not None and not self.future.done():
            self.future.set_result(answer)
        if self.registry is not None:
            self.registry.settled(self)
        return True

    def fail(self, error: ProxyError, via: AnsweredBy) -> bool:
        """Settle with ``error``'s answer."""
        return self.settle(error.answer(), via, error.error)

    async def respond(self) -> None:
        """Send the decided answer on the held request, once."""
        send, self.send = self.send, None
        if send is not None and self.answer is not None:
            await send_answer(send, self.answer)

    def offer(self, result: Result) -> Delivery:
        """A finished job from a callback: taken only if it is this waiter's job. Before
        the job is known it is kept (``EARLY``), a few at most."""
        if self.job_id is None:
            early = self.early or []
            if len(early) >= MAX_EARLY_RESULTS:
                return Delivery.CROWDED
            self.early = [*early, result]
            return Delivery.EARLY
        if result.job_id != self.job_id:
            return Delivery.MISMATCH
        if self.settle(json_answer(result.body), AnsweredBy.CALLBACK, result.state):
            return Delivery.OK
        return spent_delivery(self.answered_by)

    def bind(self, job_id: str) -> int:
        """The job server named the job: judge the results that came before, taking this
        job's own; returns how many were another job's, and dropped."""
        self.job_id = job_id
        early, self.early = self.early, None
        dropped = 0
        for result in early or ():
            if self.offer(result) is Delivery.MISMATCH:
                dropped += 1
                logger.warning(
                    "dropped the result of job %s: it came, before /start answered, on the "
                    "callback token of job %s",
                    result.job_id,
                    job_id,
                )
        return dropped

    def release(self) -> None:
        """The waiter is gone: stop its poll; results kept for it were for nobody."""
        self.released = True
        if self.poll is not None:
            self.poll.cancel()
        self.early = None
        if self.future is not None and not self.future.done():
            self.future.cancel()


def _drained(job_id: str | None) -> ShuttingDown:
    if job_id is None:
        return ShuttingDown("the proxy shut down before the job server accepted the job")
    return ShuttingDown(
        f"the proxy shut down before job {job_id} finished; it goes on at the job server",
        job_id=job_id,
    )


class Holding:
    """``with registry.hold() as waiter``: the waiter is released when the block ends,
    unless it was detached meanwhile (then it goes once its answer is decided)."""

    __slots__ = ("_registry", "_waiter")

    def __init__(self, registry: WaiterRegistry, waiter: Waiter) -> None:
        self._registry, self._waiter = registry, waiter

    def __enter__(self) -> Waiter:
        return self._waiter

    def __exit__(self, *exc_info: object) -> None:
        waiter = self._waiter
        if not waiter.detached or waiter.settled:
            self._registry.release(waiter)


class WaiterRegistry:
    """Every waiter of this process, by callback token, and their deadlines.

    Every waiter gets the same ``job_deadline``, so deadlines come due in the order the
    waiters were registered: one timer for the earliest does for all of them, where a
    timer per held request would cost half a kilobyte each.
    """

    def __init__(self, replica_id: str, max_pending: int, job_deadline: float = 30.0) -> None:
        self.replica_id = replica_id
        self.max_pending = max_pending
        self.job_deadline = job_deadline
        # Signs this replica's tokens; in shared mode the other replicas learn it from
        # Redis, so a callback reaching any of them is checked with one HMAC.
        self.token_key = new_token_key()
        self._waiters: dict[str, Waiter] = {}
        # Tokens of waiters gone, kept only to tell a duplicate or a late result from a
        # never-issued token: who answered each (None: its client left first).
        self._spent: OrderedDict[str, AnsweredBy | None] = OrderedDict()
        self._deadlines: collections.deque[Waiter] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._emptied = asyncio.Event()
        self._emptied.set()
        self._responders: set[asyncio.Task[None]] = set()
        self.closing = False
        #: Learns from every answered waiter (the proxy's metrics and lateness).
        self.observer: Callable[[Waiter], None] | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters.values()))

    def get(self, token: str) -> Waiter | None:
        return self._waiters.get(token)

    def hold(self) -> Holding:
        """Register a waiter under a fresh token for the duration of a ``with`` block."""
        if self.closing:
            raise ShuttingDown("the proxy is shutting down")
        if len(self._waiters) >= self.max_pending:
            raise AtCapacity(f"the proxy already holds {self.max_pending} requests")
        token = new_token(self.replica_id, self.token_key)
        waiter = Waiter(token, deadline=time.monotonic() + self.job_deadline, registry=self)
        self._waiters[token] = waiter
        self._deadlines.append(waiter)
        if self._timer is None:
            self._arm()
        self._emptied.clear()
        return Holding(self, waiter)

    def settled(self, waiter: Waiter) -> None:
        """A waiter's answer was decided: tell its tracked job and the observer; a
        detached waiter has nobody else to release it."""
        if waiter.tracked is not None:
            assert waiter.answer is not None
            waiter.tracked.finish(waiter.answer, waiter.outcome)
        if self.observer is not None:
            self.observer(waiter)
        if waiter.detached:
            asyncio.get_running_loop().call_soon(self.release, waiter)

    def detach(self, waiter: Waiter) -> None:
        """Nobody holds ``waiter`` any more: it lives until its answer is decided (by its
        callback, a poll, its deadline or the drain), which its tracked job keeps."""
        waiter.detached = True
        if waiter.settled:
            self.release(waiter)

    def release(self, waiter: Waiter) -> None:
        """Remove a waiter: its holder is done with it, whatever happened."""
        if self._waiters.get(waiter.token) is not waiter:
            return  # already released
        del self._waiters[waiter.token]
        self._remember_spent(waiter)
        waiter.release()
        deadlines = self._deadlines
        while deadlines and deadlines[0].released:
            deadlines.popleft()
        if not deadlines and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiters:
            self._emptied.set()

    def _arm(self) -> None:
        if self._deadlines:
            due = self._deadlines[0].deadline - time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(max(0.0, due), self._expire)

    def _expire(self) -> None:
        """Answer 504 for every held job whose deadline has passed.

        The one owner of every held request's deadline, whatever it is doing: a waiter
        whose start is still under way is settled too, and answered as soon as its
        holder has the means (the start ends at this same deadline by itself, or was
        answered just before it and finds its waiter settled).
        """
        self._timer = None
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines:
            waiter = deadlines[0]
            if not (waiter.released or waiter.settled) and waiter.deadline > now:
                break
            deadlines.popleft()
            if waiter.released:
                continue
            if waiter.job_id is None:
                late = JobTimeout("the deadline passed before the job server accepted the job")
            else:
                late = JobTimeout(
                    f"job {waiter.job_id} did not finish within the deadline", job_id=waiter.job_id
                )
            if waiter.fail(late, AnsweredBy.DEADLINE) and waiter.send is not None:
                self.respond_soon(waiter)
        self._arm()

    def resolve(self, token: str, result: Result) -> Delivery:
        """Hand a finished job (and its bytes) to the waiter holding ``token``
        (``EARLY``: judged later). An ``OK`` obliges the caller to :meth:`Waiter.respond`."""
        waiter = self._waiters.get(token)
        if waiter is None:
            if token not in self._spent:
                return Delivery.UNKNOWN
            return spent_delivery(self._spent[token])
        return waiter.offer(result)

    async def deliver(self, token: str, result: Result) -> Delivery:
        """:meth:`resolve`, and answer the held request when the result was taken. Never
        waits for the job server's answer to ``/start``."""
        delivery = self.resolve(token, result)
        if delivery is Delivery.OK:
            waiter = self._waiters.get(token)
            if waiter is not None:
                await waiter.respond()
        return delivery

    def respond_soon(self, waiter: Waiter) -> None:
        """Send a waiter's answer from a task of the registry's (for settling done in a
        plain callback, such as the deadline timer)."""
        task = asyncio.get_running_loop().create_task(waiter.respond())
        self._responders.add(task)
        task.add_done_callback(self._responders.discard)

    async def fail_all(self, error: Callable[[str | None], ProxyError]) -> int:
        """Answer every waiter still unanswered with ``error(its job id)``; returns how many."""
        failed = [
            waiter
            for waiter in self._waiters.values()
            if waiter.fail(error(waiter.job_id), AnsweredBy.DRAIN)
        ]
        await asyncio.gather(*(waiter.respond() for waiter in failed))
        return len(failed)

    async def drain(self, timeout: float, *, hurry: asyncio.Event | None = None) -> tuple[int, int]:
        """Refuse new waiters, wait up to ``timeout`` (or until ``hurry`` is set) for held
        ones, fail the rest.

        Returns (answered while draining, failed with 503).
        """
        self.closing = True
        held = len(self._waiters)
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wait_until_empty())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        failed = await self.fail_all(_drained)
        return held - failed, failed

    async def wait_until_empty(self) -> None:
        """Return once no waiter is held (at once when none is)."""
        await self._emptied.wait()

    def answered_by_poll(self, token: str) -> bool:
        """Whether the gone waiter of ``token`` was answered by a status poll."""
        return self._spent.get(token) is AnsweredBy.POLL

    def _remember_spent(self, waiter: Waiter) -> None:
        self._spent[waiter.token] = waiter.answered_by
        if len(self._spent) > SPENT_TOKENS_KEPT:
            self._spent.popitem(last=False)
