"""Shared mode in the predictions dialect: webhooks landing on another replica reach the
replica that holds their clients, as the work sample's callbacks do."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import run_program
from tests.proxy.processes import metric
from tests.proxy.shared.test_shared import RedisServer, pytestmark, redis_server, replica

__all__ = ["pytestmark", "redis_server"]  # the fixture and the skip, shared with test_shared

DIALECT = ("--upstream-dialect", "predictions")
JOBS = 20


async def test_webhooks_landing_on_another_replica_are_delivered(
    redis_server: RedisServer,
) -> None:
    """Predictions held on replica A, their webhooks all landing on replica B: every
    client gets its own prediction, succeeded."""
    async with (
        run_program("jobserver", "--dialect", "predictions") as jobserver,
        replica(jobserver, redis_server.url, "b", *DIALECT) as b,
        replica(jobserver, redis_server.url, "a", *DIALECT, "--public-url", b.url) as a,
        httpx.AsyncClient(base_url=a.url, timeout=20) as client,
    ):
        headers = {"authorization": "Bearer r8_shared", "prefer": "wait"}
        answers = await asyncio.gather(
            *(
                client.post("/v1/predictions", json={"input": {"n": n}}, headers=headers)
                for n in range(JOBS)
            )
        )
        forwarded = await metric(b.url, 'jobproxy_callbacks_total{outcome="ok"}')
    assert [answer.status_code for answer in answers] == [200] * JOBS
    predictions = [answer.json() for answer in answers]
    assert {p["status"] for p in predictions} == {"succeeded"}
    assert sorted(p["input"]["n"] for p in predictions) == list(range(JOBS))
    assert forwarded == JOBS
