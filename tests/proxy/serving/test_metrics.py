"""The proxy's metrics: what /metrics exports."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tests.conftest import eventually
from tests.proxy.conftest import ProxyFactory, ProxyUnderTest, sample


async def test_metrics_export_process_series_and_no_created_series(proxy: ProxyUnderTest) -> None:
    """/metrics carries the process collector's series and no *_created series."""
    request, job_id = await proxy.held_job()
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    await request
    text = (await proxy.client.get("/metrics")).text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert "process_cpu_seconds_total" in names
    assert "process_resident_memory_bytes" in names
    assert 'jobproxy_requests_total{outcome="completed"} 1.0' in text
    assert not [name for name in names if name.endswith("_created")]


POLL_QUICKLY = {
    "poll_initial": 0.05,
    "poll_backoff_base": 0.01,
    "poll_backoff_cap": 0.02,
    "poll_lost_grace": 0.1,
    "poll_lost_after": 0.3,
}


async def test_a_lost_job_has_no_duration_and_is_counted_lost(
    proxy_factory: ProxyFactory,
) -> None:
    """A job shown lost by status polls is answered job_lost: counted among the jobs
    whose callback was late as lost, not in the duration histogram."""
    async with proxy_factory(**POLL_QUICKLY) as proxy:
        request, job_id = await proxy.held_job()
        del proxy.upstream.jobs[job_id]  # the job server forgot it: its status is 404
        answer = await request
        text = (await proxy.client.get("/metrics")).text
    assert (answer.status_code, answer.json()["error"]) == (502, "job_lost")
    assert sample(text, 'jobproxy_status_poll_fallbacks_total{answered_by="lost"}') == 1
    assert sample(text, 'jobproxy_status_poll_fallbacks_total{answered_by="poll"}') == 0
    assert 'jobproxy_job_duration_seconds_count{via="poll"}' not in text
    assert 'jobproxy_job_duration_seconds_count{via="callback"}' not in text


async def test_status_polls_that_get_no_answer_are_upstream_errors(
    proxy_factory: ProxyFactory,
) -> None:
    """Status polls answered 500 count in jobproxy_upstream_errors_total, by kind; the
    job is answered by its callback once it comes."""
    async with proxy_factory(**{**POLL_QUICKLY, "poll_lost_after": 30.0}) as proxy:
        request, job_id = await proxy.held_job()
        proxy.upstream.status_codes[job_id] = 500

        async def polled_twice() -> bool:
            text = (await proxy.client.get("/metrics")).text
            return sample(text, 'jobproxy_upstream_errors_total{kind="status_error"}') >= 2

        await eventually(polled_twice)
        await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
        answer = await request
        text = (await proxy.client.get("/metrics")).text
    assert answer.json()["state"] == "completed"
    assert sample(text, 'jobproxy_status_poll_fallbacks_total{answered_by="callback"}') == 1
    assert sample(text, 'jobproxy_job_duration_seconds_count{via="callback"}') == 1


async def test_a_result_after_the_client_left_is_late_logged_and_counted(
    proxy: ProxyUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """The client hangs up; its job's callback then comes: 404, logged at INFO, counted
    as late (not as a duplicate)."""
    request, job_id = await proxy.held_job()
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await eventually(lambda: len(proxy.services.waiters) == 0)
    with caplog.at_level(logging.INFO, logger="proxy"):
        answer = await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    text = (await proxy.client.get("/metrics")).text
    assert answer.status_code == 404
    assert sample(text, 'jobproxy_callbacks_total{outcome="late"}') == 1
    assert sample(text, 'jobproxy_callbacks_total{outcome="duplicate"}') == 0
    (record,) = [r for r in caplog.records if "its result is dropped" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert job_id in record.getMessage()
