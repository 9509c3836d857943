"""The jobclient: fire N held job requests at once and judge what comes back.

``jobclient --url URL --account NAME [--jobs 50] [--deadline 5] [--json]`` posts
``{"account": NAME, "wait": true}`` to ``URL`` ``--jobs`` times at once, then speaks as
the original client did::

     50 / 50 [=================================================] 100.00 % 1s

    Succeeded: 50
    Average Duration: 0.532087121 seconds
    Total Duration: 0.601318954 seconds

    WORK SAMPLE RESULT: PASSED

    Proof :
    H4sIAAAAAAAC/...

(the live line on a terminal only; see :mod:`jobserver.progress`). It is built from
three pure pieces and a thin command line:

- :func:`run_jobs` sends the requests and returns a :class:`RunReport` of per-job
  :class:`JobOutcome` values; it never raises for what the server does.
- :func:`judge` decides PASSED or FAILED from a report and a deadline; on PASSED its
  :class:`Verdict` carries the proof bundle (see :mod:`jobserver.proofs`).
- :func:`render_text` and :func:`render_json` turn both into output.

The client checks only what the protocol promises and a client can see: HTTP 200, a
JSON object, ``state`` ``"completed"``, a non-empty string ``id``, a string
``startedAt`` and a proof of the right shape. Whether a proof is genuine is for
``jobserver verify`` to say: only the job server's secret can tell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from jobserver.progress import ProgressLine, ProgressLines
from jobserver.proofs import CompletedJob, encode_bundle, is_proof_shaped

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_JOBS = 50
DEFAULT_DEADLINE = 5.0
DEFAULT_TIMEOUT = 120.0
RESULT_PASSED = "PASSED"
RESULT_FAILED = "FAILED"
# Enough of an error body to say what went wrong without flooding the terminal.
BODY_EXCERPT_CHARS = 200
# Text output lists this many failures one by one; --json lists them all.
LISTED_FAILURES = 20

# Signs, anywhere in an error's chain of causes, that the server dropped the connection.
DISCONNECTED = (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError)

ProgressCallback = Callable[["JobOutcome"], None]


@dataclass(frozen=True)
class JobOutcome:
    """One request: when it was sent and answered, and either its job or why it failed."""

    number: int
    sent_at: float
    answered_at: float
    job: CompletedJob | None = None
    failure: str | None = None

    @property
    def duration(self) -> float:
        """Seconds from sending the request to having the whole answer (or the error)."""
        return self.answered_at - self.sent_at

    @property
    def succeeded(self) -> bool:
        return self.job is not None


@dataclass(frozen=True)
class RunReport:
    """Everything :func:`run_jobs` observed, in job order (job numbers start at 1)."""

    url: str
    account: str
    outcomes: tuple[JobOutcome, ...]

    @property
    def jobs(self) -> tuple[CompletedJob, ...]:
        return tuple(o.job for o in self.outcomes if o.job is not None)

    @property
    def failures(self) -> tuple[JobOutcome, ...]:
        return tuple(o for o in self.outcomes if o.job is None)

    @property
    def average(self) -> float:
        """Mean per-request latency over every request, failed ones included."""
        if not self.outcomes:
            return 0.0
        return sum(o.duration for o in self.outcomes) / len(self.outcomes)

    @property
    def total(self) -> float:
        """Wall time from the first request sent to the last answer received."""
        if not self.outcomes:
            return 0.0
        return max(o.answered_at for o in self.outcomes) - min(o.sent_at for o in self.outcomes)


@dataclass(frozen=True)
class Verdict:
    """PASSED or FAILED, why it failed, and on PASSED the encoded proof bundle."""

    passed: bool
    reasons: tuple[str, ...]
    proof: str | None

    @property
    def result(self) -> str:
        return RESULT_PASSED if self.passed else RESULT_FAILED


def check_answer(response: httpx.Response) -> CompletedJob | str:
    """The completed job in ``response``, or a one-line reason why it is not one."""
    status = response.status_code
    if status != 200:
        excerpt = " ".join(response.text.split())[:BODY_EXCERPT_CHARS]
        return f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
    try:
        body = response.json()
    except ValueError:
        return "response is not JSON"
    if not isinstance(body, dict):
        return "response is not a JSON object"
    return check_job(body)


def check_job(body: dict[str, Any]) -> CompletedJob | str:
    """The completed job in a job JSON object, or why it is not a completed, proven job."""
    state = body.get("state")
    if state == "failed":
        error = " ".join(str(body.get("error", "no error given")).split())
        return f"state failed: {error[:BODY_EXCERPT_CHARS]}"
    if state != "completed":
        return f"state {state!r}, expected 'completed'"
    job_id, started_at, proof = body.get("id"), body.get("startedAt"), body.get("proof")
    if not isinstance(job_id, str) or not job_id:
        return "missing or invalid id"
    if not isinstance(started_at, str):
        return "missing or invalid startedAt"
    if not isinstance(proof, str) or not is_proof_shaped(proof):
        return "invalid proof shape"
    return CompletedJob(id=job_id, started_at=started_at, proof=proof)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a transport failure: no traceback reaches the user.

    httpx-aiohttp maps aiohttp's errors loosely (a refused connection or a dropped one
    arrives as ``httpx.ConnectTimeout``, a garbled status line not mapped at all), so
    the reason is read from the whole chain of causes, not from the outer type.
    """
    chain = _causes(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, DISCONNECTED) for e in chain):
        return "connection closed by the server"
    library = next((e for e in chain if isinstance(e, aiohttp.ClientError)), exc)
    if isinstance(library, aiohttp.ServerTimeoutError | httpx.TimeoutException):
        return "timed out"
    message = " ".join(str(library).split())[:BODY_EXCERPT_CHARS]
    if isinstance(library, aiohttp.ClientConnectorError | httpx.ConnectError):
        return f"cannot connect: {message}" if message else "cannot connect"
    name = type(library).__name__
    return f"{name}: {message}" if message else name


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


