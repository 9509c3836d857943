"""``python -m bench.load``: the load generator, run as a process of its own.

The bench spawns it (:func:`spawn_load`) so that the generator's CPU is not counted
against the server it measures, and the proxy keeps a core to itself. It sends
``--jobs`` POSTs, all at once (each on its own connection, as held requests need) or
one after another on one kept-alive connection (``--sequential``); with
``--leave-after S`` each client resets its connection S seconds after sending unless it
was answered by then (outcome ``"left"``). ``--form`` says how each client holds:
``plain``, ``stream`` (``Accept: text/event-stream``: the job is the final event's data)
or ``async`` (``Prefer: respond-async``: a ``202``, then a long poll of its
``Location`` for the job; how long the proxy took from the job server's answer to the
``202``, by its ``Server-Timing: accept``, is recorded as the *accept lag*).
``--dialect`` says which API its requests and answers speak (:mod:`bench.dialects`).
It prints one JSON document on stdout: a :class:`LoadResult` with each request's
latency, completion time and outcome (``"ok"`` or a short word saying what went wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import uvloop

from bench.dialects import DIALECT_NAMES, DIALECTS, DialectName
from bench.http import build_get, build_post, origin_of
from bench.outcomes import (
    FAILURES,
    LEFT,
    Verdict,
    error_kind,
    failure,
    final_event,
    first_examples,
    judge,
    server_timing,
)
from bench.system import files_needed, raise_open_file_limit
from infra.http1 import Answer, Http1Connection, Origin, open_connection

Form = Literal["plain", "stream", "async"]

# The generator needs a moment to start Python and to send its answer back.
SPAWN_GRACE = 30.0


class LoadFailed(RuntimeError):
    """The generator process failed or did not answer in time."""


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What one generator run sends."""

    url: str
    jobs: int
    accounts: int
    account_prefix: str
    wait: bool = True
    sequential: bool = False
    timeout: float = 40.0
    leave_after: float | None = None  # seconds after sending; then the client resets
    form: Form = "plain"
    dialect: DialectName = "work-sample"

    def account(self, number: int) -> str:
        """Requests go round-robin over the accounts."""
        return f"{self.account_prefix}-{number % self.accounts}"

    def argv(self) -> list[str]:
        flags = ["--url", self.url, "--jobs", str(self.jobs), "--accounts", str(self.accounts)]
        flags += ["--account-prefix", self.account_prefix, "--timeout", str(self.timeout)]
        if not self.wait:
            flags.append("--no-wait")
        if self.sequential:
            flags.append("--sequential")
        if self.leave_after is not None:
            flags += ["--leave-after", str(self.leave_after)]
        if self.form != "plain":
            flags += ["--form", self.form]
        if self.dialect != "work-sample":
            flags += ["--dialect", self.dialect]
        return flags


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Per request, in sending order: latency, completion time since the first send, outcome.

    ``start_delays`` is, for completed jobs, the time from sending the request to the
    job's ``startedAt`` (the job server's clock, to the millisecond; same machine): it
    splits a latency into the way to the job's start and the way back from its end.
    """

    wall_s: float
    cpu_s: float
    # When the last request had been written: how long it took to get them all out.
    all_sent_s: float
    latencies: list[float]
    finished_at: list[float]
    outcomes: list[str]
    start_delays: list[float | None]
    # The first answer or exception seen for each kind of failure, cut short.
    error_examples: dict[str, str] = field(default_factory=dict)
    # Form async: seconds from the job server's answer to the 202, as the proxy said.
    accept_lags: list[float | None] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "wall_s": round(self.wall_s, 6),
            "cpu_s": round(self.cpu_s, 6),
            "all_sent_s": round(self.all_sent_s, 6) if math.isfinite(self.all_sent_s) else None,
            "latencies": [round(value, 6) for value in self.latencies],
            "finished_at": [round(value, 6) for value in self.finished_at],
            "outcomes": self.outcomes,
            "start_delays": [None if v is None else round(v, 4) for v in self.start_delays],
            "error_examples": self.error_examples,
            "accept_lags": [None if v is None else round(v, 4) for v in self.accept_lags],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LoadResult:
        return cls(
            wall_s=float(document["wall_s"]),
            cpu_s=float(document["cpu_s"]),
            all_sent_s=math.nan
            if document["all_sent_s"] is None
            else float(document["all_sent_s"]),
            latencies=[float(value) for value in document["latencies"]],
            finished_at=[float(value) for value in document["finished_at"]],
            outcomes=[str(value) for value in document["outcomes"]],
            start_delays=[None if v is None else float(v) for v in document["start_delays"]],
            error_examples={str(k): str(v) for k, v in document["error_examples"].items()},
            accept_lags=[None if v is None else float(v) for v in document["accept_lags"]],
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sent(NamedTuple):
    started: float  # perf_counter
    written: float | None  # when the request was on its way, after connecting
    finished: float
    verdict: Verdict
    start_delay: float | None
    accept_lag: float | None = None


FORM_HEADERS = {
    "plain": "",
    "stream": "Accept: text/event-stream\r\n",
    "async": "Prefer: respond-async\r\n",
}


async def _exchange(
    origin: Origin, request: bytes, plan: LoadPlan, written: list[float]
) -> Answer | None:
    """One request on a connection of its own (``written`` gets when it was on its way);
    None when the plan's client left first."""
    connection = await open_connection(origin)
    try:
        pending_answer = connection.send(request)
        written.append(time.perf_counter())
        if plan.leave_after is None:
            return await pending_answer
        done, _ = await asyncio.wait((pending_answer,), timeout=plan.leave_after)
        if not done:
            pending_answer.cancel()
            connection.reset()
            return None
        return pending_answer.result()
    finally:
        connection.close()


