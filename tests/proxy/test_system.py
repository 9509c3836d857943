"""The proxy in front of the real job server, both apps in the test's event loop.

Each test's point is what the two apps do together, not what a process does: they run
in-process (``in_process_system``), the proxy calling the job server and the job server
calling back the proxy through ``httpx.ASGITransport``. Signals, exit codes and the
console scripts are tested with real processes in test_e2e.py.
"""

from __future__ import annotations

from jobserver.proofs import make_proof
from tests.proxy.conftest import SystemFactory

FAST_JOBS = {"job_duration": 0.05, "job_duration_spread": 0.0}


async def test_a_held_job_round_trips_through_both_apps(in_process_system: SystemFactory) -> None:
    """A held request starts a job on the real job server, whose callback answers it."""
    async with in_process_system(FAST_JOBS) as system:
        answer = await system.client.post("/proxy", json={"account": "acme", "wait": True})
        delivered = await system.metric('jobproxy_callbacks_total{outcome="ok"}')
        health = (await system.jobserver.get("/healthz")).json()
    secret = system.jobserver_state["settings"].secret.encode()
    job = answer.json()
    assert answer.status_code == 200
    assert job["state"] == "completed"
    assert job["proof"] == make_proof(secret, job["id"], "acme", job["startedAt"])
    assert delivered == 1
    assert health["jobs_started"] == 1
