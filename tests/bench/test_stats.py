"""The bench's arithmetic (``bench/stats.py``): quantiles, lower bounds, summaries."""

from __future__ import annotations

import math

import pytest

from bench.outcomes import OK
from bench.scenarios import MeasuredRun, ScaleResult
from bench.stats import (
    LatencySummary,
    jobs_per_account,
    lower_bound,
    network_lower_bound,
    per_start_seconds,
    percentile,
    ratio,
    summarize,
)
from tests.bench.results import load_result, network_result


def test_percentile_interpolates_like_numpy() -> None:
    """Quantiles interpolate linearly between ranks, as numpy's default does."""
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0.5) == pytest.approx(2.5)
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile(list(range(101)), 0.99) == pytest.approx(99.0)
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="fraction"):
        percentile(values, 1.5)


def test_latency_summary_of_values() -> None:
    """A summary holds the median, tail, maximum and mean."""
    summary = LatencySummary.of([0.1, 0.2, 0.3])
    assert summary.p50 == pytest.approx(0.2)
    assert summary.max == 0.3
    assert summary.mean == pytest.approx(0.2)
    assert LatencySummary.of([]).to_json() == dict.fromkeys(("p50", "p90", "p99", "max", "mean"))


def test_lower_bound_is_one_job_plus_serialized_starts() -> None:
    """The lower bound is one job duration plus every start handled one after another."""
    assert lower_bound(job_duration=0.5, jobs=50, per_start_s=0.001) == pytest.approx(0.55)
    assert ratio(0.605, 0.55) == pytest.approx(1.1)
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_network_lower_bound_adds_one_round_trip() -> None:
    """Across a network the bound adds one round trip to one account's serialized starts."""
    bound = network_lower_bound(job_duration=0.5, rtt_s=0.1, jobs_per_account=50, per_start_s=0.001)
    assert bound == pytest.approx(0.5 + 0.1 + 50 * 0.001)
    assert network_lower_bound(
        job_duration=0.5, rtt_s=0.0, jobs_per_account=50, per_start_s=0.001
    ) == pytest.approx(lower_bound(job_duration=0.5, jobs=50, per_start_s=0.001))
    assert jobs_per_account(1_000, 20) == 50
    assert jobs_per_account(41, 4) == 11  # round-robin: the busiest account has one more
    run = network_result(rtt_ms=200, jobs=41, accounts=4, wall_s=1.0, per_start_s=0.002)
    assert run.lower_bound_s == pytest.approx(0.5 + 0.2 + 11 * 0.002)
    assert run.ratio == pytest.approx(1.0 / run.lower_bound_s)
    assert run.label == "41 on 4 accounts"


def test_per_start_time_is_the_mean_of_successful_starts() -> None:
    """The per-start time averages the starts that succeeded and ignores failures."""
    result = load_result([OK, OK, "timeout"], [0.001, 0.003, 5.0])
    assert per_start_seconds(result) == pytest.approx(0.002)
    assert math.isnan(per_start_seconds(load_result(["timeout"], [5.0])))


def test_summarize_counts_errors_and_subtracts_the_job_duration() -> None:
    """Errors are counted by kind; latencies over the job come from successes only."""
    delays = [0.05, None, None, None, None]
    result = load_result([OK, OK, "timeout", "http-502", "timeout"], [0.6, 0.8, 9, 1, 9], delays)
    summary = summarize(result, job_duration=0.5, listen_drops=2)
    assert summary.start_delay.max == pytest.approx(0.05)
    assert summary.after_job.max == pytest.approx(0.05)
    assert (summary.jobs, summary.completed, summary.all_completed) == (5, 2, False)
    assert summary.errors == {"timeout": 2, "http-502": 1}
    assert list(summary.errors) == ["timeout", "http-502"]  # most frequent first
    assert summary.latency_over_job.max == pytest.approx(0.3)
    assert summary.to_json()["listen_drops"] == 2


def test_scale_ratio_needs_every_job_completed() -> None:
    """Proxied over direct is a ratio of totals, and undefined when a run had failures."""

    def run(outcomes: list[str], latencies: list[float]) -> MeasuredRun:
        load = load_result(outcomes, latencies)
        return MeasuredRun(summarize(load, job_duration=0.5), load)

    direct = run([OK, OK], [0.6, 1.0])
    scale = ScaleResult(size=2, accounts=1, direct=direct, proxied={"native": run([OK], [1.5])})
    assert scale.ratio("native") == pytest.approx(1.5)
    scale.proxied["httpx"] = run([OK, "timeout"], [0.6, 0.7])
    assert math.isnan(scale.ratio("httpx"))