async def _run_one(
    client: httpx.AsyncClient, url: str, account: str, number: int, request_timeout: float
) -> JobOutcome:
    sent_at = time.perf_counter()
    result: CompletedJob | str
    try:
        # httpx's timeout bounds each read and write; this one bounds the whole request.
        async with asyncio.timeout(request_timeout):
            response = await client.post(url, json={"account": account, "wait": True})
        result = check_answer(response)
    except TimeoutError:
        result = "timed out"
    except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:
        result = describe_error(exc)
    answered_at = time.perf_counter()
    if isinstance(result, str):
        return JobOutcome(number, sent_at, answered_at, failure=result)
    return JobOutcome(number, sent_at, answered_at, job=result)


async def run_jobs(
    url: str,
    account: str,
    jobs: int,
    *,
    request_timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunReport:
    """Post ``jobs`` held job requests to ``url`` all at once and collect every outcome.

    One client serves all requests, with a pool as large as the run, so that every
    request is in flight together rather than queued for a connection. By default the
    client rides on the httpx-aiohttp transport; ``transport`` replaces it (tests pass
    ``httpx.ASGITransport`` or ``httpx.MockTransport``). ``on_progress`` is called with
    each outcome as it arrives.
    """
    if transport is None:
        # httpx's own pool slows down as connections multiply: measured on loopback
        # against a fake 0.5 s job, 1,000 jobs took 8.2 s through it and 1.6 s through
        # aiohttp's (200 jobs: 2.1 s and 0.7 s; 50 jobs: 0.65 s and 0.55 s), overhead
        # that Total Duration would otherwise charge to the server under test.
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=jobs))
    async with httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(request_timeout)
    ) as client:

        async def one(number: int) -> JobOutcome:
            outcome = await _run_one(client, url, account, number, request_timeout)
            if on_progress is not None:
                on_progress(outcome)
            return outcome

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(number)) for number in range(1, jobs + 1)]
    return RunReport(url=url, account=account, outcomes=tuple(t.result() for t in tasks))


