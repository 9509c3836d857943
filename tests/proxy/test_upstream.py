"""Calls to the job server under faults: which failures are retried, budgets and deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import orjson
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.config import Settings
from proxy.dialect import load_dialect
from proxy.errors import JobTimeout, UpstreamBadResponse, UpstreamRejected, UpstreamUnavailable
from proxy.upstream import (
    RETRY_CAP,
    AccountLanes,
    Fate,
    Upstream,
    UpstreamAnswer,
    backoff_delay,
    build_client,
    native_transport,
    nothing_was_sent,
)
from tests.conftest import closed_port, run_server

UPSTREAM_URL = "http://jobserver.test"
START_URL = f"{UPSTREAM_URL}/start"
BODY = {"account": "acme", "wait": False, "callback": "http://proxy.test/callback/r.t"}
WORK_SAMPLE = load_dialect("work-sample")


def _start(upstream: Upstream, body: dict[str, Any], **options: Any) -> Awaitable[UpstreamAnswer]:
    """Start ``body``'s job in the lane of its account, as the held path does."""
    return upstream.start(body["account"], orjson.dumps(body), **options)


RUNNING = {"state": "running", "id": "0123456789abcdef"}
# Scheduling slack on a loaded machine: a call may end this much after its budget.
SLACK = 0.25


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_url": UPSTREAM_URL,
        "upstream_transport": "httpx",
        "start_retry_budget": 2.0,
        "start_timeout": 1.0,
    }
    return Settings(**(values | overrides))


@contextlib.asynccontextmanager
async def _upstream(**overrides: Any) -> AsyncIterator[Upstream]:
    """An Upstream as the app builds it: on the project's transport when the settings
    choose it (its starts sent as prebuilt bytes), else on httpx's pool (respx mocks it)."""
    settings = _settings(**overrides)
    native = native_transport(settings)
    async with build_client(settings, native) as client:
        yield Upstream(client, settings, WORK_SAMPLE, native)


@pytest.fixture
async def mock() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(base_url=UPSTREAM_URL, assert_all_called=False) as router:
        yield router


def _soon(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


# Retried: nothing can have been started.


async def test_connection_refused_is_retried(mock: respx.MockRouter) -> None:
    """A refused connection is retried, and the later answer is returned."""
    route = mock.post("/start").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=RUNNING)]
    )
    async with _upstream() as upstream:
        answer = await _start(upstream, BODY, deadline=_soon())
    assert answer.status_code == 200
    assert answer.body == RUNNING
    assert route.call_count == 2


async def test_start_sends_the_body_as_json(mock: respx.MockRouter) -> None:
    """/start receives the body unchanged, as JSON."""
    route = mock.post("/start").respond(200, json=RUNNING)
    async with _upstream() as upstream:
        await _start(upstream, BODY, deadline=_soon())
    assert route.calls.last.request.url == START_URL
    assert httpx.Response(200, content=route.calls.last.request.content).json() == BODY


@pytest.mark.parametrize("status", [503, 429])
async def test_busy_answers_are_retried_honouring_retry_after(
    mock: respx.MockRouter, status: int
) -> None:
    """503 and 429 are retried after the Retry-After they carry."""
    route = mock.post("/start").mock(
        side_effect=[
            httpx.Response(status, headers={"Retry-After": "0"}, json={"error": "busy"}),
            httpx.Response(200, json=RUNNING),
        ]
    )
    async with _upstream() as upstream:
        answer = await _start(upstream, BODY, deadline=_soon())
    assert answer.body == RUNNING
    assert route.call_count == 2


async def test_retry_after_delay_is_waited_for(mock: respx.MockRouter) -> None:
    """The retry after a 503 waits at least the Retry-After the job server asked for."""
    route = mock.post("/start").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "0.3"}),
            httpx.Response(200, json=RUNNING),
        ]
    )
    async with _upstream() as upstream:
        began = time.monotonic()
        await _start(upstream, BODY, deadline=_soon())
    assert time.monotonic() - began >= 0.3
    assert route.call_count == 2


