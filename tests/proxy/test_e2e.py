"""End to end: real ``jobserver`` and ``jobproxy`` processes on loopback, real jobclient.

Only what needs a process is here: the console scripts' run, a job server that restarts,
SIGTERM and the drain, the Docker image's command. What the two apps do together is
tested in-process, in test_system.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.harness import ServerProcess
from tests.conftest import eventually, run_program
from tests.proxy.processes import metric, run_jobclient, system, wait_for_metric

ROOT = Path(__file__).parents[2]


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

        async def all_started() -> bool:
            started: int = (await client.get(f"{forgetful.url}/healthz")).json()["jobs_started"]
            return started >= 100

        await eventually(all_started, timeout=10, interval=0.05)
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

        async def draining() -> bool:
            return (await client.get(f"{proxy.url}/readyz")).status_code == 503

        await eventually(draining, timeout=10)
        late = await client.post(f"{proxy.url}/proxy", json={"account": "x", "wait": True})
        polled = await metric(proxy.url, 'jobproxy_status_poll_fallbacks_total{answered_by="poll"}')
        answers = await asyncio.gather(*held)
    assert late.json()["error"] == "shutting_down"
    assert [answer.status_code for answer in answers] == [200] * 5
    assert polled == 0


async def test_drain_timeout_answers_the_rest_with_503() -> None:
    """Jobs outlasting the drain timeout are answered 503 JSON, never a dropped socket,
    naming the job that goes on at the job server, so the client can follow it."""
    async with system(["--job-duration", "5"], ["--drain-timeout", "0.2"]) as (jobserver, proxy):
        answers = await sigterm_while_held(proxy, [f"d{n}" for n in range(10)])
        async with httpx.AsyncClient() as client:
            statuses = [
                (await client.get(f"{jobserver.url}/status/{answer.json()['job_id']}")).json()
                for answer in answers
            ]
    assert [a.status_code for a in answers] == [503] * 10
    assert all(a.json()["error"] == "shutting_down" for a in answers)
    assert all("retry-after" in a.headers for a in answers)
    assert all(status["state"] == "running" for status in statuses)


async def test_a_second_stop_signal_cuts_the_drain_short_and_still_stops_cleanly() -> None:
    """SIGTERM, then SIGINT while jobs outlast the drain: every held request is answered
    503 at once, the process exits 0, and nothing is logged as a traceback."""
    async with system(["--job-duration", "30"]) as (_, proxy):
        async with httpx.AsyncClient(timeout=30) as client:
            held = [
                asyncio.ensure_future(
                    client.post(f"{proxy.url}/proxy", json={"account": f"x{n}", "wait": True})
                )
                for n in range(10)
            ]
            await wait_for_metric(proxy.url, "jobproxy_pending_jobs", lambda v: v >= 10)
            proxy.process.send_signal(signal.SIGTERM)
            await eventually(lambda: "stopping in order" in proxy.log_tail())
            began = time.monotonic()
            proxy.process.send_signal(signal.SIGINT)
            answers = await asyncio.gather(*held)
            took = time.monotonic() - began
        async with asyncio.timeout(10):
            code = await proxy.process.wait()
    assert [answer.json()["error"] for answer in answers] == ["shutting_down"] * 10
    assert took < 5  # not the 25 s drain
    assert code == 0
    assert "Traceback" not in proxy.log_tail()
    assert "cutting the drain short" in proxy.log_tail()


async def test_sighup_and_sigusr1_are_logged_and_change_nothing() -> None:
    """SIGHUP and SIGUSR1 leave the proxy serving (they would kill a plain process)."""
    async with system() as (_, proxy):
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            proxy.process.send_signal(sig)
        await eventually(lambda: "SIGUSR1 ignored" in proxy.log_tail())
        code, report = await run_jobclient(f"{proxy.url}/proxy", "--jobs", "5")
        assert proxy.process.returncode is None
    assert (code, report["result"]) == (0, "PASSED")
    assert "SIGHUP ignored" in proxy.log_tail()


async def test_a_head_over_the_limit_is_431_on_every_route() -> None:
    """The running proxy refuses a request head over max_head_size with 431 JSON, on the
    held path and the callback path alike, and keeps serving."""
    async with system((), ["--max-head-size", "4096"]) as (_, proxy):
        host, port = proxy.url.removeprefix("http://").split(":")
        for path in ("/proxy", "/callback/a.b.c", "/healthz"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\nx-big: {'a' * 5000}\r\n\r\n".encode())
            async with asyncio.timeout(5):
                answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 431"), (path, answer[:80])
            assert b'"request_head_too_large"' in answer
        code, report = await run_jobclient(f"{proxy.url}/proxy", "--jobs", "5")
    assert (code, report["result"]) == (0, "PASSED")


def test_docker_cmd_is_the_command_the_tests_start() -> None:
    """The image's CMD runs the same console script and flags as run_program starts."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    argv = json.loads(cmd)
    assert argv[0] == "jobproxy"
    assert argv[1::2] == ["--host", "--port"]
    assert argv[2] == "0.0.0.0"
