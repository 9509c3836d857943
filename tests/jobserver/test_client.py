"""The jobclient (``jobserver/client.py``) against in-test fake job servers.

The fakes answer ``POST /start`` the way the protocol says a job server (or a proxy in
front of one) may: valid completed jobs with real proofs, failed jobs, garbage, error
statuses, slow answers. Most tests reach them in-process (``httpx.MockTransport`` or
``httpx.ASGITransport``); those that exercise the real network serve a Starlette app
with uvicorn on a listening socket on 127.0.0.1 that the test opened itself, so the
port is known before the server runs and there is nothing to wait for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import gzip
import itertools
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobserver.client import (
    EXIT_FAILED,
    EXIT_PASSED,
    EXIT_USAGE,
    LISTED_FAILURES,
    JobOutcome,
    RunReport,
    Verdict,
    judge,
    main,
    render_json,
    render_text,
    run_jobs,
)
from jobserver.harness import script_path
from jobserver.proofs import CompletedJob, check_bundle, decode_bundle, make_proof

SECRET = b"test-secret"
ACCOUNT = "acme"
STARTED_AT = "2024-01-02T03:04:05.678Z"
URL = "http://jobserver.test/start"
WAIT = 30.0
# The original client's lines, with their variable parts.
PROGRESS_FRAME = re.compile(r" (\d+) / 50 \[([=>-]+)\] +(\d+\.\d\d) % (\d+)s")
FINAL_FRAME = re.compile(r" 50 / 50 \[=+\] 100\.00 % \d+s")
AVERAGE_LINE = re.compile(r"Average Duration: \d+\.\d{9} seconds")
TOTAL_LINE = re.compile(r"Total Duration: \d+\.\d{9} seconds")

Answer = Callable[[int], Awaitable[Response]]


def job_body(number: int, account: str = ACCOUNT) -> dict[str, str]:
    """A completed job as the job server sends it, with a genuine proof."""
    job_id = f"{number:016x}"
    return {
        "id": job_id,
        "state": "completed",
        "startedAt": STARTED_AT,
        "proof": make_proof(SECRET, job_id, account, STARTED_AT),
    }


def proofs_check(bundle: str) -> int:
    """How many jobs the bundle holds, once every one of them is found genuine."""
    check = check_bundle(SECRET, decode_bundle(bundle), ACCOUNT)
    assert check.valid, check.failures
    return check.jobs


def fake_job_server(answer: Answer | None = None, *, delay: float = 0.0) -> Starlette:
    """A job server whose ``/start`` sleeps ``delay`` (the job) and then answers.

    ``answer`` gets the request's arrival number (from 1); by default every job completes.
    A request with another body than the jobclient's gets a 400 so that tests notice.
    """
    arrivals = itertools.count(1)

    async def start(request: Request) -> Response:
        number = next(arrivals)
        body = await request.json()
        if body != {"account": ACCOUNT, "wait": True}:
            return JSONResponse({"error": "bad_body", "detail": repr(body)}, status_code=400)
        await asyncio.sleep(delay)
        if answer is not None:
            return await answer(number)
        return JSONResponse(job_body(number))

    return Starlette(routes=[Route("/start", start, methods=["POST"])])


def asgi(app: Starlette) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=app)


def one_bad_answer(bad: httpx.Response, *, jobs: int = 5) -> httpx.MockTransport:
    """Every request but the third gets a valid job; the third gets ``bad``."""
    arrivals = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        number = next(arrivals)
        return bad if number == 3 else httpx.Response(200, json=job_body(number))

    return httpx.MockTransport(handler)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 for the block; yields its ``/start`` URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/start"
    finally:
        server.should_exit = True
        await task
        sock.close()


def report_of(*outcomes: JobOutcome) -> RunReport:
    return RunReport(url=URL, account=ACCOUNT, outcomes=outcomes)


def completed(number: int, sent_at: float, answered_at: float) -> JobOutcome:
    body = job_body(number)
    job = CompletedJob(id=body["id"], started_at=body["startedAt"], proof=body["proof"])
    return JobOutcome(number, sent_at, answered_at, job=job)


# --- run_jobs and judge -------------------------------------------------------------


async def test_all_valid_jobs_within_deadline_pass() -> None:
    """Fifty completed jobs with well-formed proofs inside the deadline give PASSED."""
    report = await run_jobs(URL, ACCOUNT, 50, transport=asgi(fake_job_server()))
    verdict = judge(report, deadline=5.0)
    assert [o.number for o in report.outcomes] == list(range(1, 51))
    assert len(report.jobs) == 50
    assert report.failures == ()
    assert verdict == Verdict(passed=True, reasons=(), proof=verdict.proof)
    assert verdict.result == "PASSED"
    assert verdict.proof is not None


async def test_proof_bundle_is_the_originals_and_verifies() -> None:
    """The PASSED proof is the original's bundle: one [id, startedAt, proof] per job, genuine."""
    report = await run_jobs(URL, ACCOUNT, 20, transport=asgi(fake_job_server()))
    verdict = judge(report, deadline=5.0)
    assert verdict.proof is not None
    triples = json.loads(gzip.decompress(base64.b64decode(verdict.proof)))
    assert triples == [[j.id, j.started_at, j.proof] for j in report.jobs]
    assert sorted(t[0] for t in triples) == sorted(f"{n:016x}" for n in range(1, 21))
    assert proofs_check(verdict.proof) == 20


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


