"""The jobclient's run (``jobserver/jobclient/run.py``): requests sent, outcomes collected."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from jobserver.jobclient.run import JobOutcome, describe_error, run_jobs
from jobserver.jobclient.verdict import Verdict, judge
from jobserver.proofs import make_proof
from tests.conftest import closed_port, loopback_socket
from tests.jobserver.jobclient.servers import (
    ACCOUNT,
    SECRET,
    STARTED_AT,
    URL,
    asgi,
    fake_job_server,
    job_body,
    serve,
)


def one_bad_answer(bad: httpx.Response, *, jobs: int = 5) -> httpx.MockTransport:
    """Every request but the third gets a valid job; the third gets ``bad``."""
    arrivals = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        number = next(arrivals)
        return bad if number == 3 else httpx.Response(200, json=job_body(number))

    return httpx.MockTransport(handler)


async def test_posts_account_with_wait_true() -> None:
    """Every request is a POST to the URL of exactly ``{"account": NAME, "wait": true}``."""
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), json.loads(request.content)))
        return httpx.Response(200, json=job_body(len(seen)))

    await run_jobs(URL, ACCOUNT, 3, transport=httpx.MockTransport(handler))
    assert seen == [("POST", URL, {"account": ACCOUNT, "wait": True})] * 3


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            httpx.Response(200, json={"id": "ab" * 8, "state": "failed", "error": "boom"}),
            "state failed: boom",
        ),
        (httpx.Response(200, text="<html>oops</html>"), "response is not JSON"),
        (httpx.Response(200, json=[job_body(3)]), "response is not a JSON object"),
        (httpx.Response(502, json={"error": "upstream"}), 'HTTP 502: {"error":"upstream"}'),
        (httpx.Response(500), "HTTP 500"),
        (
            httpx.Response(200, json={**job_body(3), "proof": job_body(3)["proof"].lower()}),
            "invalid proof shape",
        ),
        (httpx.Response(200, json={**job_body(3), "proof": None}), "invalid proof shape"),
        (httpx.Response(200, json={**job_body(3), "id": ""}), "missing or invalid id"),
        (httpx.Response(200, json={**job_body(3), "startedAt": 1}), "missing or invalid startedAt"),
        (
            httpx.Response(200, json={"id": "ab" * 8, "state": "running"}),
            "state 'running', expected 'completed'",
        ),
    ],
)
async def test_one_bad_answer_fails_the_run(bad: httpx.Response, reason: str) -> None:
    """A single failed, malformed or error answer fails the run and is reported per job."""
    report = await run_jobs(URL, ACCOUNT, 5, transport=one_bad_answer(bad))
    verdict = judge(report, deadline=5.0)
    assert len(report.jobs) == 4
    assert [(o.number, o.failure) for o in report.failures] == [(3, reason)]
    assert verdict == Verdict(passed=False, reasons=("1 job failed",), proof=None)


async def test_job_ids_of_other_lengths_are_accepted() -> None:
    """Any non-empty string id passes: the client assumes no more than the protocol says."""

    def handler(request: httpx.Request) -> httpx.Response:
        job_id = "abc1234567890"  # 13 hex characters
        proof = make_proof(SECRET, job_id, ACCOUNT, STARTED_AT)
        body = {"id": job_id, "state": "completed", "startedAt": STARTED_AT, "proof": proof}
        return httpx.Response(200, json=body)

    report = await run_jobs(URL, ACCOUNT, 1, transport=httpx.MockTransport(handler))
    assert judge(report, deadline=5.0).passed


async def test_slow_answer_times_out_per_job() -> None:
    """A request that outlives the per-request timeout is reported as timed out."""

    async def answer(number: int) -> Response:
        if number == 2:
            await asyncio.sleep(30)
        return JSONResponse(job_body(number))

    transport = asgi(fake_job_server(answer))
    report = await run_jobs(URL, ACCOUNT, 3, request_timeout=0.2, transport=transport)
    assert [(o.number, o.failure) for o in report.failures] == [(2, "timed out")]
    assert report.failures[0].duration < 5
    assert judge(report, deadline=5.0).reasons == ("1 job failed",)


async def test_connection_refused_is_reported_per_job() -> None:
    """Against a closed port on 127.0.0.1 every job fails with "connection refused"."""
    with closed_port() as port:
        report = await run_jobs(f"http://127.0.0.1:{port}/start", ACCOUNT, 3)
    assert [o.failure for o in report.outcomes] == ["connection refused"] * 3
    assert judge(report, deadline=5.0).reasons == ("3 jobs failed",)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"", "connection closed by the server"),
        (b"garbage\r\n\r\n", "AnswerMalformed: unparsable answer from http://127.0.0.1:"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "connection closed by the server"),
    ],
    ids=["dropped", "garbled", "cut-off"],
)
async def test_broken_http_is_reported_per_job(reply: bytes, reason: str) -> None:
    """A dropped connection, a garbled status line or a cut-off body fail only that job."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    sock = loopback_socket()
    async with await asyncio.start_server(respond, sock=sock):
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/start"
        report = await run_jobs(url, ACCOUNT, 2, request_timeout=10)
    assert [o.failure is not None and o.failure.startswith(reason) for o in report.outcomes] == [
        True,
        True,
    ]
    assert all(o.failure is not None and "\n" not in o.failure for o in report.outcomes)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ReadTimeout("read timed out"), "timed out"),
        (httpx.ConnectError("Name or service not known"), "cannot connect: Name or service"),
        (httpx.RemoteProtocolError("illegal status line"), "RemoteProtocolError: illegal status"),
    ],
)
async def test_httpx_transport_errors_are_reported_per_job(
    error: httpx.HTTPError, reason: str
) -> None:
    """Errors of httpx's own transports become one-line reasons too."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    report = await run_jobs(URL, ACCOUNT, 1, transport=httpx.MockTransport(handler))
    assert report.outcomes[0].failure is not None
    assert report.outcomes[0].failure.startswith(reason)


def test_a_connect_error_is_worded_by_the_operating_systems_reason() -> None:
    """A connection that cannot be made names the operating system's reason, not the
    transport's wrapping of it."""
    error = httpx.ConnectError("cannot connect to http://jobs.invalid")
    error.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert describe_error(error) == "cannot connect: [Errno -2] Name or service not known"
    timeout = httpx.ConnectTimeout("no connection to http://10.0.0.1 within 5 s")
    assert describe_error(timeout) == "timed out"