async def _concurrent_request(
    origin: Origin, request: bytes, deadline: float, plan: LoadPlan
) -> Sent:
    sent_at = time.time()
    started = time.perf_counter()
    lag: float | None = None
    written: list[float] = []
    try:
        async with asyncio.timeout_at(deadline):
            answer = await _exchange(origin, request, plan, written)
            if answer is None:
                return Sent(started, written[0], time.perf_counter(), Verdict(LEFT), None)
            if plan.form == "stream":
                answer = final_event(answer)
            elif plan.form == "async" and answer.status == 202:
                lag = server_timing(answer, b"accept")
                location = urlsplit((answer.header(b"location") or b"").decode()).path
                wait = f"Prefer: wait={max(1, int(plan.timeout))}\r\n"
                get = build_get(origin.host, origin.port, location, headers=wait)
                answer = await _exchange(origin, get, plan, []) or answer
        verdict = judge(answer, wait=plan.wait, dialect=DIALECTS[plan.dialect])
    except FAILURES as exc:
        verdict = failure(error_kind(exc, connected=bool(written)), exc)
    start_delay = None if verdict.started_at is None else verdict.started_at - sent_at
    return Sent(
        started, written[0] if written else None, time.perf_counter(), verdict, start_delay, lag
    )


async def run_concurrent(plan: LoadPlan) -> LoadResult:
    """Every request at once, each on its own connection."""
    origin = origin_of(plan.url)
    requests = [
        build_post(
            origin.host,
            origin.port,
            urlsplit(plan.url).path,
            _body(plan, number),
            keep_alive=False,
            headers=FORM_HEADERS[plan.form] + _headers(plan, number),
        )
        for number in range(plan.jobs)
    ]
    cpu_before = _cpu_seconds()
    began = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + plan.timeout
    results = await asyncio.gather(
        *(_concurrent_request(origin, request, deadline, plan) for request in requests)
    )
    finished_at = [sent.finished - began for sent in results]
    written = [sent.written - began for sent in results if sent.written is not None]
    return LoadResult(
        wall_s=max(finished_at, default=0.0),
        cpu_s=_cpu_seconds() - cpu_before,
        all_sent_s=max(written, default=math.nan),
        latencies=[sent.finished - sent.started for sent in results],
        finished_at=finished_at,
        outcomes=[sent.verdict.outcome for sent in results],
        start_delays=[sent.start_delay for sent in results],
        error_examples=first_examples(sent.verdict for sent in results),
        accept_lags=[sent.accept_lag for sent in results],
    )