async def test_repeated_job_id_fails_the_run() -> None:
    """Two answers carrying the same job are not two jobs: FAILED."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job_body(1))

    report = await run_jobs(URL, ACCOUNT, 3, transport=httpx.MockTransport(handler))
    verdict = judge(report, deadline=5.0)
    assert report.failures == ()
    assert verdict.reasons == ("2 answers repeated a job id",)
    assert verdict.proof is None


async def test_over_deadline_fails_the_run() -> None:
    """All jobs completing after the deadline still give FAILED, naming the overrun."""
    report = await run_jobs(URL, ACCOUNT, 5, transport=asgi(fake_job_server(delay=0.2)))
    verdict = judge(report, deadline=0.1)
    assert report.failures == ()
    assert report.total >= 0.2
    assert not verdict.passed
    assert verdict.reasons == (f"total {report.total:.3f} s over the 0.1 s deadline",)


async def test_several_reasons_are_all_given() -> None:
    """A run that both has failed jobs and misses the deadline names both reasons."""

    async def answer(number: int) -> Response:
        if number % 2:
            return JSONResponse({"error": "internal"}, status_code=500)
        return JSONResponse(job_body(number))

    report = await run_jobs(URL, ACCOUNT, 4, transport=asgi(fake_job_server(answer, delay=0.1)))
    verdict = judge(report, deadline=0.05)
    assert verdict.reasons[0] == "2 jobs failed"
    assert verdict.reasons[1].endswith("over the 0.05 s deadline")


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
        (b"garbage\r\n\r\n", "ClientResponseError: 400, message="),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "ClientPayloadError: "),
    ],
)
async def test_broken_http_is_reported_per_job(reply: bytes, reason: str) -> None:
    """A dropped connection, a garbled status line or a cut-off body fail only that job."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    async with server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/start"
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


# --- rendering ----------------------------------------------------------------------


def test_text_output_on_passed() -> None:
    """PASSED text is the original's: counts, durations to 9 decimals, result, Proof and bundle."""
    report = report_of(completed(1, 10.0, 10.5), completed(2, 10.1, 10.7))
    verdict = judge(report, deadline=5.0)
    assert verdict.proof is not None
    assert render_text(report, verdict).splitlines() == [
        "Succeeded: 2",
        "Average Duration: 0.550000000 seconds",
        "Total Duration: 0.700000000 seconds",
        "",
        "WORK SAMPLE RESULT: PASSED",
        "",
        "Proof :",
        verdict.proof,
    ]


def test_text_output_on_failed() -> None:
    """FAILED text lists each failed job with its reason and each reason for the verdict."""
    report = report_of(
        completed(1, 0.0, 6.0),
        JobOutcome(2, 0.0, 0.01, failure="connection refused"),
        JobOutcome(3, 0.0, 1.0, failure='HTTP 502: {"error":"upstream"}'),
    )
    verdict = judge(report, deadline=5.0)
    assert render_text(report, verdict).splitlines() == [
        "Succeeded: 1",
        "Failed: 2",
        "  job 2: connection refused",
        '  job 3: HTTP 502: {"error":"upstream"}',
        "Average Duration: 2.336666667 seconds",
        "Total Duration: 6.000000000 seconds",
        "",
        "WORK SAMPLE RESULT: FAILED",
        "Reason: 2 jobs failed",
        "Reason: total 6.000 s over the 5 s deadline",
    ]


