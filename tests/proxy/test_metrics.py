"""The proxy's metrics: what /metrics exports."""

from __future__ import annotations

from tests.proxy.conftest import ProxyUnderTest


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