async def test_retry_after_beyond_the_budget_gives_up_at_once(mock: respx.MockRouter) -> None:
    """A Retry-After longer than the retry budget ends the call now, not after sleeping."""
    route = mock.post("/start").respond(503, headers={"Retry-After": "30"}, json={"e": 1})
    async with _upstream(start_retry_budget=0.5) as upstream:
        began = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as raised:
            await _start(upstream, BODY, deadline=_soon())
    assert time.monotonic() - began < 0.5
    assert route.call_count == 1
    assert "503" in raised.value.detail


async def test_upstream_down_for_good_ends_within_the_budget(mock: respx.MockRouter) -> None:
    """With the job server refusing every connection, the call fails within its budget."""
    route = mock.post("/start").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream(start_retry_budget=0.4) as upstream:
        began = time.monotonic()
        with pytest.raises(UpstreamUnavailable):
            await _start(upstream, BODY, deadline=_soon())
    assert time.monotonic() - began < 0.4 + SLACK
    assert route.call_count >= 2


async def test_zero_budget_means_a_single_attempt(mock: respx.MockRouter) -> None:
    """start_retry_budget = 0 makes exactly one attempt."""
    route = mock.post("/start").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream(start_retry_budget=0.0) as upstream:
        with pytest.raises(UpstreamUnavailable):
            await _start(upstream, BODY, deadline=_soon())
    assert route.call_count == 1


# Never past the deadline.


async def test_retries_stop_at_the_deadline(mock: respx.MockRouter) -> None:
    """A deadline shorter than the retry budget ends the retries at the deadline."""
    mock.post("/start").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream(start_retry_budget=30.0) as upstream:
        began = time.monotonic()
        with pytest.raises((UpstreamUnavailable, JobTimeout)):
            await _start(upstream, BODY, deadline=began + 0.3)
    assert time.monotonic() - began < 0.3 + SLACK


async def test_busy_upstream_is_not_retried_past_the_deadline(mock: respx.MockRouter) -> None:
    """Even with Retry-After: 0 the retries of a busy job server end at the deadline."""
    mock.post("/start").respond(503, headers={"Retry-After": "0"})
    async with _upstream(start_retry_budget=30.0) as upstream:
        began = time.monotonic()
        with pytest.raises((UpstreamUnavailable, JobTimeout)):
            await _start(upstream, BODY, deadline=began + 0.2)
    assert time.monotonic() - began < 0.2 + SLACK


async def test_passed_deadline_makes_no_call(mock: respx.MockRouter) -> None:
    """A deadline already passed is a JobTimeout without calling the job server."""
    route = mock.post("/start").respond(200, json=RUNNING)
    async with _upstream() as upstream:
        with pytest.raises(JobTimeout):
            await _start(upstream, BODY, deadline=time.monotonic() - 1)
    assert route.call_count == 0


