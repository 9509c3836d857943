"""The bench's verdicts (``bench/targets.py``) and the proxy's counters it reads."""

from __future__ import annotations

import math

from bench.counters import answered_by_poll, parse_counters
from bench.options import BenchOptions
from bench.outcomes import OK
from bench.procfs import ProcessUsage
from bench.runs import BenchResults
from bench.scenarios import MeasuredRun, ScaleResult
from bench.stats import summarize
from bench.targets import PROXY_CPU_PER_1000_LIMIT, Target, evaluate_targets
from tests.bench.results import load_result, network_result


def test_network_targets_judge_the_listed_round_trips_only() -> None:
    """Totals are judged at the targets' round trips and shapes; every run must not fail."""
    runs = [
        network_result(rtt_ms=100, jobs=50, accounts=1, wall_s=0.75),
        network_result(rtt_ms=200, jobs=50, accounts=1, wall_s=1.2),
        network_result(rtt_ms=100, jobs=1_000, accounts=20, wall_s=1.9),
        network_result(rtt_ms=20, jobs=50, accounts=1, wall_s=0.6),
        network_result(rtt_ms=100, jobs=50, accounts=1, wall_s=0.5, failed=1),
        network_result(rtt_ms=100, jobs=50, accounts=1, wall_s=0.5, job_duration=0.1),
    ]
    targets = evaluate_targets(BenchResults(BenchOptions(), network=runs))
    totals = [(t.where, t.value, t.limit, t.passed) for t in targets if t.name == "network_total"]
    assert totals[:3] == [
        ("network 100 ms, 50 on 1 account, native", 0.75, 0.80, True),
        ("network 200 ms, 50 on 1 account, native", 1.2, 1.10, False),
        ("network 100 ms, 1,000 on 20 accounts, native", 1.9, 2.0, True),
    ]
    # The run with a failure has no total to judge; the one with short jobs has no target.
    assert len(totals) == 4
    assert math.isnan(totals[3][1])
    assert not totals[3][3]
    failed = [t.passed for t in targets if t.name == "requests_failed"]
    assert failed == [True, True, True, True, False, True]


def test_targets_pass_at_the_limit_and_fail_on_nan() -> None:
    """A target passes at or below its limit; a missing figure never passes."""
    assert Target("ratio", "x", 1.5, 1.5, "x").passed
    assert not Target("ratio", "x", 1.51, 1.5, "x").passed
    assert not Target("ratio", "x", math.nan, 1.5, "x").to_json()["passed"]


def test_proxy_cpu_is_judged_at_the_largest_size_only() -> None:
    """The proxy CPU target applies to the largest scale run, where the clock can tell."""
    load = load_result([OK], [1.0])
    usage = ProcessUsage(cpu_s=1.0, rss_baseline_kib=0, rss_peak_kib=0, jobs=1_000)

    def scale(size: int) -> ScaleResult:
        run = MeasuredRun(summarize(load, job_duration=0.5), load)
        proxied = MeasuredRun(summarize(load, job_duration=0.5), load, proxy=usage)
        return ScaleResult(size=size, accounts=1, direct=run, proxied={"native": proxied})

    results = BenchResults(BenchOptions(), scale=[scale(1_000), scale(10_000)])
    cpu = [t for t in evaluate_targets(results) if t.name == "proxy_cpu_per_1000_jobs"]
    assert [(t.where, t.value, t.limit) for t in cpu] == [
        ("10000 native", 1.0, PROXY_CPU_PER_1000_LIMIT)
    ]
    assert not cpu[0].passed


def test_counters_are_read_from_the_exposition() -> None:
    """Only jobproxy_*_total samples are kept, by series."""
    exposition = "\n".join(
        [
            "# HELP jobproxy_requests_total Client job requests by outcome.",
            'jobproxy_requests_total{outcome="completed"} 1000.0',
            'jobproxy_requests_created{outcome="completed"} 1.7e9',
            'jobproxy_status_poll_fallbacks_total{answered_by="poll"} 12.0',
            "jobproxy_pending_jobs 0.0",
            "python_gc_objects_collected_total 5.0",
        ]
    )
    counters = parse_counters(exposition)
    assert counters == {
        'jobproxy_requests_total{outcome="completed"}': 1000.0,
        'jobproxy_status_poll_fallbacks_total{answered_by="poll"}': 12.0,
    }
    assert answered_by_poll(counters) == 12
