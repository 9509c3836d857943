"""The load generator (``bench/load.py``, ``bench/http.py``, ``bench/outcomes.py``): its
requests, what it makes of answers and failures, and runs against raw servers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.http import build_get, build_post, fetch, header_pairs
from bench.load import LoadPlan, LoadResult, run_concurrent, run_sequential
from bench.outcomes import LEFT, OK, Verdict, error_kind, first_examples, judge
from infra.http1 import Answer, AnswerIncomplete, AnswerMalformed, ConnectionBroken
from tests.bench.results import load_result
from tests.conftest import closed_port
from tests.infra.http1.servers import RawServer, answering, read_request

PROOF = "0123456789ABCDEF0123456789ABCDEF01234567"
STARTED_AT = "2024-01-02T03:04:05.678Z"
COMPLETED = {
    "id": "00ff00ff00ff00ff",
    "state": "completed",
    "startedAt": STARTED_AT,
    "proof": PROOF,
}


def test_header_lines_become_pairs() -> None:
    """The dialects' header lines (each ending in CRLF) are (name, value) pairs."""
    lines = "Authorization: Bearer acct-1\r\nPrefer: wait\r\n"
    assert header_pairs(lines) == [(b"Authorization", b"Bearer acct-1"), (b"Prefer", b"wait")]
    assert header_pairs("") == []


