"""The bench's verdicts: each figure against the limit it must stay under."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.holds import HoldResult
from bench.runs import BenchResults
from bench.scenarios import NetworkResult
from bench.shapes import ShapeResult
from bench.stats import RunSummary

FIFTY_RATIO_LIMIT = 1.10
SCALE_RATIO_LIMIT = 1.5
RSS_PER_REQUEST_LIMIT = 14 * 1_024
PROXY_CPU_PER_1000_LIMIT = 0.45  # seconds of proxy CPU per 1,000 jobs, largest size
# Total seconds of a network run by (round trip ms, jobs, accounts), for jobs of 0.5 s.
# Runs of other shapes (round trips, sizes, job durations) are reported, not judged.
NETWORK_TARGET_JOB_DURATION = 0.5
NETWORK_TOTAL_LIMITS: dict[tuple[float, int, int], float] = {
    (100.0, 50, 1): 0.80,
    (200.0, 50, 1): 1.10,
    (100.0, 1_000, 20): 2.0,
}


# The job server shapes (bench.shapes): what each run must show.
INLINE_TOTAL_LIMIT = 1.0  # seconds for 50 jobs called back before /start answers
SHUFFLED_POLLS_LIMIT = 100  # status polls for 10,000 jobs, none of them lost
LEAVE_GATE_STARTED_LIMIT = 10  # jobs started for 100 clients that left at the gate
UPSTREAM_MAX_PER_ACCOUNT = 100  # the proxy's default limit the reset burst must keep
# How clients hold (bench.holds): a stream or a long poll costs at most this much more
# per request than a plain held request, and a 202 comes this soon after its job started.
HOLD_EXTRA_RSS_LIMIT = 2 * 1_024
ACCEPT_LAG_LIMIT = 0.050


@dataclass(frozen=True, slots=True)
class Target:
    """One figure against its limit (lower is better for every target)."""

    name: str
    where: str
    value: float
    limit: float
    unit: str

    @property
    def passed(self) -> bool:
        return math.isfinite(self.value) and self.value <= self.limit

    def to_json(self) -> dict[str, object]:
        value = round(self.value, 4) if math.isfinite(self.value) else None
        return {
            "name": self.name,
            "where": self.where,
            "value": value,
            "limit": self.limit,
            "unit": self.unit,
            "passed": self.passed,
        }


def network_total_limit(network: NetworkResult) -> float | None:
    """The most seconds a network run may take, or None when no target names its shape."""
    if network.job_duration != NETWORK_TARGET_JOB_DURATION:
        return None
    return NETWORK_TOTAL_LIMITS.get((network.rtt_ms, network.jobs, network.accounts))


def network_where(network: NetworkResult) -> str:
    return f"network {network.rtt_ms:g} ms, {network.label}, {network.transport}"


def shape_targets(shape: ShapeResult, per_account_limit: int) -> list[Target]:
    """What the run against one job server shape is judged on."""
    where = f"shape {shape.shape.name}, {shape.shape.label}"
    summary = shape.run.summary
    targets: list[Target] = []
    if shape.shape.leave_after is None:
        failed = float(summary.jobs - summary.completed)
        targets.append(Target("requests_failed", where, failed, 0, "requests"))

    def figure(name: str, value: int | None, limit: float, unit: str) -> None:
        targets.append(Target(name, where, math.nan if value is None else value, limit, unit))

    match shape.shape.name:
        case "inline":
            total = summary.wall_s if summary.all_completed else math.nan
            targets.append(Target("shape_total", where, total, INLINE_TOTAL_LIMIT, "s"))
        case "shuffled":
            figure("status_polls", shape.status_polls, SHUFFLED_POLLS_LIMIT, "polls")
            if shape.run.proxy is not None:
                cpu = shape.run.proxy.cpu_s_per_1000_jobs
                limit = PROXY_CPU_PER_1000_LIMIT
                targets.append(Target("proxy_cpu_per_1000_jobs", where, cpu, limit, "s"))
        case "leave-gate":
            figure("jobs_started", shape.jobs_started, LEAVE_GATE_STARTED_LIMIT, "jobs")
            figure("pending_after_clients_left", shape.pending_after, 0, "requests")
        case "reset-burst":
            figure("start_queue_peak", shape.start_queue_peak, per_account_limit, "starts")
    return targets


def evaluate_targets(results: BenchResults) -> list[Target]:
    """Every target the results can be judged on."""
    targets: list[Target] = []

    def failures(where: str, summary: RunSummary) -> None:
        errors = float(summary.jobs - summary.completed)
        targets.append(Target("requests_failed", where, errors, 0, "requests"))

    for fifty in results.fifty:
        where = f"fifty {fifty.transport}"
        failures(where, fifty.run.summary)
        targets.append(Target("fifty_over_lower_bound", where, fifty.ratio, FIFTY_RATIO_LIMIT, "x"))
    if results.fifty_direct is not None:
        failures("fifty direct", results.fifty_direct.summary)
    for scale in results.scale:
        failures(f"{scale.size} direct", scale.direct.summary)
        for transport, run in scale.proxied.items():
            where = f"{scale.size} {transport}"
            failures(where, run.summary)
            ratio = scale.ratio(transport)
            targets.append(Target("proxied_over_direct", where, ratio, SCALE_RATIO_LIMIT, "x"))
            if run.proxy is not None:
                per_request = run.proxy.rss_growth_per_request_bytes
                limit = RSS_PER_REQUEST_LIMIT
                targets.append(Target("proxy_rss_per_held_request", where, per_request, limit, "B"))
                # Judged at the largest size: smaller runs last too little for the
                # process clock's ticks (10 ms) to tell 0.45 from 0.47 s per 1,000.
                if scale.size == max(item.size for item in results.scale):
                    cpu = run.proxy.cpu_s_per_1000_jobs
                    cpu_limit = PROXY_CPU_PER_1000_LIMIT
                    targets.append(Target("proxy_cpu_per_1000_jobs", where, cpu, cpu_limit, "s"))
    if results.floor is not None:
        failures("floor", results.floor.summary)
    for network in results.network:
        where = network_where(network)
        summary = network.run.summary
        failures(where, summary)
        if (total_limit := network_total_limit(network)) is not None:
            # A run cut short by errors would otherwise look fast.
            total = summary.wall_s if summary.all_completed else math.nan
            targets.append(Target("network_total", where, total, total_limit, "s"))
    per_account = int(
        dict(results.options.proxy_settings).get(
            "upstream_max_per_account", UPSTREAM_MAX_PER_ACCOUNT
        )
    )
    for shape in results.shapes:
        targets += shape_targets(shape, per_account)
    targets += hold_targets(results.holds)
    return targets


def hold_targets(holds: list[HoldResult]) -> list[Target]:
    """Every form's run completes; streams and long polls cost little more than a plain
    hold; the respond-async run's 202s follow their jobs' starts closely."""
    targets: list[Target] = []
    plain = next((hold for hold in holds if hold.form == "plain"), None)
    for hold in holds:
        where = f"holds {hold.label}"
        summary = hold.run.summary
        targets.append(
            Target("requests_failed", where, summary.jobs - summary.completed, 0, "requests")
        )
        if hold.lag_run:
            targets.append(
                Target("accept_lag_max", where, hold.accept_lag_max, ACCEPT_LAG_LIMIT, "s")
            )
        elif hold.form != "plain" and plain is not None:
            extra = hold.rss_per_request - plain.rss_per_request
            targets.append(
                Target("rss_above_plain_per_request", where, extra, HOLD_EXTRA_RSS_LIMIT, "B")
            )
    return targets