# Not retried: a job may have been started.


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("server hung up"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_errors_after_sending_are_not_retried(
    mock: respx.MockRouter, error: httpx.TransportError
) -> None:
    """A failure after the request may have reached the job server is tried exactly once."""
    route = mock.post("/start").mock(side_effect=error)
    async with _upstream() as upstream:
        with pytest.raises(UpstreamBadResponse):
            await _start(upstream, BODY, deadline=_soon())
    assert route.call_count == 1


async def test_500_is_not_retried(mock: respx.MockRouter) -> None:
    """A 500 from the job server is a bad response after exactly one call."""
    route = mock.post("/start").respond(500, json={"error": "internal_error"})
    async with _upstream() as upstream:
        with pytest.raises(UpstreamBadResponse) as raised:
            await _start(upstream, BODY, deadline=_soon())
    assert route.call_count == 1
    assert "500" in raised.value.detail


async def test_502_and_504_are_not_retried(mock: respx.MockRouter) -> None:
    """Gateway errors in front of the job server are not retried either."""
    route = mock.post("/start").mock(
        side_effect=[httpx.Response(502, json={}), httpx.Response(504, json={})]
    )
    async with _upstream() as upstream:
        for _ in range(2):
            with pytest.raises(UpstreamBadResponse):
                await _start(upstream, BODY, deadline=_soon())
    assert route.call_count == 2


# Answers passed on or refused.


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_4xx_is_rejected_with_status_and_body(mock: respx.MockRouter, status: int) -> None:
    """A 4xx (other than 429) becomes UpstreamRejected carrying the status and the answer."""
    answer = {"error": "bad_request", "detail": "account: banned"}
    route = mock.post("/start").respond(status, json=answer)
    async with _upstream() as upstream:
        with pytest.raises(UpstreamRejected) as raised:
            await _start(upstream, BODY, deadline=_soon())
    assert raised.value.status_code == status
    assert raised.value.body() == {
        "error": "upstream_rejected",
        "detail": f"the job server refused the job with {status}: bad_request: account: banned",
        "upstream": answer,
    }
    assert route.call_count == 1


@pytest.mark.parametrize("status", [200, 400])
async def test_non_json_answer_is_a_bad_response(mock: respx.MockRouter, status: int) -> None:
    """An answer whose body is not JSON is UpstreamBadResponse, whatever its status."""
    mock.post("/start").respond(status, text="<html>oops</html>")
    async with _upstream() as upstream:
        with pytest.raises(UpstreamBadResponse):
            await _start(upstream, BODY, deadline=_soon())


async def test_2xx_json_is_passed_on(mock: respx.MockRouter) -> None:
    """Any 2xx JSON answer is returned with its status, even one that is not an object."""
    mock.post("/start").mock(
        side_effect=[httpx.Response(202, json=RUNNING), httpx.Response(200, json=[1])]
    )
    async with _upstream() as upstream:
        first = await _start(upstream, BODY, deadline=_soon())
        second = await _start(upstream, BODY, deadline=_soon())
    assert (first.status_code, first.body) == (202, RUNNING)
    assert second.body == [1]


# Classification of transport errors.


@pytest.mark.parametrize(
    ("error", "safe"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow connect"), True),
        (httpx.ReadTimeout("slow"), False),
        (httpx.WriteTimeout("slow"), False),
        (httpx.ReadError("reset"), False),
        (httpx.WriteError("broken pipe"), False),
        (httpx.RemoteProtocolError("hung up"), False),
        # Raised while waiting for a pooled connection, before anything is written.
        (httpx.PoolTimeout("no connection free"), True),
    ],
    ids=[
        "connect-error",
        "connect-timeout",
        "read-timeout",
        "write-timeout",
        "read-error",
        "write-error",
        "protocol-error",
        "pool-timeout",
    ],
)
def test_nothing_was_sent(error: httpx.TransportError, safe: bool) -> None:
    """Only errors that happen before the request could leave are safe to retry."""
    assert nothing_was_sent(error) is safe


def test_backoff_is_full_jitter_capped() -> None:
    """Backoff delays lie in [0, min(cap, base·2^attempt)] and never exceed the cap."""
    rng = random.Random(7)
    for attempt in range(20):
        for _ in range(50):
            delay = backoff_delay(attempt, rng)
            assert 0.0 <= delay <= min(RETRY_CAP, 0.05 * 2**attempt)


# Readiness probe.


@pytest.mark.parametrize(("status", "reachable"), [(200, True), (404, True), (500, False)])
async def test_reachable_by_status(mock: respx.MockRouter, status: int, reachable: bool) -> None:
    """The job server is reachable when it answers below 500."""
    route = mock.get("/status/0000000000000000").respond(status, json={})
    async with _upstream() as upstream:
        assert await upstream.reachable(1.0) is reachable
    assert route.call_count == 1


async def test_unreachable_when_the_connection_fails(mock: respx.MockRouter) -> None:
    """A connection error makes the job server unreachable, without raising."""
    mock.get("/status/0000000000000000").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream() as upstream:
        assert await upstream.reachable(1.0) is False


# The project's own transport.


async def test_native_transport_refused_is_safe_to_retry() -> None:
    """Through the project's transport, a refused connection is classified as nothing sent."""
    with closed_port() as port:
        settings = _settings(upstream_url=f"http://127.0.0.1:{port}", upstream_transport="native")
        async with build_client(settings, native_transport(settings)) as client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.post(f"http://127.0.0.1:{port}/start", json=BODY)
    assert nothing_was_sent(raised.value)


async def test_native_transport_closed_port_ends_unavailable_within_budget() -> None:
    """Through the project's transport, a closed port is retried and ends
    UpstreamUnavailable within the budget."""
    with closed_port() as port:
        async with _upstream(
            upstream_url=f"http://127.0.0.1:{port}",
            upstream_transport="native",
            start_retry_budget=0.3,
        ) as upstream:
            began = time.monotonic()
            with pytest.raises(UpstreamUnavailable):
                await _start(upstream, BODY, deadline=_soon())
    assert time.monotonic() - began < 0.3 + SLACK


@pytest.mark.parametrize("transport", ["native", "httpx"])
async def test_slow_answer_is_waited_for_beyond_start_timeout(transport: str) -> None:
    """start_timeout bounds connecting; a job server slow to answer /start is waited for."""

    async def slow_start(request: Request) -> JSONResponse:
        await asyncio.sleep(0.5)  # queued behind the account's other requests
        return JSONResponse({"state": "running", "id": "abc1234567890"})

    app = Starlette(routes=[Route("/start", slow_start, methods=["POST"])])
    options = {"upstream_transport": transport, "start_timeout": 0.1}
    async with run_server(app) as url, _upstream(upstream_url=url, **options) as upstream:
        answer = await _start(
            upstream, {"account": "a", "wait": False}, deadline=time.monotonic() + 5
        )
    assert answer.body["id"] == "abc1234567890"


# Account lanes: an account's starts overlap, bounded, in order.


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
    settings = _settings(**overrides)
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
            asyncio.ensure_future(_start(upstream, _body(n), deadline=_soon())) for n in range(10)
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
            starts.append(asyncio.ensure_future(_start(upstream, _body(n), deadline=_soon())))
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
        first = asyncio.ensure_future(_start(upstream, _body(0, "a"), deadline=_soon()))
        queued = asyncio.ensure_future(_start(upstream, _body(1, "a"), deadline=_soon()))
        other = asyncio.ensure_future(_start(upstream, _body(2, "b"), deadline=_soon()))
        await server.until_arrived(2)
        arrived = list(server.arrived)
        server.release.set()
        await asyncio.gather(first, queued, other)
    assert arrived == [_body(0, "a")["callback"], _body(2, "b")["callback"]]


async def test_a_start_cancelled_while_waiting_in_its_lane_is_never_sent() -> None:
    """A waiting start whose caller gives up is skipped: the job server never sees it."""
    server = _HeldStarts()
    async with _held_upstream(server, upstream_max_per_account=1) as upstream:
        first = asyncio.ensure_future(_start(upstream, _body(0), deadline=_soon()))
        abandoned = asyncio.ensure_future(_start(upstream, _body(1), deadline=_soon()))
        last = asyncio.ensure_future(_start(upstream, _body(2), deadline=_soon()))
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
        first = asyncio.ensure_future(_start(upstream, _body(0), deadline=_soon()))
        await server.until_arrived(1)
        with pytest.raises(JobTimeout):
            await _start(upstream, _body(1), deadline=time.monotonic() + 0.1)
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

    settings = _settings(upstream_max_per_account=8)
    async with build_client(settings, httpx.MockTransport(handle)) as client:
        upstream = Upstream(client, settings, WORK_SAMPLE)
        await _start(upstream, _body(0, "busy"), deadline=_soon())
        refused_at = sent[0][1]
        # The retry above was sent after the pause; so is a new start of the account.
        await asyncio.gather(
            _start(upstream, _body(1, "busy"), deadline=_soon()),
            _start(upstream, _body(2, "calm"), deadline=_soon()),
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

    settings = _settings(upstream_max_per_account=1, start_retry_budget=0.3)
    async with build_client(settings, httpx.MockTransport(handle)) as client:
        upstream = Upstream(client, settings, WORK_SAMPLE)
        first = asyncio.ensure_future(_start(upstream, _body(0), deadline=_soon()))
        async with asyncio.timeout(5):
            await first_arrived.wait()
        second = await _start(upstream, _body(1), deadline=_soon())
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