def test_get_request_bytes() -> None:
    """A GET names its host and port, closes its connection, and carries extra lines."""
    request = build_get("127.0.0.1", 8000, "/jobs/r", headers="Prefer: wait=5\r\n")
    assert request.startswith(b"GET /jobs/r HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Connection: close\r\nPrefer: wait=5\r\n" in request
    assert request.endswith(b"\r\n\r\n")


def test_post_request_bytes() -> None:
    """The prebuilt request carries the body's length and the connection choice."""
    request = build_post("127.0.0.1", 8000, "/proxy", b"{}", keep_alive=False)
    assert request.startswith(b"POST /proxy HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Connection: close\r\n" in request
    assert request.endswith(b"Content-Length: 2\r\n\r\n{}")
    kept = build_post("h", 1, "/", b"", keep_alive=True, headers="Prefer: wait\r\n")
    assert b"Connection: keep-alive\r\nPrefer: wait\r\n" in kept


def test_judge_accepts_only_well_formed_answers() -> None:
    """A completed job with a proof is ok; anything else is named."""

    def outcome(status: int, body: object, *, wait: bool = True) -> str:
        text = body if isinstance(body, bytes) else json.dumps(body).encode()
        return judge(Answer(status, text), wait=wait).outcome

    completed = judge(Answer(200, json.dumps(COMPLETED).encode()), wait=True)
    assert completed.outcome == OK
    assert completed.started_at == pytest.approx(1_704_164_645.678)
    assert outcome(200, {**COMPLETED, "proof": "short"}) == "bad-job"
    assert outcome(200, {**COMPLETED, "startedAt": "yesterday"}) == "bad-job"
    assert outcome(200, {**COMPLETED, "state": "failed"}) == "state-failed"
    assert outcome(200, {"state": "running", "id": "00ff00ff00ff00ff"}, wait=False) == OK
    assert outcome(200, b"<html>") == "bad-json"
    refused = {"error": "upstream_unavailable", "detail": "..."}
    assert outcome(502, refused) == "http-502:upstream_unavailable"
    assert outcome(503, b"Service Unavailable") == "http-503"
    assert judge(Answer(503, b"Service Unavailable"), wait=True).example == "Service Unavailable"


def test_first_example_of_each_failure_is_kept() -> None:
    """One example per kind of failure survives, the first one seen."""
    verdicts = [
        Verdict(OK),
        Verdict("timeout", example="first"),
        Verdict("timeout", example="second"),
        Verdict("http-502", example="bad gateway"),
    ]
    assert first_examples(verdicts) == {"timeout": "first", "http-502": "bad gateway"}


def test_error_kinds_tell_connecting_from_waiting() -> None:
    """Failures before the connection is up carry a connect- prefix."""
    assert error_kind(TimeoutError(), connected=True) == "timeout"
    assert error_kind(TimeoutError(), connected=False) == "connect-timeout"
    assert error_kind(ConnectionRefusedError(111, "refused"), connected=False) == "connect-refused"
    assert error_kind(OSError(24, "Too many open files"), connected=False) == "connect-emfile"


def test_error_kinds_of_the_client_are_read_through_their_causes() -> None:
    """A client's error is worded by itself or by the OS's error that caused it."""
    refused = httpx.ConnectError("cannot connect")
    refused.__cause__ = ConnectionRefusedError(111, "refused")
    reset = ConnectionBroken("the connection failed")
    reset.__cause__ = ConnectionResetError(104, "reset")
    assert error_kind(refused, connected=False) == "connect-refused"
    assert error_kind(reset, connected=True) == "reset"
    assert error_kind(AnswerIncomplete("gone"), connected=True) == "closed-early"
    assert error_kind(AnswerMalformed("SMTP"), connected=True) == "malformed"
    assert error_kind(httpx.ConnectTimeout("slow"), connected=False) == "connect-timeout"
    assert error_kind(httpx.PoolTimeout("busy"), connected=True) == "timeout"
    assert error_kind(httpx.ReadError("odd"), connected=True) == "ReadError"


def test_load_plan_round_robin_and_flags() -> None:
    """Accounts rotate; the plan turns into the generator's command line."""
    plan = LoadPlan("http://h:1/proxy", 10, 3, "acct", wait=False, sequential=True)
    assert [plan.account(number) for number in range(4)] == ["acct-0", "acct-1", "acct-2", "acct-0"]
    assert plan.argv()[-2:] == ["--no-wait", "--sequential"]


def test_load_result_survives_json() -> None:
    """The generator's JSON answer reads back into the same result."""
    result = load_result([OK, "timeout"], [0.5, 1.25], [0.001, None])
    assert LoadResult.from_json(json.loads(json.dumps(result.to_json()))) == result


# Runs against raw servers, in process


def job_answer(connection: bytes = b"keep-alive") -> bytes:
    """A completed job, as a job server answers a held request."""
    body = json.dumps(COMPLETED).encode()
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: %s\r\n"
        b"content-length: %d\r\n\r\n%s" % (connection, len(body), body)
    )


def plan_for(
    url: str, jobs: int, *, sequential: bool = False, leave_after: float | None = None
) -> LoadPlan:
    """A plan of ``jobs`` held requests to ``url``'s /start, on one account."""
    return LoadPlan(
        f"{url}/start", jobs, 1, "acct", sequential=sequential, timeout=5.0, leave_after=leave_after
    )


async def test_sequential_requests_share_one_kept_alive_connection() -> None:
    """One after another, the requests travel on one connection while it stays open."""
    async with RawServer(answering(job_answer(), job_answer(), job_answer())) as server:
        result = await run_sequential(plan_for(server.url, 3, sequential=True))
    assert result.outcomes == [OK] * 3
    assert server.connections == 1


async def test_sequential_requests_reopen_a_connection_the_server_ended() -> None:
    """After an answer that closes its connection, the next request opens another."""
    async with RawServer(answering(job_answer(b"close"), then_close=True)) as server:
        result = await run_sequential(plan_for(server.url, 3, sequential=True))
    assert result.outcomes == [OK] * 3
    assert server.connections == 3


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (b"SMTP ready\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{", "closed-early"),
    ],
    ids=["garbage", "cut-short"],
)
async def test_broken_answers_are_counted_by_kind(answer: bytes, outcome: str) -> None:
    """Concurrent requests that get garbage, or an answer cut short, are named for it."""
    async with RawServer(answering(answer, then_close=True)) as server:
        result = await run_concurrent(plan_for(server.url, 2))
    assert result.outcomes == [outcome] * 2
    assert outcome in result.error_examples


async def test_a_refused_connection_is_a_connect_failure() -> None:
    """Requests to a closed port fail before connecting."""
    with closed_port() as port:
        result = await run_concurrent(plan_for(f"http://127.0.0.1:{port}", 2))
    assert result.outcomes == ["connect-refused"] * 2


async def test_clients_that_leave_reset_their_connections() -> None:
    """With leave_after, an unanswered client resets its connection and counts as left."""
    resets = 0

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        await read_request(reader)
        try:
            await reader.read()
        except ConnectionResetError:
            resets += 1

    async with RawServer(hold) as server:
        result = await run_concurrent(plan_for(server.url, 3, leave_after=0.05))
        await server.until(lambda: server.closed == 3)
    assert result.outcomes == [LEFT] * 3
    assert resets == 3


async def test_fetch_gets_a_path_on_a_connection_of_its_own() -> None:
    """fetch() GETs the URL's path and reads the whole answer, however it is framed."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()

    async with RawServer(handle) as server:
        answer = await fetch(f"{server.url}/metrics", 5.0)
    assert (answer.status, answer.body) == (200, b"all of it")
    assert seen[0].startswith(b"GET /metrics HTTP/1.1\r\n")
