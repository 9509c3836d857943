"""How clients hold, and what each form costs the proxy (``--scenarios holds``).

The same held jobs through the proxy, as plain held requests, as streams of the job's
events (``Accept: text/event-stream``), and as a ``202`` then a long poll of the job's
``/jobs/{ref}`` (``Prefer: respond-async``, then ``Prefer: wait``): each run on a fresh
job server and proxy, the proxy's RSS growth per request against the plain run's. A
smaller run of respond-async measures how soon each ``202`` follows the job server's
answer (its *accept lag*, from reading that answer to sending the ``202``, as the proxy's
``Server-Timing: accept`` says).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from bench.dialects import DIALECTS
from bench.load import Form
from bench.options import BenchOptions
from bench.scenarios import SETTLE, MeasuredRun, Progress, load_plan, measure, warm_up
from bench.servers import job_server, proxy_server


@dataclass(frozen=True, slots=True)
class HoldResult:
    """One run of ``jobs`` held requests in one form."""

    form: Form
    label: str
    run: MeasuredRun
    #: The respond-async run judged on its accept lag, not on its memory.
    lag_run: bool = False

    @property
    def rss_per_request(self) -> float:
        proxy = self.run.proxy
        return proxy.rss_growth_per_request_bytes if proxy is not None else math.nan

    @property
    def accept_lag_max(self) -> float:
        lags = [lag for lag in self.run.load.accept_lags if lag is not None]
        if not lags or len(lags) < self.run.summary.jobs:
            return math.nan  # a job without its lag: no figure for the run
        return max(lags)


HOLD_FORMS: tuple[tuple[Form, str], ...] = (
    ("plain", "held"),
    ("stream", "streamed"),
    ("async", "202, then a long poll"),
)


async def run_form(
    options: BenchOptions,
    form: Form,
    jobs: int,
    label: str,
    progress: Progress,
    *,
    lag_run: bool = False,
) -> HoldResult:
    async with (
        job_server(options) as jobserver,
        proxy_server(jobserver.url, "native", options) as proxy,
    ):
        url = proxy.url + DIALECTS[options.dialect].proxy_path
        await warm_up(url, options.warmup, min(options.warmup, options.accounts), options, progress)
        progress(f"holds: {jobs:,} jobs, {label}")
        plan = load_plan(options, url, jobs, options.accounts, f"hold-{form}", form=form)
        run = await measure(plan, options, jobserver=jobserver, proxy=proxy)
        await asyncio.sleep(SETTLE)
    return HoldResult(form, f"{jobs:,} {label}", run, lag_run)


async def run_holds(options: BenchOptions, progress: Progress) -> list[HoldResult]:
    """Each form at ``hold_jobs``, then respond-async at ``async_jobs`` for its lag."""
    results = [
        await run_form(options, form, options.hold_jobs, label, progress)
        for form, label in HOLD_FORMS
    ]
    lag_label = "202 (respond-async), then a long poll: accept lag"
    lagged = await run_form(options, "async", options.async_jobs, lag_label, progress, lag_run=True)
    results.append(lagged)
    return results
