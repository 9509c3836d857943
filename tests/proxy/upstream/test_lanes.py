"""Account lanes (``proxy.upstream.lanes.AccountLanes``): an account's starts overlap, bounded,
in order; withdrawn starts keep their places until the job server is surely done with
them; the pool is shared out between accounts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from proxy.errors import JobTimeout
from proxy.upstream.client import build_client
from proxy.upstream.lanes import AccountLanes, Fate
from proxy.upstream.start import Upstream
from tests.proxy.conftest import RUNNING, WORK_SAMPLE, soon, start_in_lane, upstream_settings


class _HeldStarts:
    """A job server whose /start answers only when the test releases it."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.open = 0
        self.most_open = 0
        self.release = asyncio.Event()
        self.changed = asyncio.Condition()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = httpx.Response(200, content=request.content).json()
        async with self.changed:
            self.arrived.append(body["callback"])
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            self.changed.notify_all()
        try:
            await self.release.wait()
        finally:
            self.open -= 1
        return httpx.Response(200, json=RUNNING)

    async def until_arrived(self, count: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.arrived) >= count)


@contextlib.asynccontextmanager
async def _held_upstream(server: _HeldStarts, **overrides: Any) -> AsyncIterator[Upstream]:
    settings = upstream_settings(**overrides)
    transport = httpx.MockTransport(server.handle)
    async with build_client(settings, transport) as client:
        yield Upstream(client, settings, WORK_SAMPLE)


def _body(n: int, account: str = "acme") -> dict[str, Any]:
    return {"account": account, "wait": False, "callback": f"http://proxy.test/callback/r.{n}"}


async def test_starts_of_one_account_overlap() -> None:
    """Ten starts of one account are all sent before the job server answers any."""
    server = _HeldStarts()
    async with _held_upstream(server) as upstream:
        starts = [
            asyncio.ensure_future(start_in_lane(upstream, _body(n), deadline=soon()))
            for n in range(10)
        ]
        await server.until_arrived(10)
        server.release.set()
        answers = await asyncio.gather(*starts)
    assert server.most_open == 10
    assert [answer.body for answer in answers] == [RUNNING] * 10


async def test_an_accounts_starts_in_flight_are_bounded_and_go_in_order() -> None:
    """With upstream_max_per_account 3, ten starts go 3 at a time, first come first sent."""
    server = _HeldStarts()
    async with _held_upstream(server, upstream_max_per_account=3) as upstream:
        starts = []
        for n in range(10):
            starts.append(asyncio.ensure_future(start_in_lane(upstream, _body(n), deadline=soon())))
            await asyncio.sleep(0)  # each enters the lane in turn
        await server.until_arrived(3)
        held_back = len(server.arrived)
        server.release.set()
        await asyncio.gather(*starts)
    assert held_back == 3
    assert server.most_open == 3
    assert server.arrived == [_body(n)["callback"] for n in range(10)]
    assert len(upstream.lanes) == 0


async def test_other_accounts_are_not_held_back_by_a_full_lane() -> None:
    """A full lane of one account does not delay another account's start."""
    server = _HeldStarts()
    async with _held_upstream(server, upstream_max_per_account=1) as upstream:
        first = asyncio.ensure_future(start_in_lane(upstream, _body(0, "a"), deadline=soon()))
        queued = asyncio.ensure_future(start_in_lane(upstream, _body(1, "a"), deadline=soon()))
        other = asyncio.ensure_future(start_in_lane(upstream, _body(2, "b"), deadline=soon()))
        await server.until_arrived(2)
        arrived = list(server.arrived)
        server.release.set()
        await asyncio.gather(first, queued, other)
    assert arrived == [_body(0, "a")["callback"], _body(2, "b")["callback"]]