async def test_jobs_run_concurrently() -> None:
    """Fifty jobs of 0.2 s each finish in far less than fifty times 0.2 s."""
    report = await run_jobs(URL, ACCOUNT, 50, transport=asgi(fake_job_server(delay=0.2)))
    assert report.failures == ()
    assert 0.2 <= report.total < 2.0
    assert judge(report, deadline=5.0).passed


async def test_all_requests_are_in_flight_together_over_the_network() -> None:
    """150 requests (more than httpx's default pool) are all held open at once over TCP."""
    jobs = 150
    arrived = 0
    everyone_in = asyncio.Event()

    async def answer(number: int) -> Response:
        nonlocal arrived
        arrived += 1
        if arrived == jobs:
            everyone_in.set()
        try:
            # A client that queued requests behind a pool would never fill this barrier.
            await asyncio.wait_for(everyone_in.wait(), timeout=10)
        except TimeoutError:
            return JSONResponse({"error": "only", "detail": arrived}, status_code=504)
        return JSONResponse(job_body(number))

    async with serve(fake_job_server(answer)) as url:
        report = await run_jobs(url, ACCOUNT, jobs)
    assert report.failures == ()
    assert judge(report, deadline=10.0).passed


async def test_progress_is_reported_once_per_job() -> None:
    """on_progress receives every outcome exactly once, as it arrives."""
    seen: list[JobOutcome] = []

    async def answer(number: int) -> Response:
        if number == 1:
            return Response("nope", status_code=503)
        return JSONResponse(job_body(number))

    report = await run_jobs(
        URL, ACCOUNT, 10, transport=asgi(fake_job_server(answer)), on_progress=seen.append
    )
    assert sorted(seen, key=lambda o: o.number) == list(report.outcomes)
