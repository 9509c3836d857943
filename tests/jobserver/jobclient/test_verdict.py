"""The jobclient's verdict (``jobserver/jobclient/verdict.py``): judging a run, and its report."""

from __future__ import annotations

import base64
import gzip
import json

import httpx
from starlette.responses import JSONResponse, Response

from jobserver.jobclient.run import JobOutcome, RunReport, run_jobs
from jobserver.jobclient.verdict import LISTED_FAILURES, Verdict, judge, render_json, render_text
from jobserver.proofs import CompletedJob
from tests.jobserver.jobclient.servers import (
    ACCOUNT,
    URL,
    asgi,
    fake_job_server,
    job_body,
    proofs_check,
)


def report_of(*outcomes: JobOutcome) -> RunReport:
    return RunReport(url=URL, account=ACCOUNT, outcomes=outcomes)


def completed(number: int, sent_at: float, answered_at: float) -> JobOutcome:
    body = job_body(number)
    job = CompletedJob(id=body["id"], started_at=body["startedAt"], proof=body["proof"])
    return JobOutcome(number, sent_at, answered_at, job=job)


# --- judge ---------------------------------------------------------------------------


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
