"""The proxy in front of the real job server, both apps in the test's event loop.

Each test's point is what the two apps do together, not what a process does: they run
in-process (``in_process_system``), the proxy calling the job server and the job server
calling back the proxy through ``httpx.ASGITransport``. Signals, exit codes and the
console scripts are tested with real processes in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from jobserver.proofs import make_proof
from tests.proxy.conftest import (
    PROXY_URL,
    SystemFactory,
    jobclient_in_process,
    post_and_leave,
)

FAST_JOBS = {"job_duration": 0.05, "job_duration_spread": 0.0}
SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="
WAIT = 10.0


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


async def test_an_accounts_starts_reach_the_job_server_together(
    in_process_system: SystemFactory,
) -> None:
    """An account's starts wait at the job server's gate together, not one by one in the proxy."""
    async with in_process_system({"latency": 0.05, "start_latency": 0.2}) as system:
        answers = await asyncio.gather(
            *(
                system.client.post("/proxy", json={"account": "together", "wait": True})
                for _ in range(5)
            )
        )
        health = (await system.jobserver.get("/healthz")).json()
    assert [answer.status_code for answer in answers] == [200] * 5
    assert health["start_queue_peak"] >= 2


async def test_lost_callbacks_and_refused_starts_still_pass(
    in_process_system: SystemFactory,
) -> None:
    """30% dropped callbacks and the first 5 starts answered 503: all 50 jobs still pass."""
    faults = {"callback_drop_rate": 0.3, "start_error_count": 5, "seed": 7}
    async with in_process_system(faults) as system:
        to_proxy = httpx.ASGITransport(app=system.proxy_app)
        code, report = await jobclient_in_process(f"{PROXY_URL}/proxy", transport=to_proxy)
        polled = await system.metric('jobproxy_status_poll_fallbacks_total{answered_by="poll"}')
    assert report["result"] == "PASSED", report
    assert code == 0
    assert polled > 0


async def test_duplicate_callbacks_answer_each_job_once(in_process_system: SystemFactory) -> None:
    """With every callback sent twice, each client still gets exactly one answer."""
    async with in_process_system({"callback_duplicate_rate": 1, "seed": 3}) as system:
        to_proxy = httpx.ASGITransport(app=system.proxy_app)
        code, report = await jobclient_in_process(f"{PROXY_URL}/proxy", jobs=20, transport=to_proxy)
        ok = await system.metric('jobproxy_callbacks_total{outcome="ok"}')
        await system.callbacks_sent()
        duplicates = await system.metric('jobproxy_callbacks_total{outcome="duplicate"}')
    assert (code, report["result"]) == (0, "PASSED"), report
    assert ok == 20
    assert duplicates == 20


async def test_forged_and_unsigned_callbacks_are_refused(in_process_system: SystemFactory) -> None:
    """With a callback secret, unsigned or forged callbacks get 401 and the job is unaffected."""
    async with in_process_system({"callback_secret": SECRET}, callback_secret=SECRET) as system:
        client = system.client
        held = asyncio.ensure_future(client.post("/proxy", json={"account": "sig", "wait": True}))
        await system.next_start()
        # The signature is checked before the token, so a made-up token shows the refusal.
        callback = "/callback/replica.unguessed-token"
        fake = {"id": "0123456789abcdef", "state": "completed", "proof": "F" * 40}
        unsigned = await client.post(callback, json=fake)
        forged_headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,Zm9yZ2Vk",
        }
        forged = await client.post(callback, json=fake, headers=forged_headers)
        answer = await held
    assert unsigned.status_code == 401
    assert forged.status_code == 401
    assert forged.json()["error"] == "bad_signature"
    assert answer.status_code == 200
    assert answer.json()["state"] == "completed"
    assert answer.json()["id"] != fake["id"]


async def test_abandoned_clients_leave_nothing_pending(in_process_system: SystemFactory) -> None:
    """200 clients that give up after 0.15 s leave jobproxy_pending_jobs at 0."""
    async with in_process_system() as system:
        give_up = asyncio.Event()
        asyncio.get_running_loop().call_later(0.15, give_up.set)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(
                *(
                    post_and_leave(
                        system.proxy_app, "/proxy", {"account": f"a{n % 10}", "wait": True}, give_up
                    )
                    for n in range(200)
                )
            )
        pending = await system.metric("jobproxy_pending_jobs")
    assert pending == 0


async def test_a_client_gone_before_its_start_was_sent_starts_no_job(
    in_process_system: SystemFactory,
) -> None:
    """A client that leaves while its start waits in the proxy starts no job, nor stays pending."""
    async with in_process_system({"start_latency": 0.5}, upstream_max_per_account=1) as system:
        # With one start per account in flight, the second waits in the proxy's lane
        # while the first holds the job server's gate.
        first = asyncio.ensure_future(
            system.client.post("/proxy", json={"account": "lane", "wait": True})
        )
        await system.next_start()
        # Gone already when the proxy first looks for it, which it does once the start
        # has to wait.
        gone = asyncio.Event()
        gone.set()
        async with asyncio.timeout(WAIT):
            await post_and_leave(
                system.proxy_app, "/proxy", {"account": "lane", "wait": True}, gone
            )
        pending = await system.metric("jobproxy_pending_jobs")
        answer = await first
        health = (await system.jobserver.get("/healthz")).json()
    assert pending == 1
    assert answer.status_code == 200
    assert health["jobs_started"] == 1