def test_text_output_caps_listed_failures() -> None:
    """Text lists the first failures one by one and counts the rest."""
    outcomes = [JobOutcome(n, 0.0, 0.1, failure="timed out") for n in range(1, 31)]
    lines = render_text(report_of(*outcomes), judge(report_of(*outcomes), 5.0)).splitlines()
    assert lines[1] == "Failed: 30"
    assert lines[2 : 2 + LISTED_FAILURES] == [f"  job {n}: timed out" for n in range(1, 21)]
    assert lines[2 + LISTED_FAILURES] == "  ... and 10 more"


def test_json_output_shape() -> None:
    """--json renders one object with counts, every failure, timings, result and proof."""
    report = report_of(completed(1, 0.0, 0.5), JobOutcome(2, 0.0, 0.25, failure="timed out"))
    document = json.loads(render_json(report, judge(report, 5.0), 5.0))
    assert document == {
        "account": ACCOUNT,
        "jobs": 2,
        "succeeded": 1,
        "failed": 1,
        "failures": [{"job": 2, "reason": "timed out"}],
        "average": 0.375,
        "total": 0.5,
        "deadline": 5.0,
        "result": "FAILED",
        "reasons": ["1 job failed"],
        "proof": None,
    }


# --- the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--account", ACCOUNT], "--url"),
        (["--url", URL], "--account"),
        (["--url", URL, "--account", ""], "--account"),
        (["--url", URL, "--account", ACCOUNT, "--jobs", "0"], "--jobs"),
        (["--url", URL, "--account", ACCOUNT, "--jobs", "many"], "--jobs"),
        (["--url", URL, "--account", ACCOUNT, "--deadline", "0"], "--deadline"),
        (["--url", URL, "--account", ACCOUNT, "--deadline", "-1"], "--deadline"),
        (["--url", URL, "--account", ACCOUNT, "--deadline", "nan"], "--deadline"),
        (["--url", URL, "--account", ACCOUNT, "--timeout", "0"], "--timeout"),
        (["--url", "/start", "--account", ACCOUNT], "--url"),
        (["--url", "ftp://host/start", "--account", ACCOUNT], "--url"),
        (["--url", "http://", "--account", ACCOUNT], "--url"),
        (["--url", URL, "--account", ACCOUNT, "--bogus"], "--bogus"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad command line exits 2 with a single ``jobclient: error:`` line naming the option."""
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("jobclient: error: ")
    assert message in err


async def test_main_passes_against_a_real_server(capsys: pytest.CaptureFixture[str]) -> None:
    """main exits 0 and prints PASSED and a verifiable proof against a good server."""
    async with serve(fake_job_server(delay=0.05)) as url:
        code = await asyncio.to_thread(main, ["--url", url, "--account", ACCOUNT, "--jobs", "10"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == EXIT_PASSED
    assert lines[0] == "Succeeded: 10"
    assert AVERAGE_LINE.fullmatch(lines[1])
    assert TOTAL_LINE.fullmatch(lines[2])
    assert lines[3:7] == ["", "WORK SAMPLE RESULT: PASSED", "", "Proof :"]
    assert proofs_check(lines[7]) == 10
    assert len(lines) == 8
    # Without a terminal, progress is plain count lines on stderr, ending at the total.
    assert err.splitlines()[-1].startswith("answered 10/10 jobs (0 failed)")


async def test_main_fails_over_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    """main exits 1 with the deadline reason when the run is too slow."""
    async with serve(fake_job_server(delay=0.1)) as url:
        argv = ["--url", url, "--account", ACCOUNT, "--jobs", "3", "--deadline", "0.01"]
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "WORK SAMPLE RESULT: FAILED\n" in out
    assert "over the 0.01 s deadline" in out
    assert "Proof" not in out


def test_main_reports_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable URL gives per-job reasons and exit 1, never a traceback."""
    with closed_port() as port:
        code = main(
            ["--url", f"http://127.0.0.1:{port}/start", "--account", ACCOUNT, "--jobs", "2"]
        )
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "Failed: 2\n  job 1: connection refused\n  job 2: connection refused\n" in out
    assert "Reason: 2 jobs failed" in out
    assert "Traceback" not in out + err


async def test_main_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints exactly one JSON object on stdout and no progress at all."""
    async with serve(fake_job_server()) as url:
        argv = ["--url", url, "--account", ACCOUNT, "--jobs", "5", "--json"]
        code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert code == EXIT_PASSED
    assert err == ""
    assert out.count("\n") == 1
    assert document["result"] == "PASSED"
    assert (document["succeeded"], document["failed"], document["failures"]) == (5, 0, [])
    assert document["reasons"] == []
    assert document["deadline"] == 5.0
    assert proofs_check(document["proof"]) == 5


async def test_main_json_output_on_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """--json on FAILED gives the failures, the reasons, a null proof and exit 1."""

    async def answer(number: int) -> Response:
        return Response("not json", media_type="text/plain")

    async with serve(fake_job_server(answer)) as url:
        argv = ["--url", url, "--account", ACCOUNT, "--jobs", "2", "--json"]
        code = await asyncio.to_thread(main, argv)
    document = json.loads(capsys.readouterr().out)
    assert code == EXIT_FAILED
    assert document["result"] == "FAILED"
    assert document["reasons"] == ["2 jobs failed"]
    assert document["failures"] == [
        {"job": 1, "reason": "response is not JSON"},
        {"job": 2, "reason": "response is not JSON"},
    ]
    assert document["proof"] is None


async def read_terminal(master: int) -> str:
    """Everything written to a pty, until the last process holding its other end is gone."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    closed: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: nobody holds the terminal any more
            chunk = b""
        if chunk:
            chunks.append(chunk)
        elif not closed.done():
            closed.set_result(None)

    loop.add_reader(master, readable)
    try:
        await asyncio.wait_for(closed, WAIT)
    finally:
        loop.remove_reader(master)
    # The terminal turns each "\n" into "\r\n"; a lone "\r" is the client's own.
    return b"".join(chunks).decode().replace("\r\n", "\n")


async def test_on_a_terminal_speaks_like_the_original() -> None:
    """In a terminal: the original's live line, then its summary, result and proof, line by line."""
    columns = 100
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        async with serve(fake_job_server(delay=0.05)) as url:
            # A deadline far beyond the run: the form is under test here, not the speed.
            argv = ["--url", url, "--account", ACCOUNT, "--deadline", "60"]
            process = await asyncio.create_subprocess_exec(
                script_path("jobclient"), *argv, stdin=terminal, stdout=terminal, stderr=terminal
            )
            os.close(terminal)
            terminal = -1
            output = await read_terminal(master)
            code = await asyncio.wait_for(process.wait(), WAIT)
    finally:
        os.close(master)
        if terminal != -1:
            os.close(terminal)
    live, *lines = output.split("\n")
    first, *frames = live.split("\r")
    assert code == EXIT_PASSED
    assert first == ""
    assert all(PROGRESS_FRAME.fullmatch(frame) for frame in frames), frames
    assert all(len(frame) == columns - 1 for frame in frames)
    assert FINAL_FRAME.fullmatch(frames[-1])
    assert lines[:2] == ["", "Succeeded: 50"]
    assert AVERAGE_LINE.fullmatch(lines[2])
    assert TOTAL_LINE.fullmatch(lines[3])
    assert lines[4:8] == ["", "WORK SAMPLE RESULT: PASSED", "", "Proof :"]
    assert proofs_check(lines[8]) == 50
    assert lines[9:] == [""]


def test_jobclient_runs_without_rich() -> None:
    """The jobclient needs no rich: with it unimportable, the client still loads."""
    # httpx itself imports rich when it is there (for its own command line), so the check
    # is that our modules load once rich cannot be imported at all.
    script = "import sys; sys.modules['rich'] = None; import jobserver.client"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=WAIT
    )
    assert (result.returncode, result.stderr) == (0, "")
