"""End to end: real ``jobserver`` and ``jobproxy`` processes on loopback, real jobclient."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.harness import ServerProcess
from tests.conftest import run_program
from tests.proxy.processes import metric, run_jobclient, system, wait_for_metric

ROOT = Path(__file__).parents[2]
SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="


async def test_fifty_jobs_through_the_proxy_pass(report_figure: Callable[[str], None]) -> None:
    """The jobclient's 50 jobs through the proxy all succeed within the 5 s deadline."""
    async with system() as (_, proxy):
        code, report = await run_jobclient(f"{proxy.url}/proxy")
    report_figure(f"jobclient, 50 jobs of 0.5 s through the proxy: total {report['total']} s")
    assert report["result"] == "PASSED", report
    assert code == 0


async def test_fifty_jobs_pass_across_a_100_ms_round_trip(
    report_figure: Callable[[str], None],
) -> None:
    """With the job server 50 ms away each way, the 50 jobs still pass within 5 s."""
    async with system(["--latency", "0.05"]) as (_, proxy):
        code, report = await run_jobclient(f"{proxy.url}/proxy")
    report_figure(f"jobclient, 50 jobs through the proxy, 100 ms RTT: total {report['total']} s")
    assert report["result"] == "PASSED", report
    assert code == 0


async def test_an_accounts_starts_reach_the_job_server_together() -> None:
    """Starts of one account wait at the job server's gate together, not one by one in
    the proxy: while the first holds the gate for a second, the others join its queue."""
    flags = ["--latency", "0.05", "--start-latency", "1.0"]
    async with (
        system(flags) as (jobserver, proxy),
        httpx.AsyncClient(timeout=30) as client,
    ):
        answers = await asyncio.gather(
            *(
                client.post(f"{proxy.url}/proxy", json={"account": "together", "wait": True})
                for _ in range(5)
            )
        )
        health = (await client.get(f"{jobserver.url}/healthz")).json()
    assert [answer.status_code for answer in answers] == [200] * 5
    assert health["start_queue_peak"] >= 2


async def test_lost_callbacks_and_refused_starts_still_pass() -> None:
    """30% dropped callbacks and the first 5 starts answered 503: all 50 jobs still pass."""
    faults = ["--callback-drop-rate", "0.3", "--start-error-count", "5", "--seed", "7"]
    async with system(faults) as (_, proxy):
        code, report = await run_jobclient(f"{proxy.url}/proxy")
        polled = await metric(proxy.url, 'jobproxy_status_poll_fallbacks_total{answered_by="poll"}')
    assert report["result"] == "PASSED", report
    assert code == 0
    assert polled > 0


async def test_duplicate_callbacks_answer_each_job_once() -> None:
    """With every callback sent twice, each client still gets exactly one answer."""
    async with system(["--callback-duplicate-rate", "1", "--seed", "3"]) as (_, proxy):
        code, report = await run_jobclient(f"{proxy.url}/proxy", "--jobs", "20")
        ok = await metric(proxy.url, 'jobproxy_callbacks_total{outcome="ok"}')
        duplicates = await wait_for_metric(
            proxy.url, 'jobproxy_callbacks_total{outcome="duplicate"}', lambda v: v >= 20
        )
    assert (code, report["result"]) == (0, "PASSED"), report
    assert ok == 20
    assert duplicates == 20


async def test_forged_and_unsigned_callbacks_are_refused() -> None:
    """With a callback secret, unsigned or forged callbacks get 401 and the job is unaffected."""
    secret = ["--callback-secret", SECRET]
    async with system(secret, secret) as (_, proxy), httpx.AsyncClient(timeout=10) as client:
        held = asyncio.ensure_future(
            client.post(f"{proxy.url}/proxy", json={"account": "sig", "wait": True})
        )
        await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v >= 1)
        # The signature is checked before the token, so a made-up token shows the refusal.
        callback = f"{proxy.url}/callback/replica.unguessed-token"
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


async def test_abandoned_clients_leave_nothing_pending() -> None:
    """200 clients that give up after 0.15 s leave jobproxy_pending_jobs at 0."""
    async with system() as (_, proxy):
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(limits=limits, timeout=0.15) as impatient:

            async def give_up(n: int) -> None:
                with contextlib.suppress(httpx.TimeoutException):
                    body = {"account": f"a{n % 10}", "wait": True}
                    await impatient.post(f"{proxy.url}/proxy", json=body)

            await asyncio.gather(*(give_up(n) for n in range(200)))
        pending = await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v == 0)
    assert pending == 0


async def test_a_client_gone_before_its_start_was_sent_starts_no_job() -> None:
    """A client that leaves while its start waits in the proxy gets no job started, and
    stops counting as pending at once."""
    async with (
        system(
            ["--start-latency", "1.0"], proxy_env={"JOBPROXY_UPSTREAM_MAX_PER_ACCOUNT": "1"}
        ) as (jobserver, proxy),
        httpx.AsyncClient(timeout=30) as client,
    ):
        # With one start per account in flight, the second waits in the proxy's lane
        # while the first holds the job server's gate for a second.
        first = asyncio.ensure_future(
            client.post(f"{proxy.url}/proxy", json={"account": "lane", "wait": True})
        )
        await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v >= 1)
        async with httpx.AsyncClient(timeout=0.3) as impatient:
            with contextlib.suppress(httpx.TimeoutException):
                await impatient.post(f"{proxy.url}/proxy", json={"account": "lane", "wait": True})
        pending = await metric(proxy.url, "jobproxy_pending_jobs")
        answer = await first
        health = (await client.get(f"{jobserver.url}/healthz")).json()
    assert pending == 1
    assert answer.status_code == 200
    assert health["jobs_started"] == 1


