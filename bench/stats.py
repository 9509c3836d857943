"""Pure arithmetic on what the generator measured: percentiles, summaries, the lower bound."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.load import LoadResult
from bench.outcomes import OK


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1), interpolated linearly between the nearest ranks.

    The same definition as numpy's default, so figures can be checked against it.
    """
    if not values:
        return math.nan
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction {fraction!r} is not within 0..1")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Quantiles of a set of latencies, seconds."""

    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencySummary:
        return cls(
            p50=percentile(values, 0.50),
            p90=percentile(values, 0.90),
            p99=percentile(values, 0.99),
            max=max(values, default=math.nan),
            mean=sum(values) / len(values) if values else math.nan,
        )

    def to_json(self) -> dict[str, float | None]:
        return {name: _finite(getattr(self, name)) for name in ("p50", "p90", "p99", "max", "mean")}


def _finite(value: float, digits: int = 4) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One generator run as the report shows it.

    ``latency_over_job`` is each completed request's latency minus the job's duration:
    what the path from client to job and back added. It splits into ``start_delay``
    (sending the request until the job started, by the job server's ``startedAt``) and
    ``after_job`` (the job's end until the client had the answer).
    """

    jobs: int
    completed: int
    errors: dict[str, int]
    wall_s: float
    latency: LatencySummary
    latency_over_job: LatencySummary
    start_delay: LatencySummary
    after_job: LatencySummary
    generator_cpu_s: float
    all_sent_s: float
    listen_drops: int
    error_examples: dict[str, str]

    @property
    def all_completed(self) -> bool:
        return self.completed == self.jobs

    def to_json(self) -> dict[str, object]:
        return {
            "jobs": self.jobs,
            "completed": self.completed,
            "errors": dict(self.errors),
            "error_examples": dict(self.error_examples),
            "wall_s": round(self.wall_s, 4),
            "latency_s": self.latency.to_json(),
            "latency_over_job_s": self.latency_over_job.to_json(),
            "start_delay_s": self.start_delay.to_json(),
            "after_job_s": self.after_job.to_json(),
            "generator_cpu_s": round(self.generator_cpu_s, 3),
            "all_sent_s": _finite(self.all_sent_s),
            "listen_drops": self.listen_drops,
        }


def summarize(result: LoadResult, *, job_duration: float, listen_drops: int = 0) -> RunSummary:
    """Count outcomes and summarize the latencies of the requests that succeeded."""
    succeeded = [
        latency
        for latency, outcome in zip(result.latencies, result.outcomes, strict=True)
        if outcome == OK
    ]
    timed = [
        (latency, delay)
        for latency, outcome, delay in zip(
            result.latencies, result.outcomes, result.start_delays, strict=True
        )
        if outcome == OK and delay is not None
    ]
    errors = Counter(outcome for outcome in result.outcomes if outcome != OK)
    return RunSummary(
        jobs=len(result.outcomes),
        completed=len(succeeded),
        errors=dict(errors.most_common()),
        wall_s=result.wall_s,
        latency=LatencySummary.of(succeeded),
        latency_over_job=LatencySummary.of([latency - job_duration for latency in succeeded]),
        start_delay=LatencySummary.of([delay for _, delay in timed]),
        after_job=LatencySummary.of([latency - delay - job_duration for latency, delay in timed]),
        generator_cpu_s=result.cpu_s,
        all_sent_s=result.all_sent_s,
        listen_drops=listen_drops,
        error_examples=result.error_examples,
    )


def per_start_seconds(result: LoadResult) -> float:
    """The mean time of one ``/start`` handling, from a sequential run of starts."""
    times = [
        latency
        for latency, outcome in zip(result.latencies, result.outcomes, strict=True)
        if outcome == OK
    ]
    return sum(times) / len(times) if times else math.nan


def lower_bound(*, job_duration: float, jobs: int, per_start_s: float) -> float:
    """The fastest ``jobs`` jobs of one account can finish through any proxy.

    The job server takes one connection at a time per account, so the starts are
    serialized: the last job starts after ``jobs`` start handlings and ends one job
    duration later.
    """
    return job_duration + jobs * per_start_s


def network_lower_bound(
    *, job_duration: float, rtt_s: float, jobs_per_account: int, per_start_s: float
) -> float:
    """The fastest an account's ``jobs_per_account`` jobs can finish across a network.

    :func:`lower_bound` plus one round trip (``rtt_s``), which the protocol itself needs:
    the last ``/start`` of the account travels to the job server (half a round trip) and
    its job's callback travels back (the other half). The answers to the starts travel
    back while the account's next starts are handled, so they add nothing.

    The starts' handling time comes from a job server without latency. With many
    accounts the bound is optimistic: it counts one account's starts only, while one
    job server process handles every account's.
    """
    serialized = lower_bound(
        job_duration=job_duration, jobs=jobs_per_account, per_start_s=per_start_s
    )
    return serialized + rtt_s


def jobs_per_account(jobs: int, accounts: int) -> int:
    """The busiest account's share when ``jobs`` go round-robin over ``accounts``."""
    return math.ceil(jobs / max(1, accounts))


def ratio(measured: float, reference: float) -> float:
    """``measured / reference``; NaN when the reference is missing or zero."""
    if not math.isfinite(reference) or reference <= 0 or not math.isfinite(measured):
        return math.nan
    return measured / reference
