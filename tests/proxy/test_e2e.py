"""End to end: real ``jobserver`` and ``jobproxy`` processes on loopback, real jobclient."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import httpx

from jobserver.client import main as jobclient_main
from tests.conftest import run_server

ROOT = Path(__file__).parents[2]
SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="


async def run_jobclient(url: str, *flags: str) -> tuple[int, dict[str, object]]:
    """Run the jobclient in a worker thread (it owns its own event loop) and parse --json."""
    argv = ["--url", url, "--account", "e2e", "--json", *flags]
    captured: list[str] = []

    def call() -> int:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = jobclient_main(argv)
        captured.append(out.getvalue())
        return code

    code = await asyncio.to_thread(call)
    return code, json.loads(captured[0])


async def metric(client: httpx.AsyncClient, proxy_url: str, name: str) -> float:
    text = (await client.get(f"{proxy_url}/metrics")).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_fifty_jobs_through_the_proxy_pass() -> None:
    """The jobclient's 50 jobs through the proxy all succeed within the 5 s deadline."""
    async with run_server("jobserver") as jobserver:
        async with run_server("jobproxy", "--upstream-url", jobserver.url) as proxy:
            code, report = await run_jobclient(f"{proxy.url}/proxy")
    print(f"50 jobs through the proxy: total {report['total']} s")
    assert report["result"] == "PASSED", report
    assert code == 0


async def test_lost_callbacks_and_refused_starts_still_pass() -> None:
    """30% dropped callbacks and the first 5 starts answered 503: all 50 jobs still pass."""
    faults = ["--callback-drop-rate", "0.3", "--start-error-count", "5", "--seed", "7"]
    async with run_server("jobserver", *faults) as jobserver:
        async with run_server("jobproxy", "--upstream-url", jobserver.url) as proxy:
            code, report = await run_jobclient(f"{proxy.url}/proxy")
            async with httpx.AsyncClient() as client:
                polled = await metric(
                    client, proxy.url, 'jobproxy_status_poll_fallbacks_total{answered_by="poll"}'
                )
    assert report["result"] == "PASSED", report
    assert code == 0
    assert polled > 0


async def test_duplicate_callbacks_answer_each_job_once() -> None:
    """With every callback sent twice, each client still gets exactly one answer."""
    async with run_server("jobserver", "--callback-duplicate-rate", "1", "--seed", "3") as js:
        async with run_server("jobproxy", "--upstream-url", js.url) as proxy:
            code, report = await run_jobclient(f"{proxy.url}/proxy", "--jobs", "20")
            async with httpx.AsyncClient() as client:
                ok = await metric(client, proxy.url, 'jobproxy_callbacks_total{outcome="ok"}')
                deadline = time.monotonic() + 10
                duplicates = 0.0
                while duplicates < 20 and time.monotonic() < deadline:
                    duplicates = await metric(
                        client, proxy.url, 'jobproxy_callbacks_total{outcome="duplicate"}'
                    )
                    await asyncio.sleep(0.05)
    assert report["result"] == "PASSED", report
    assert ok == 20
    assert duplicates == 20


async def test_forged_and_unsigned_callbacks_are_refused() -> None:
    """With a callback secret, unsigned or forged callbacks get 401 and the job is unaffected."""
    secret = ["--callback-secret", SECRET]
    async with run_server("jobserver", *secret, "--job-duration", "0.5") as jobserver:
        async with run_server("jobproxy", "--upstream-url", jobserver.url, *secret) as proxy:
            async with httpx.AsyncClient(timeout=10) as client:
                held = asyncio.ensure_future(
                    client.post(f"{proxy.url}/proxy", json={"account": "sig", "wait": True})
                )
                # The signature is checked before the token: any token shows the refusal.
                await _wait_until_held(client, proxy.url, 1)
                token = "replica.unguessed-token"
                fake = {"id": "0123456789abcdef", "state": "completed", "proof": "F" * 40}
                unsigned = await client.post(f"{proxy.url}/callback/{token}", json=fake)
                forged = await client.post(
                    f"{proxy.url}/callback/{token}",
                    json=fake,
                    headers={
                        "webhook-id": "msg_1",
                        "webhook-timestamp": str(int(time.time())),
                        "webhook-signature": "v1,Zm9yZ2Vk",
                    },
                )
                guessed = await client.post(f"{proxy.url}/callback/x.guess", json=fake)
                answer = await held
    assert unsigned.status_code == 401
    assert forged.status_code == 401
    assert guessed.status_code == 401
    assert answer.status_code == 200
    assert answer.json()["id"] != fake["id"]
    assert answer.json()["state"] == "completed"


async def _wait_until_held(client: httpx.AsyncClient, proxy_url: str, count: int) -> None:
    async with asyncio.timeout(10):
        while await metric(client, proxy_url, "jobproxy_pending_jobs") < count:
            await asyncio.sleep(0.02)


async def test_abandoned_clients_leave_nothing_pending() -> None:
    """200 clients that give up after 0.15 s leave jobproxy_pending_jobs at 0."""
    async with run_server("jobserver") as jobserver:
        async with run_server("jobproxy", "--upstream-url", jobserver.url) as proxy:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(limits=limits, timeout=0.15) as impatient:

                async def give_up(n: int) -> None:
                    try:
                        await impatient.post(
                            f"{proxy.url}/proxy", json={"account": f"a{n % 10}", "wait": True}
                        )
                    except httpx.TimeoutException:
                        pass

                await asyncio.gather(*(give_up(n) for n in range(200)))
            async with httpx.AsyncClient() as client:
                async with asyncio.timeout(10):
                    while (pending := await metric(client, proxy.url, "jobproxy_pending_jobs")) > 0:
                        await asyncio.sleep(0.05)
    assert pending == 0


async def test_sigterm_answers_every_held_request() -> None:
    """SIGTERM with 100 held requests: all 100 still get their job JSON."""
    async with run_server("jobserver") as jobserver:
        async with run_server("jobproxy", "--upstream-url", jobserver.url) as proxy:
            limits = httpx.Limits(max_connections=150)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                held = [
                    asyncio.ensure_future(
                        client.post(
                            f"{proxy.url}/proxy", json={"account": f"t{n % 20}", "wait": True}
                        )
                    )
                    for n in range(100)
                ]
                await _wait_until_held(client, proxy.url, 100)
                proxy.process.send_signal(signal.SIGTERM)
                answers = await asyncio.gather(*held)
                code = await proxy.process.wait()
    assert [a.status_code for a in answers] == [200] * 100
    assert all(a.json()["state"] == "completed" for a in answers)
    assert code == 0
    assert "drained 100 held requests" in proxy.log_tail()


async def test_upstream_down_is_502_within_the_retry_budget() -> None:
    """With nothing listening upstream, a held request gets 502 JSON within 6 s."""
    async with run_server("jobproxy", "--upstream-url", "http://127.0.0.1:9") as proxy:
        async with httpx.AsyncClient(timeout=10) as client:
            began = time.monotonic()
            response = await client.post(f"{proxy.url}/proxy", json={"account": "a", "wait": True})
            took = time.monotonic() - began
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert took < 6


def test_docker_cmd_is_the_command_the_tests_start() -> None:
    """The image's CMD runs the same console script and flags as run_server starts."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    argv = json.loads(cmd)
    assert argv[0] == "jobproxy"
    assert argv[1::2] == ["--host", "--port"]
    assert argv[2] == "0.0.0.0"