async def run_sequential(plan: LoadPlan) -> LoadResult:
    """One request after another on one kept-alive connection (reopened after an error,
    or when it cannot be reused)."""
    origin, path = origin_of(plan.url), urlsplit(plan.url).path
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    finished_at: list[float] = []
    outcomes: list[str] = []
    start_delays: list[float | None] = []
    verdicts: list[Verdict] = []
    connection: Http1Connection | None = None
    cpu_before = _cpu_seconds()
    began = time.perf_counter()
    deadline = loop.time() + plan.timeout
    for number in range(plan.jobs):
        body, headers = _body(plan, number), _headers(plan, number)
        request = build_post(origin.host, origin.port, path, body, keep_alive=True, headers=headers)
        sent = time.perf_counter()
        sent_at = time.time()
        connected = False
        try:
            async with asyncio.timeout_at(deadline):
                if connection is None or not connection.reusable():
                    if connection is not None:
                        connection.close()
                    connection = await open_connection(origin)
                connected = True
                answer = await connection.send(request)
            verdict = judge(answer, wait=plan.wait, dialect=DIALECTS[plan.dialect])
        except FAILURES as exc:
            verdict = failure(error_kind(exc, connected=connected), exc)
            if connection is not None:
                connection.close()
            connection = None
        verdicts.append(verdict)
        outcomes.append(verdict.outcome)
        start_delays.append(None if verdict.started_at is None else verdict.started_at - sent_at)
        now = time.perf_counter()
        latencies.append(now - sent)
        finished_at.append(now - began)
    if connection is not None:
        connection.close()
    return LoadResult(
        wall_s=time.perf_counter() - began,
        cpu_s=_cpu_seconds() - cpu_before,
        all_sent_s=math.nan,  # one at a time: each waits for the one before
        latencies=latencies,
        finished_at=finished_at,
        outcomes=outcomes,
        start_delays=start_delays,
        error_examples=first_examples(verdicts),
    )


def _body(plan: LoadPlan, number: int) -> bytes:
    return DIALECTS[plan.dialect].body(plan.account(number), number, plan.wait)


def _headers(plan: LoadPlan, number: int) -> str:
    return DIALECTS[plan.dialect].headers(plan.account(number), plan.wait)


async def spawn_load(plan: LoadPlan) -> LoadResult:
    """Run the generator as a child process and return what it measured."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        *plan.argv(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(plan.timeout + SPAWN_GRACE):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        raise LoadFailed(f"the load generator did not finish within {plan.timeout} s") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        tail = stderr.decode(errors="replace")[-2_000:]
        raise LoadFailed(f"the load generator exited with {process.returncode}:\n{tail}")
    return LoadResult.from_json(json.loads(stdout))


def parse_plan(argv: Sequence[str] | None) -> LoadPlan:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description="Send job requests; print a JSON result."
    )
    parser.add_argument("--url", required=True, help="full endpoint URL, e.g. .../proxy")
    parser.add_argument("--jobs", type=int, required=True, help="number of requests")
    parser.add_argument("--accounts", type=int, default=1, help="accounts, used round-robin")
    parser.add_argument("--account-prefix", default="bench", help="accounts are PREFIX-<n>")
    parser.add_argument("--no-wait", dest="wait", action="store_false", help='send "wait":false')
    parser.add_argument("--sequential", action="store_true", help="one request at a time")
    parser.add_argument("--timeout", type=float, default=40.0, help="deadline of the run, s")
    parser.add_argument(
        "--leave-after", type=float, help="reset each connection unanswered this long, s"
    )
    parser.add_argument(
        "--form", choices=tuple(FORM_HEADERS), default="plain", help="how each client holds"
    )
    parser.add_argument(
        "--dialect", choices=DIALECT_NAMES, default="work-sample", help="the API spoken"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.accounts < 1 or args.timeout <= 0:
        parser.error("--jobs and --accounts must be at least 1, --timeout above 0")
    if args.leave_after is not None and not 0 <= args.leave_after < args.timeout:
        parser.error("--leave-after must be at least 0 and below --timeout")
    return LoadPlan(
        url=args.url,
        jobs=args.jobs,
        accounts=args.accounts,
        account_prefix=args.account_prefix,
        wait=args.wait,
        sequential=args.sequential,
        timeout=args.timeout,
        leave_after=args.leave_after,
        form=args.form,
        dialect=args.dialect,
    )


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_plan(argv)
    raise_open_file_limit(files_needed(plan.jobs))
    run = run_sequential if plan.sequential else run_concurrent
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(plan))
    json.dump(result.to_json(), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