async def test_a_start_cancelled_while_waiting_in_its_lane_is_never_sent() -> None:
    """A waiting start whose caller gives up is skipped: the job server never sees it."""
    server = _HeldStarts()
    async with _held_upstream(server, upstream_max_per_account=1) as upstream:
        first = asyncio.ensure_future(start_in_lane(upstream, _body(0), deadline=soon()))
        abandoned = asyncio.ensure_future(start_in_lane(upstream, _body(1), deadline=soon()))
        last = asyncio.ensure_future(start_in_lane(upstream, _body(2), deadline=soon()))
        await server.until_arrived(1)
        abandoned.cancel()
        server.release.set()
        await asyncio.gather(first, last)
    assert abandoned.cancelled()
    assert server.arrived == [_body(0)["callback"], _body(2)["callback"]]
    assert len(upstream.lanes) == 0


async def test_a_deadline_reached_in_the_lane_is_a_job_timeout() -> None:
    """A start still waiting for its lane at the deadline ends JobTimeout, never sent."""
    server = _HeldStarts()
    async with _held_upstream(server, upstream_max_per_account=1) as upstream:
        first = asyncio.ensure_future(start_in_lane(upstream, _body(0), deadline=soon()))
        await server.until_arrived(1)
        with pytest.raises(JobTimeout):
            await start_in_lane(upstream, _body(1), deadline=time.monotonic() + 0.1)
        server.release.set()
        await first
    assert server.arrived == [_body(0)["callback"]]


async def test_a_busy_answer_pauses_the_account_for_its_retry_after() -> None:
    """After a 503 with Retry-After, no start of that account is sent before it has passed."""
    sent: list[tuple[str, float]] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        body = httpx.Response(200, content=request.content).json()
        sent.append((body["account"], time.monotonic()))
        if len(sent) == 1:
            return httpx.Response(503, headers={"Retry-After": "0.3"}, json={"error": "busy"})
        return httpx.Response(200, json=RUNNING)

    settings = upstream_settings(upstream_max_per_account=8)
    async with build_client(settings, httpx.MockTransport(handle)) as client:
        upstream = Upstream(client, settings, WORK_SAMPLE)
        await start_in_lane(upstream, _body(0, "busy"), deadline=soon())
        refused_at = sent[0][1]
        # The retry above was sent after the pause; so is a new start of the account.
        await asyncio.gather(
            start_in_lane(upstream, _body(1, "busy"), deadline=soon()),
            start_in_lane(upstream, _body(2, "calm"), deadline=soon()),
        )
    assert all(at >= refused_at + 0.3 - 0.01 for account, at in sent[1:] if account == "busy")


def test_a_burst_of_busy_answers_halves_the_limit_once() -> None:
    """Busy answers arriving while the lane is paused do not halve it again."""

    async def scenario() -> list[int]:
        lanes = AccountLanes(16, total=1_000)
        keeper = await lanes.enter("a")  # keeps the lane alive throughout
        held = [await lanes.enter("a") for _ in range(4)]
        seen = []
        for lane, seq in held:
            lanes.pause(lane, 0.05)
            seen.append(lane.limit)
            lanes.leave(lane, seq, Fate.ANSWERED)
        lane, seq = await lanes.enter("a")  # waits out the pause
        lanes.leave(lane, seq, Fate.ANSWERED, accepted=True)
        seen.append(lane.limit)
        lanes.leave(*keeper, Fate.ANSWERED)
        seen.append(len(lanes))
        return seen

    assert asyncio.run(scenario()) == [8, 8, 8, 8, 9, 0]


async def test_a_withdrawn_start_keeps_its_place_until_a_later_start_is_answered() -> None:
    """A start given up without an answer still counts towards its account's limit
    until a start sent after it is answered: the job server is done with it then."""
    lanes = AccountLanes(per_account=2, total=100)
    withdrawn = await lanes.enter("a")
    live = await lanes.enter("a")
    lanes.leave(*withdrawn, Fate.UNKNOWN)
    third = asyncio.ensure_future(lanes.enter("a"))
    await asyncio.sleep(0)
    assert not third.done()  # the withdrawn start still holds its place
    assert lanes.in_flight == 1  # but not a connection
    lanes.leave(*live, Fate.ANSWERED)
    lane, _ = await asyncio.wait_for(third, 1)
    assert lane.in_flight == 1