def judge(report: RunReport, deadline: float) -> Verdict:
    """PASSED when every job completed with a well-formed proof and the run met the deadline."""
    reasons: list[str] = []
    failed = len(report.failures)
    if not report.outcomes:
        reasons.append("no jobs ran")
    if failed:
        reasons.append(f"{failed} job{'s' if failed != 1 else ''} failed")
    ids = [job.id for job in report.jobs]
    repeated = len(ids) - len(set(ids))
    if repeated:
        reasons.append(f"{repeated} answer{'s' if repeated != 1 else ''} repeated a job id")
    if report.total > deadline:
        reasons.append(f"total {report.total:.3f} s over the {deadline:g} s deadline")
    if reasons:
        return Verdict(passed=False, reasons=tuple(reasons), proof=None)
    return Verdict(passed=True, reasons=(), proof=encode_bundle(report.jobs))


def render_text(report: RunReport, verdict: Verdict) -> str:
    """The summary in the original client's words, ending with the result (and the proof)."""
    lines = [f"Succeeded: {len(report.jobs)}"]
    failures = report.failures
    if failures:
        lines.append(f"Failed: {len(failures)}")
        lines.extend(f"  job {o.number}: {o.failure}" for o in failures[:LISTED_FAILURES])
        if len(failures) > LISTED_FAILURES:
            lines.append(f"  ... and {len(failures) - LISTED_FAILURES} more")
    lines.append(f"Average Duration: {report.average:.9f} seconds")
    lines.append(f"Total Duration: {report.total:.9f} seconds")
    lines.extend(["", f"WORK SAMPLE RESULT: {verdict.result}"])
    lines.extend(f"Reason: {reason}" for reason in verdict.reasons)
    if verdict.proof is not None:
        lines.extend(["", "Proof :", verdict.proof])
    return "\n".join(lines)


def render_json(report: RunReport, verdict: Verdict, deadline: float) -> str:
    """One JSON object with the same facts as :func:`render_text`."""
    document = {
        "account": report.account,
        "jobs": len(report.outcomes),
        "succeeded": len(report.jobs),
        "failed": len(report.failures),
        "failures": [{"job": o.number, "reason": o.failure} for o in report.failures],
        "average": round(report.average, 3),
        "total": round(report.total, 3),
        "deadline": deadline,
        "result": verdict.result,
        "reasons": list(verdict.reasons),
        "proof": verdict.proof,
    }
    return json.dumps(document)


class UsageError(Exception):
    """A bad command line; :func:`main` prints it on one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _jobs_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _endpoint(text: str) -> str:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"must be an absolute http(s) URL, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``jobclient`` command line (DESIGN §5)."""
    parser = _Parser(
        prog="jobclient",
        description="Post held job requests all at once and judge the answers.",
    )
    parser.add_argument("--url", required=True, type=_endpoint, help="full endpoint URL")
    parser.add_argument("--account", required=True, help="account name to post")
    parser.add_argument("--jobs", type=_jobs_count, default=DEFAULT_JOBS, help="default 50")
    parser.add_argument(
        "--deadline", type=_seconds, default=DEFAULT_DEADLINE, help="seconds, default 5"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT, help="per request, default 120"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jobclient``; returns the exit code (0 PASSED, 1 FAILED, 2 usage error)."""
    try:
        options = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"jobclient: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not options.account:
        print("jobclient: error: argument --account: must not be empty", file=sys.stderr)
        return EXIT_USAGE

    progress: ProgressLine | ProgressLines | None = None
    if sys.stderr.isatty():
        progress = ProgressLine(options.jobs, sys.stderr)
    elif not options.json:
        progress = ProgressLines(options.jobs, sys.stderr)

    async def run() -> RunReport:
        shown = progress.shown() if isinstance(progress, ProgressLine) else contextlib.nullcontext()
        async with shown:
            return await run_jobs(
                options.url,
                options.account,
                options.jobs,
                request_timeout=options.timeout,
                on_progress=progress,
            )

    try:
        report = asyncio.run(run())
    except KeyboardInterrupt:
        print("jobclient: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

    verdict = judge(report, options.deadline)
    if options.json:
        print(render_json(report, verdict, options.deadline))
    else:
        print(render_text(report, verdict))
    return EXIT_PASSED if verdict.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
