"""The scenarios: which servers run, what load they get, and what is measured.

Every run starts its servers afresh (:mod:`bench.servers`), so one run's leftovers
(finished jobs, pooled connections, grown heaps) do not weigh on the next. The load
comes from a third process (:mod:`bench.load`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench.counters import scrape_counters
from bench.dialects import DIALECTS, DialectName
from bench.floor import HOLD_PATH
from bench.harness import ServerProcess
from bench.load import LoadPlan, LoadResult, spawn_load
from bench.options import BenchOptions, Transport
from bench.outcomes import OK
from bench.procfs import ProcessUsage, UsageMeter, read_listen_drops
from bench.servers import floor_server, job_server, proxy_server, read_start_queue_peak
from bench.stats import (
    RunSummary,
    jobs_per_account,
    lower_bound,
    network_lower_bound,
    per_start_seconds,
    ratio,
    summarize,
)

# Lets the previous step's connections close and its callbacks land before a timed run.
SETTLE = 0.3
WARMUP_STARTS = 5

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class MeasuredRun:
    """One timed generator run against one target, with what the servers spent on it."""

    summary: RunSummary
    load: LoadResult
    jobserver: ProcessUsage | None = None
    proxy: ProcessUsage | None = None
    proxy_counters: dict[str, float] = field(default_factory=dict)


def run_to_json(run: MeasuredRun) -> dict[str, object]:
    """A run's summary and what each process spent on it, as the JSON document has it."""
    document: dict[str, object] = {
        **run.summary.to_json(),
        "jobserver": run.jobserver.to_json() if run.jobserver is not None else None,
        "proxy": run.proxy.to_json() if run.proxy is not None else None,
    }
    if run.proxy is not None:
        document["proxy_counters"] = run.proxy_counters
    return document


def ratio_to_bound(run: MeasuredRun, lower_bound_s: float) -> float:
    """A run's total time over its lower bound; NaN unless every job completed."""
    summary = run.summary
    if not summary.all_completed:
        return math.nan
    return ratio(summary.wall_s, lower_bound_s)


@dataclass(frozen=True, slots=True)
class FiftyResult:
    """``jobs`` held requests on one account through the proxy, against the lower bound.

    The run is repeated on the same servers (it lasts well under a second, so one run is
    at the mercy of the scheduler); the median run by total time stands for them all.
    """

    transport: Transport
    job_duration: float
    per_start: RunSummary
    per_start_s: float
    runs: list[MeasuredRun]

    @property
    def run(self) -> MeasuredRun:
        ordered = sorted(self.runs, key=lambda run: run.summary.wall_s)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def lower_bound_s(self) -> float:
        jobs = self.run.summary.jobs
        return lower_bound(job_duration=self.job_duration, jobs=jobs, per_start_s=self.per_start_s)

    @property
    def ratio(self) -> float:
        return ratio_to_bound(self.run, self.lower_bound_s)


@dataclass(frozen=True, slots=True)
class ScaleResult:
    """``size`` held requests: straight to the job server, and through the proxy."""

    size: int
    accounts: int
    direct: MeasuredRun
    proxied: dict[Transport, MeasuredRun] = field(default_factory=dict)

    def ratio(self, transport: Transport) -> float:
        """Proxied total time over direct; NaN unless both completed every job.

        A run cut short by errors would otherwise look fast.
        """
        proxied, direct = self.proxied[transport].summary, self.direct.summary
        if not (proxied.all_completed and direct.all_completed):
            return math.nan
        return ratio(proxied.wall_s, direct.wall_s)


@dataclass(frozen=True, slots=True)
class FloorResult:
    """``size`` requests held at once by the serving stack alone (:mod:`bench.floor`)."""

    size: int
    summary: RunSummary
    load: LoadResult
    usage: ProcessUsage


def run_label(jobs: int, accounts: int) -> str:
    """``"50 on 1 account"``, ``"1,000 on 20 accounts"``."""
    return f"{jobs:,} on {accounts:,} account{'' if accounts == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class StartTiming:
    """Sequential ``wait: false`` starts on one account: what one ``/start`` handling takes."""

    summary: RunSummary
    per_start_s: float


@dataclass(frozen=True, slots=True)
class NetworkResult:
    """``jobs`` held requests over ``accounts`` through the proxy, ``rtt_ms`` from the job server.

    Against :func:`bench.stats.network_lower_bound`, with the ``/start`` handling time
    timed once per bench on a job server without latency.
    """

    rtt_ms: float
    transport: Transport
    accounts: int
    job_duration: float
    per_start_s: float
    run: MeasuredRun
    # The job server's most /start requests of one account at once, since it started.
    start_queue_peak: int | None = None

    @property
    def jobs(self) -> int:
        return self.run.summary.jobs

    @property
    def label(self) -> str:
        return run_label(self.jobs, self.accounts)

    @property
    def lower_bound_s(self) -> float:
        return network_lower_bound(
            job_duration=self.job_duration,
            rtt_s=self.rtt_ms / 1_000,
            jobs_per_account=jobs_per_account(self.jobs, self.accounts),
            per_start_s=self.per_start_s,
        )

    @property
    def ratio(self) -> float:
        return ratio_to_bound(self.run, self.lower_bound_s)


