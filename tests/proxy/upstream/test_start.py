"""Calls to the job server under faults: which failures are retried, budgets and deadlines.

How an account's starts share its lane is in ``test_upstream_lanes.py``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.errors import JobTimeout, UpstreamBadResponse, UpstreamRejected, UpstreamUnavailable
from proxy.upstream.client import build_client, native_transport, nothing_was_sent
from proxy.upstream.start import RETRY_CAP, Upstream, backoff_delay
from tests.conftest import closed_port, run_server
from tests.proxy.conftest import (
    RUNNING,
    UPSTREAM_URL,
    WORK_SAMPLE,
    soon,
    start_in_lane,
    upstream_settings,
)

START_URL = f"{UPSTREAM_URL}/start"
BODY = {"account": "acme", "wait": False, "callback": "http://proxy.test/callback/r.t"}
# Scheduling slack on a loaded machine: a call may end this much after its budget.
SLACK = 0.25


@contextlib.asynccontextmanager
async def _upstream(**overrides: Any) -> AsyncIterator[Upstream]:
    """An Upstream as the app builds it: on the project's transport when the settings
    choose it (its starts sent as prebuilt bytes), else on httpx's pool (respx mocks it)."""
    settings = upstream_settings(**overrides)
    native = native_transport(settings)
    async with build_client(settings, native) as client:
        yield Upstream(client, settings, WORK_SAMPLE, native)


@pytest.fixture
async def mock() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(base_url=UPSTREAM_URL, assert_all_called=False) as router:
        yield router


# Retried: nothing can have been started.


async def test_connection_refused_is_retried(mock: respx.MockRouter) -> None:
    """A refused connection is retried, and the later answer is returned."""
    route = mock.post("/start").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=RUNNING)]
    )
    async with _upstream() as upstream:
        answer = await start_in_lane(upstream, BODY, deadline=soon())
    assert answer.status_code == 200
    assert answer.body == RUNNING
    assert route.call_count == 2


async def test_start_sends_the_body_as_json(mock: respx.MockRouter) -> None:
    """/start receives the body unchanged, as JSON."""
    route = mock.post("/start").respond(200, json=RUNNING)
    async with _upstream() as upstream:
        await start_in_lane(upstream, BODY, deadline=soon())
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
        answer = await start_in_lane(upstream, BODY, deadline=soon())
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
        await start_in_lane(upstream, BODY, deadline=soon())
    assert time.monotonic() - began >= 0.3
    assert route.call_count == 2


async def test_retry_after_beyond_the_budget_gives_up_at_once(mock: respx.MockRouter) -> None:
    """A Retry-After longer than the retry budget ends the call now, not after sleeping."""
    route = mock.post("/start").respond(503, headers={"Retry-After": "30"}, json={"e": 1})
    async with _upstream(start_retry_budget=0.5) as upstream:
        began = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as raised:
            await start_in_lane(upstream, BODY, deadline=soon())
    assert time.monotonic() - began < 0.5
    assert route.call_count == 1
    assert "503" in raised.value.detail


async def test_upstream_down_for_good_ends_within_the_budget(mock: respx.MockRouter) -> None:
    """With the job server refusing every connection, the call fails within its budget."""
    route = mock.post("/start").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream(start_retry_budget=0.4) as upstream:
        began = time.monotonic()
        with pytest.raises(UpstreamUnavailable):
            await start_in_lane(upstream, BODY, deadline=soon())
    assert time.monotonic() - began < 0.4 + SLACK
    assert route.call_count >= 2


async def test_zero_budget_means_a_single_attempt(mock: respx.MockRouter) -> None:
    """start_retry_budget = 0 makes exactly one attempt."""
    route = mock.post("/start").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream(start_retry_budget=0.0) as upstream:
        with pytest.raises(UpstreamUnavailable):
            await start_in_lane(upstream, BODY, deadline=soon())
    assert route.call_count == 1


# Never past the deadline.


async def test_retries_stop_at_the_deadline(mock: respx.MockRouter) -> None:
    """A deadline shorter than the retry budget ends the retries at the deadline."""
    mock.post("/start").mock(side_effect=httpx.ConnectError("refused"))
    async with _upstream(start_retry_budget=30.0) as upstream:
        began = time.monotonic()
        with pytest.raises((UpstreamUnavailable, JobTimeout)):
            await start_in_lane(upstream, BODY, deadline=began + 0.3)
    assert time.monotonic() - began < 0.3 + SLACK


async def test_busy_upstream_is_not_retried_past_the_deadline(mock: respx.MockRouter) -> None:
    """Even with Retry-After: 0 the retries of a busy job server end at the deadline."""
    mock.post("/start").respond(503, headers={"Retry-After": "0"})
    async with _upstream(start_retry_budget=30.0) as upstream:
        began = time.monotonic()
        with pytest.raises((UpstreamUnavailable, JobTimeout)):
            await start_in_lane(upstream, BODY, deadline=began + 0.2)
    assert time.monotonic() - began < 0.2 + SLACK


async def test_passed_deadline_makes_no_call(mock: respx.MockRouter) -> None:
    """A deadline already passed is a JobTimeout without calling the job server."""
    route = mock.post("/start").respond(200, json=RUNNING)
    async with _upstream() as upstream:
        with pytest.raises(JobTimeout):
            await start_in_lane(upstream, BODY, deadline=time.monotonic() - 1)
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
            await start_in_lane(upstream, BODY, deadline=soon())
    assert route.call_count == 1


async def test_500_is_not_retried(mock: respx.MockRouter) -> None:
    """A 500 from the job server is a bad response after exactly one call."""
    route = mock.post("/start").respond(500, json={"error": "internal_error"})
    async with _upstream() as upstream:
        with pytest.raises(UpstreamBadResponse) as raised:
            await start_in_lane(upstream, BODY, deadline=soon())
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
                await start_in_lane(upstream, BODY, deadline=soon())
    assert route.call_count == 2


# Answers passed on or refused.


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_4xx_is_rejected_with_status_and_body(mock: respx.MockRouter, status: int) -> None:
    """A 4xx (other than 429) becomes UpstreamRejected carrying the status and the answer."""
    answer = {"error": "bad_request", "detail": "account: banned"}
    route = mock.post("/start").respond(status, json=answer)
    async with _upstream() as upstream:
        with pytest.raises(UpstreamRejected) as raised:
            await start_in_lane(upstream, BODY, deadline=soon())
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
            await start_in_lane(upstream, BODY, deadline=soon())


async def test_2xx_json_is_passed_on(mock: respx.MockRouter) -> None:
    """Any 2xx JSON answer is returned with its status, even one that is not an object."""
    mock.post("/start").mock(
        side_effect=[httpx.Response(202, json=RUNNING), httpx.Response(200, json=[1])]
    )
    async with _upstream() as upstream:
        first = await start_in_lane(upstream, BODY, deadline=soon())
        second = await start_in_lane(upstream, BODY, deadline=soon())
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
        settings = upstream_settings(
            upstream_url=f"http://127.0.0.1:{port}", upstream_transport="native"
        )
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
                await start_in_lane(upstream, BODY, deadline=soon())
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
        answer = await start_in_lane(
            upstream, {"account": "a", "wait": False}, deadline=time.monotonic() + 5
        )
    assert answer.body["id"] == "abc1234567890"
