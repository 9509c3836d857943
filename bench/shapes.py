"""Job servers built differently: the proxy in front of each shape the simulator can take.

Each shape is a job server that keeps the protocol but behaves as some real ones do,
and one run against it whose figures the targets judge (:mod:`bench.targets`):

- ``inline``: quick jobs called back, the callback's answer awaited, before ``/start``
  answers. 50 jobs on one account: all pass, in under a second.
- ``shuffled``: callbacks sent from a few senders, out of start order, late under a
  burst, none lost. 10,000 jobs over 100 accounts: all pass, few status polls.
- ``flaky-status``: every callback lost and half the status answers ``500``. 1,000 jobs:
  every client gets its own completed job, none ``job_lost``.
- ``leave-gate``: a gate of 0.1 s per start that honours disconnects; 100 clients of one
  account hang up after 0.5 s. Few jobs started, nothing left pending.
- ``reset-burst``: a gate of 10 ms that does not honour disconnects; 2,000 clients of one
  account reset 50 ms after sending. The account's starts at the job server stay within
  the proxy's per-account limit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

from bench.counters import scrape_sample
from bench.dialects import DIALECTS
from bench.harness import ServerProcess
from bench.options import BenchOptions
from bench.scenarios import SETTLE, MeasuredRun, Progress, load_plan, measure, warm_up
from bench.servers import job_server, proxy_server, read_health

PENDING_SERIES = "jobproxy_pending_jobs"
# How long a shape's job server may take to finish what the run left at its gate.
GATE_DRAIN_TIMEOUT = 15.0
HEALTH_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class Shape:
    """One job server shape and the run against it."""

    name: str
    #: The job server's settings, as flags (they win over the bench's).
    flags: tuple[str, ...]
    jobs: int
    accounts: int
    job_duration: float = 0.5
    leave_after: float | None = None  # clients hang up this long after sending
    warmup: bool = True

    @property
    def label(self) -> str:
        accounts = f"{self.accounts:,} account{'' if self.accounts == 1 else 's'}"
        left = f", clients leave after {self.leave_after:g} s" if self.leave_after else ""
        return f"{self.jobs:,} on {accounts}{left}"


SHAPES: tuple[Shape, ...] = (
    Shape(
        "inline",
        ("--job-duration", "0.01", "--job-duration-spread", "0", "--callback-before-answer", "0.2"),
        jobs=50,
        accounts=1,
        job_duration=0.01,
    ),
    Shape("shuffled", ("--callback-order", "shuffled", "--callback-senders", "4"), 10_000, 100),
    Shape(
        "flaky-status",
        ("--callback-drop-rate", "1", "--status-error-rate", "0.5"),
        jobs=1_000,
        accounts=20,
    ),
    Shape(
        "leave-gate",
        ("--start-latency", "0.1", "--honour-disconnects"),
        jobs=100,
        accounts=1,
        leave_after=0.5,
        warmup=False,
    ),
    Shape(
        "reset-burst",
        ("--start-latency", "0.01"),
        jobs=2_000,
        accounts=1,
        leave_after=0.05,
        warmup=False,
    ),
)


@dataclass(frozen=True, slots=True)
class ShapeResult:
    """A run against one shape, and what the job server and the proxy said of it."""

    shape: Shape
    run: MeasuredRun
    #: The job server's /healthz counts that grew during the run (start_queue_peak as is).
    jobserver: dict[str, int] = field(default_factory=dict)
    #: Held requests the proxy still had once the run's clients were all answered or gone.
    pending_after: int | None = None

    @property
    def status_polls(self) -> int | None:
        return self.jobserver.get("status_polls")

    @property
    def jobs_started(self) -> int | None:
        return self.jobserver.get("jobs_started")

    @property
    def start_queue_peak(self) -> int | None:
        return self.jobserver.get("start_queue_peak")


async def _settled_health(
    jobserver: ServerProcess, shape: Shape, before: dict[str, int]
) -> dict[str, int]:
    """The job server's counts once every start the run sent is done with: started, or
    abandoned when its client left (a gate drains at its own pace)."""
    deadline = time.monotonic() + GATE_DRAIN_TIMEOUT
    while True:
        health = await read_health(jobserver)
        grown = {
            name: value - before.get(name, 0)
            for name, value in health.items()
            if name != "start_queue_peak"
        }
        handled = grown.get("jobs_started", 0) + grown.get("starts_abandoned", 0)
        queued = health.get("jobs_queued", 0) + health.get("jobs_running", 0)
        settled = shape.leave_after is None or (handled >= shape.jobs and not queued)
        if settled or time.monotonic() > deadline:
            grown["start_queue_peak"] = health.get("start_queue_peak", 0)
            return grown
        await asyncio.sleep(HEALTH_INTERVAL)


async def run_shape(options: BenchOptions, shape: Shape, progress: Progress) -> ShapeResult:
    """One shape: a fresh job server of that shape and a proxy in front of it."""
    shaped = replace(options, job_duration=shape.job_duration)
    async with (
        job_server(shaped, flags=shape.flags) as jobserver,
        proxy_server(jobserver.url, "native", shaped) as proxy,
    ):
        proxy_url = proxy.url + DIALECTS[shaped.dialect].proxy_path
        if shape.warmup:
            accounts = min(shaped.warmup, shape.accounts)
            await warm_up(proxy_url, shaped.warmup, accounts, shaped, progress)
        progress(f"job server shape {shape.name}: {shape.label}")
        before = await read_health(jobserver)
        plan = load_plan(
            shaped,
            proxy_url,
            shape.jobs,
            shape.accounts,
            f"shape-{shape.name}",
            leave_after=shape.leave_after,
        )
        run = await measure(plan, shaped, jobserver=jobserver, proxy=proxy)
        pending = await scrape_sample(proxy.url, PENDING_SERIES)
        health = await _settled_health(jobserver, shape, before)
        await asyncio.sleep(SETTLE)
    return ShapeResult(shape, run, health, None if pending is None else int(pending))


async def run_shapes(options: BenchOptions, progress: Progress) -> list[ShapeResult]:
    """The chosen shapes, one after another."""
    chosen = [shape for shape in SHAPES if shape.name in options.shapes]
    return [await run_shape(options, shape, progress) for shape in chosen]
