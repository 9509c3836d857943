"""Signed callbacks in every dialect: the simulator signs its callbacks (Standard
Webhooks) with the secret it shares with the proxy, which takes only those that check."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from tests.conformance.upstreams import (
    SPEAKERS,
    Faults,
    Speaker,
    Upstream,
    proxy_in_front,
    simulator,
)
from tests.conftest import eventually
from tests.proxy.conftest import sample

SECRET = "whsec_" + "c2hhcmVkLXNlY3JldC1mb3ItdGVzdHM="  # base64 of a shared secret
JOBS = 10
OK = 'jobproxy_callbacks_total{outcome="ok"}'
DUPLICATE = 'jobproxy_callbacks_total{outcome="duplicate"}'
BAD_SIGNATURE = 'jobproxy_callbacks_total{outcome="bad_signature"}'


def signing_simulator(dialect: str, secret: str) -> AbstractAsyncContextManager[Upstream]:
    """The simulator in ``dialect``, signing its callbacks with ``secret``, sending each
    once (a refused one is not retried)."""
    shape = simulator(dialect=dialect, callback_secret=secret, callback_attempts=1)
    return shape(Faults())


@pytest.mark.parametrize("dialect", list(SPEAKERS))
async def test_signed_callbacks_are_taken(dialect: str) -> None:
    """Callbacks signed with the shared secret answer every held job, by callback."""
    speaker: Speaker = SPEAKERS[dialect]
    async with (
        signing_simulator(dialect, SECRET) as upstream,
        proxy_in_front(upstream.url, upstream_dialect=dialect, callback_secret=SECRET) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=20) as client,
    ):
        answers = await asyncio.gather(
            *(client.post(speaker.path, **speaker.held("signed")) for _ in range(JOBS))
        )

        async def every_callback_taken() -> bool:
            # Each signed callback checks: it answers its job, or finds it answered
            # already (by a status poll, if it was late).
            text = (await client.get("/metrics")).text
            return sample(text, OK) + sample(text, DUPLICATE) == JOBS

        await eventually(every_callback_taken, timeout=20)
        metrics = (await client.get("/metrics")).text
    assert [speaker.state(answer.json()) for answer in answers] == [speaker.completed] * JOBS
    assert sample(metrics, BAD_SIGNATURE) == 0


@pytest.mark.parametrize("dialect", list(SPEAKERS))
async def test_callbacks_signed_with_another_secret_are_refused(dialect: str) -> None:
    """A job server with the wrong secret: its callbacks are refused (401), and the held
    jobs are answered by status polls instead."""
    speaker: Speaker = SPEAKERS[dialect]
    wrong = "whsec_" + "YW5vdGhlci1zZWNyZXQtYWx0b2dldGhlcg=="
    async with (
        signing_simulator(dialect, wrong) as upstream,
        proxy_in_front(upstream.url, upstream_dialect=dialect, callback_secret=SECRET) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=20) as client,
    ):
        answers = await asyncio.gather(
            *(client.post(speaker.path, **speaker.held("forged")) for _ in range(3))
        )

        async def every_callback_refused() -> bool:
            return sample((await client.get("/metrics")).text, BAD_SIGNATURE) == 3

        await eventually(every_callback_refused, timeout=20)
        polls = await upstream.count("status_polls")
    assert [speaker.state(answer.json()) for answer in answers] == [speaker.completed] * 3
    assert polls >= 3