async def test_an_answer_of_an_earlier_start_frees_no_later_withdrawn_place() -> None:
    """Only a start sent after a withdrawn one tells that the job server is done with it."""
    lanes = AccountLanes(per_account=2, total=100)
    earlier = await lanes.enter("a")
    withdrawn = await lanes.enter("a")
    lanes.leave(*withdrawn, Fate.UNKNOWN)
    lanes.leave(*earlier, Fate.ANSWERED)
    lane = withdrawn[0]
    assert (lane.in_flight, len(lane.withdrawn)) == (1, 1)


async def test_a_lane_holding_only_withdrawn_starts_lets_one_start_go() -> None:
    """Clients that all left cannot block their account: with every place held by
    withdrawn starts, one live start still goes, and its answer frees them all."""
    lanes = AccountLanes(per_account=2, total=100)
    for place in [await lanes.enter("a"), await lanes.enter("a")]:
        lanes.leave(*place, Fate.UNKNOWN)
    lane, seq = await asyncio.wait_for(lanes.enter("a"), 1)
    blocked = asyncio.ensure_future(lanes.enter("a"))
    await asyncio.sleep(0)
    assert not blocked.done()
    lanes.leave(lane, seq, Fate.ANSWERED)
    await asyncio.wait_for(blocked, 1)
    assert lane.in_flight == 1


async def test_a_start_never_sent_gives_its_place_back_at_once() -> None:
    """A start that could not connect is no withdrawn start: its place is free again."""
    lanes = AccountLanes(per_account=1, total=100)
    lanes.leave(*await lanes.enter("a"), Fate.NOT_SENT)
    assert len(lanes) == 0


async def test_withdrawn_places_are_given_back_after_their_time() -> None:
    """Withdrawn starts that no later answer clears free their places after withdrawn_ttl."""
    lanes = AccountLanes(per_account=1, total=100, withdrawn_ttl=0.05)
    lane, seq = await lanes.enter("a")
    lanes.leave(lane, seq, Fate.UNKNOWN)
    assert len(lanes) == 1
    await asyncio.sleep(0.1)
    assert len(lanes) == 0


async def test_the_wait_for_a_lane_does_not_use_up_the_retry_budget() -> None:
    """A start that waited longer than the retry budget for its turn is still retried
    after a refused connection."""
    calls: list[str] = []
    first_arrived = asyncio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        callback = httpx.Response(200, content=request.content).json()["callback"]
        calls.append(callback)
        if len(calls) == 1:
            first_arrived.set()
            await asyncio.sleep(0.6)  # holds the account's only place past the budget
        elif len(calls) == 2:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=RUNNING)

    settings = upstream_settings(upstream_max_per_account=1, start_retry_budget=0.3)
    async with build_client(settings, httpx.MockTransport(handle)) as client:
        upstream = Upstream(client, settings, WORK_SAMPLE)
        first = asyncio.ensure_future(start_in_lane(upstream, _body(0), deadline=soon()))
        async with asyncio.timeout(5):
            await first_arrived.wait()
        second = await start_in_lane(upstream, _body(1), deadline=soon())
        await first
    assert second.body == RUNNING
    assert calls == [_body(0)["callback"], _body(1)["callback"], _body(1)["callback"]]


def test_starts_in_flight_never_exceed_the_pool_and_accounts_take_turns() -> None:
    """With the pool full, waiting starts get connections as they free up, one account
    after another rather than one account's whole queue first."""

    async def scenario() -> tuple[int, list[str]]:
        lanes = AccountLanes(per_account=10, total=2)
        held = [await lanes.enter("a"), await lanes.enter("a")]
        order: list[str] = []

        async def start(account: str) -> None:
            lane, seq = await lanes.enter(account)
            order.append(account)
            lanes.leave(lane, seq, Fate.ANSWERED, accepted=True)

        waiting = [asyncio.ensure_future(start(account)) for account in "aaabbb"]
        await asyncio.sleep(0)
        most = lanes.in_flight
        for lane, seq in held:
            lanes.leave(lane, seq, Fate.ANSWERED, accepted=True)
        await asyncio.gather(*waiting)
        return most, order

    most, order = asyncio.run(scenario())
    assert most == 2
    assert order[:4] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    assert sorted(order) == sorted("aaabbb")