async def measure(
    plan: LoadPlan,
    options: BenchOptions,
    *,
    jobserver: ServerProcess,
    proxy: ServerProcess | None = None,
) -> MeasuredRun:
    """Run ``plan`` while watching the job server (and the proxy)."""
    counters_before = await scrape_counters(proxy.url) if proxy is not None else {}
    drops_before = read_listen_drops()
    async with contextlib.AsyncExitStack() as stack:
        meter = UsageMeter(jobserver.pid).measure(plan.jobs)
        jobserver_usage = await stack.enter_async_context(meter)
        proxy_usage: list[ProcessUsage] = []
        if proxy is not None:
            proxy_usage = await stack.enter_async_context(UsageMeter(proxy.pid).measure(plan.jobs))
        load = await spawn_load(plan)
    drops = read_listen_drops() - drops_before
    counters: dict[str, float] = {}
    if proxy is not None:
        counters_after = await scrape_counters(proxy.url)
        counters = {
            series: value - counters_before.get(series, 0.0)
            for series, value in counters_after.items()
            if value != counters_before.get(series, 0.0)
        }
    return MeasuredRun(
        summary=summarize(load, job_duration=options.job_duration, listen_drops=drops),
        load=load,
        jobserver=jobserver_usage[0],
        proxy=proxy_usage[0] if proxy_usage else None,
        proxy_counters=counters,
    )


def load_plan(
    options: BenchOptions, url: str, jobs: int, accounts: int, prefix: str, **more: Any
) -> LoadPlan:
    """A generator run as ``options`` have it (their deadline, their dialect); ``more``:
    the plan's other fields."""
    settings: dict[str, Any] = {"timeout": options.request_timeout, **more}
    return LoadPlan(url, jobs, accounts, prefix, dialect=options.dialect, **settings)


async def warm_up(
    url: str, jobs: int, accounts: int, options: BenchOptions, progress: Progress
) -> None:
    """Send a few requests first, so that lazy imports and first-time allocations are done.

    A failed warm-up is reported and the timed run goes ahead: its table row shows the
    errors, and the other rows still get measured.
    """
    if jobs < 1:
        return
    result = await spawn_load(load_plan(options, url, jobs, accounts, "warmup"))
    failed = Counter(outcome for outcome in result.outcomes if outcome != OK)
    if failed:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in failed.most_common(3))
        progress(f"[yellow]warm-up against {url}: {failed.total()} of {jobs} failed ({kinds})[/]")
    await asyncio.sleep(SETTLE)


async def time_starts(jobserver: ServerProcess, jobs: int, dialect: DialectName) -> LoadResult:
    """``jobs`` sequential unheld starts on one account, after a few untimed ones."""
    start_url = jobserver.url + DIALECTS[dialect].start_path
    sequential = partial(LoadPlan, wait=False, sequential=True, dialect=dialect)
    await spawn_load(sequential(start_url, WARMUP_STARTS, 1, "warmup-start"))
    return await spawn_load(sequential(start_url, jobs, 1, "per-start"))


async def run_fifty(
    options: BenchOptions, transport: Transport, progress: Progress = quiet
) -> FiftyResult:
    """50 jobs on one account through the proxy; the per-start time from the same server."""
    jobs = options.fifty_jobs
    async with (
        job_server(options) as jobserver,
        proxy_server(jobserver.url, transport, options) as proxy,
    ):
        progress(f"{jobs} jobs on one account: timing sequential /start on the job server")
        per_start = await time_starts(jobserver, jobs, options.dialect)
        # The jobs those starts began are still running: let them end first.
        await asyncio.sleep(options.job_duration + SETTLE)
        proxy_url = proxy.url + DIALECTS[options.dialect].proxy_path
        await warm_up(proxy_url, min(options.warmup, jobs), 1, options, progress)
        progress(f"{jobs} jobs on one account through the proxy ({transport})")
        runs: list[MeasuredRun] = []
        for repeat in range(max(1, options.fifty_repeats)):
            account = f"fifty{repeat}"
            plan = load_plan(options, proxy_url, jobs, 1, account)
            runs.append(await measure(plan, options, jobserver=jobserver, proxy=proxy))
            await asyncio.sleep(SETTLE)
    return FiftyResult(
        transport=transport,
        job_duration=options.job_duration,
        per_start=summarize(per_start, job_duration=0.0),
        per_start_s=per_start_seconds(per_start),
        runs=runs,
    )


