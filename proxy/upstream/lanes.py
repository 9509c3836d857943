"""Which ``/start`` calls may go out, per account and overall.

The job server is remote: every ``/start`` costs a round trip. It serves one connection
per account at a time and queues the others itself, next to its handler, where a queued
request costs microseconds; a request held back here would cost a whole round trip. So
an account's starts overlap on the wire, bounded per account (:class:`AccountLanes`:
``upstream_max_per_account`` in flight, the rest wait here in order) and overall by the
connection pool (``upstream_max_connections``).
"""

from __future__ import annotations

import asyncio
import collections
import math
from enum import Enum


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