async def test_jobs_a_restarted_job_server_forgot_are_answered_job_lost() -> None:
    """After the job server restarts with empty memory, 100 held requests are answered
    502 job_lost naming their job, within seconds rather than at the 30 s deadline."""
    async with (
        run_program("jobserver", "--job-duration", "5") as forgetful,
        run_program("jobproxy", "--upstream-url", forgetful.url) as proxy,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client,
    ):
        held = [
            asyncio.ensure_future(
                client.post(f"{proxy.url}/proxy", json={"account": f"f{n % 10}", "wait": True})
            )
            for n in range(100)
        ]
        await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v >= 100)
        async with asyncio.timeout(10):
            while (await client.get(f"{forgetful.url}/healthz")).json()["jobs_started"] < 100:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await forgetful.stop()
        port = forgetful.url.rsplit(":", 1)[1]
        async with run_program("jobserver", "--port", port):
            began = time.monotonic()
            answers = await asyncio.gather(*held)
            took = time.monotonic() - began
    assert [answer.status_code for answer in answers] == [502] * 100
    bodies = [answer.json() for answer in answers]
    assert {body["error"] for body in bodies} == {"job_lost"}
    assert all(body["job_id"] in body["detail"] for body in bodies)
    assert took < 15


async def sigterm_while_held(proxy: ServerProcess, accounts: list[str]) -> list[httpx.Response]:
    """Hold one request per entry of ``accounts``, SIGTERM the proxy, collect the answers."""
    limits = httpx.Limits(max_connections=len(accounts) + 50)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        held = [
            asyncio.ensure_future(
                client.post(f"{proxy.url}/proxy", json={"account": account, "wait": True})
            )
            for account in accounts
        ]
        await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v >= len(held))
        proxy.process.send_signal(signal.SIGTERM)
        return await asyncio.gather(*held)


async def test_sigterm_answers_every_held_request() -> None:
    """SIGTERM with 100 held requests: all 100 still get their job JSON, and the drain's
    log line accounts for every request it held (however many ended before it began)."""
    async with system() as (_, proxy):
        answers = await sigterm_while_held(proxy, [f"t{n % 20}" for n in range(100)])
        code = await proxy.process.wait()
    assert [a.status_code for a in answers] == [200] * 100
    assert all(a.json()["state"] == "completed" for a in answers)
    assert code == 0
    drained = re.search(
        r"drained (\d+) held requests in [\d.]+ s: (\d+) finished, (\d+) answered 503",
        proxy.log_tail(),
    )
    assert drained is not None
    held, finished, refused = map(int, drained.groups())
    assert held <= 100
    assert (finished, refused) == (held, 0)


async def test_while_draining_callbacks_get_in_and_new_requests_get_503() -> None:
    """After SIGTERM the proxy still listens: held jobs are answered by their callbacks
    (no status poll), and a new request is refused with 503 shutting_down."""
    flags = ["--job-duration", "1.5", "--job-duration-spread", "0"]
    async with system(flags) as (_, proxy), httpx.AsyncClient(timeout=30) as client:
        held = [
            asyncio.ensure_future(
                client.post(f"{proxy.url}/proxy", json={"account": f"s{n}", "wait": True})
            )
            for n in range(5)
        ]
        await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v >= 5)
        proxy.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while (await client.get(f"{proxy.url}/readyz")).status_code != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        late = await client.post(f"{proxy.url}/proxy", json={"account": "x", "wait": True})
        polled = await metric(proxy.url, 'jobproxy_status_poll_fallbacks_total{answered_by="poll"}')
        answers = await asyncio.gather(*held)
    assert late.json()["error"] == "shutting_down"
    assert [answer.status_code for answer in answers] == [200] * 5
    assert polled == 0


async def test_drain_timeout_answers_the_rest_with_503() -> None:
    """Jobs outlasting the drain timeout are answered 503 JSON, never a dropped socket."""
    async with system(["--job-duration", "5"], ["--drain-timeout", "0.2"]) as (_, proxy):
        answers = await sigterm_while_held(proxy, [f"d{n}" for n in range(10)])
    assert [a.status_code for a in answers] == [503] * 10
    assert all(a.json()["error"] == "shutting_down" for a in answers)
    assert all("retry-after" in a.headers for a in answers)


async def test_upstream_down_is_502_within_the_retry_budget() -> None:
    """With nothing listening upstream, a held request gets 502 JSON within 6 s."""
    async with (
        run_program("jobproxy", "--upstream-url", "http://127.0.0.1:9") as proxy,
        httpx.AsyncClient(timeout=10) as client,
    ):
        began = time.monotonic()
        response = await client.post(f"{proxy.url}/proxy", json={"account": "a", "wait": True})
        took = time.monotonic() - began
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert took < 6


def test_docker_cmd_is_the_command_the_tests_start() -> None:
    """The image's CMD runs the same console script and flags as run_program starts."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    argv = json.loads(cmd)
    assert argv[0] == "jobproxy"
    assert argv[1::2] == ["--host", "--port"]
    assert argv[2] == "0.0.0.0"