async def run_fifty_direct(options: BenchOptions, progress: Progress = quiet) -> MeasuredRun:
    """50 held requests on one account straight to the job server: they queue one by one."""
    jobs = options.fifty_jobs
    timeout = max(options.request_timeout, jobs * options.job_duration * 1.5 + 10)
    async with job_server(options) as jobserver:
        progress(f"{jobs} jobs on one account straight to the job server (slow: one at a time)")
        start_url = jobserver.url + DIALECTS[options.dialect].start_path
        plan = load_plan(options, start_url, jobs, 1, "fifty-direct", timeout=timeout)
        return await measure(plan, options, jobserver=jobserver)


async def run_scale(options: BenchOptions, size: int, progress: Progress = quiet) -> ScaleResult:
    """``size`` held requests: direct (one account each), then through each transport."""
    async with job_server(options) as jobserver:
        start_url = jobserver.url + DIALECTS[options.dialect].start_path
        await warm_up(start_url, options.warmup, options.warmup, options, progress)
        progress(f"scale {size:,}: straight to the job server, one account per request")
        plan = load_plan(options, start_url, size, size, "direct")
        direct = await measure(plan, options, jobserver=jobserver)
    result = ScaleResult(size=size, accounts=options.accounts, direct=direct)
    for transport in options.transports:
        async with (
            job_server(options) as jobserver,
            proxy_server(jobserver.url, transport, options) as proxy,
        ):
            proxy_url = proxy.url + DIALECTS[options.dialect].proxy_path
            warmup_accounts = min(options.warmup, options.accounts)
            await warm_up(proxy_url, options.warmup, warmup_accounts, options, progress)
            progress(
                f"scale {size:,}: through the proxy ({transport}), {options.accounts} accounts"
            )
            plan = load_plan(options, proxy_url, size, options.accounts, "scale")
            result.proxied[transport] = await measure(
                plan, options, jobserver=jobserver, proxy=proxy
            )
    return result


async def run_floor(options: BenchOptions, progress: Progress = quiet) -> FloorResult:
    """The largest size held by a raw ASGI app under the proxy's uvicorn configuration."""
    size = max(options.sizes)
    async with floor_server(size, options) as floor:
        # Anything but POST /hold is answered at once: the warm-up is not held.
        await warm_up(f"{floor.url}/", options.warmup, 1, options, progress)
        progress(f"floor {size:,}: a raw ASGI app under uvicorn holds every request at once")
        plan = LoadPlan(
            f"{floor.url}{HOLD_PATH}", size, 1, "floor", timeout=options.request_timeout
        )
        drops_before = read_listen_drops()
        async with UsageMeter(floor.pid).measure(size) as usage:
            load = await spawn_load(plan)
        drops = read_listen_drops() - drops_before
    summary = summarize(load, job_duration=0.0, listen_drops=drops)
    return FloorResult(size=size, summary=summary, load=load, usage=usage[0])


async def time_network_starts(options: BenchOptions, progress: Progress = quiet) -> StartTiming:
    """The ``/start`` handling time of every network run, timed once without latency."""
    jobs = max(options.fifty_jobs, jobs_per_account(options.network_jobs, options.network_accounts))
    async with job_server(options) as jobserver:
        progress(f"network: timing {jobs} sequential /start on a job server without latency")
        starts = await time_starts(jobserver, jobs, options.dialect)
    return StartTiming(summarize(starts, job_duration=0.0), per_start_seconds(starts))


async def run_network(
    options: BenchOptions,
    rtt_ms: float,
    transport: Transport,
    starts: StartTiming,
    progress: Progress = quiet,
) -> list[NetworkResult]:
    """At one round trip: ``fifty_jobs`` on one account, then ``network_jobs`` over accounts.

    Both runs share a fresh job server (latency: half the round trip) and proxy.
    """
    shapes = [(options.fifty_jobs, 1), (options.network_jobs, options.network_accounts)]
    results: list[NetworkResult] = []
    async with (
        job_server(options, latency=rtt_ms / 2_000) as jobserver,
        proxy_server(jobserver.url, transport, options) as proxy,
    ):
        proxy_url = proxy.url + DIALECTS[options.dialect].proxy_path
        warmup_accounts = min(options.warmup, options.network_accounts)
        await warm_up(proxy_url, options.warmup, warmup_accounts, options, progress)
        for number, (jobs, accounts) in enumerate(shapes):
            progress(
                f"network, {rtt_ms:g} ms round trip: {run_label(jobs, accounts)} ({transport})"
            )
            plan = load_plan(options, proxy_url, jobs, accounts, f"network{number}")
            run = await measure(plan, options, jobserver=jobserver, proxy=proxy)
            peak = await read_start_queue_peak(jobserver)
            results.append(
                NetworkResult(
                    rtt_ms=rtt_ms,
                    transport=transport,
                    accounts=accounts,
                    job_duration=options.job_duration,
                    per_start_s=starts.per_start_s,
                    run=run,
                    start_queue_peak=peak,
                )
            )
            await asyncio.sleep(SETTLE)
    return results
