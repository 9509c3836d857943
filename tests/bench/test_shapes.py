"""The job server shapes of the bench: what each run is judged on, and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.__main__ import EXIT_OK, main
from bench.load import LoadPlan, LoadResult
from bench.options import SHAPE_NAMES, BenchOptions
from bench.outcomes import LEFT, OK
from bench.runs import BenchResults
from bench.scenarios import MeasuredRun
from bench.shapes import SHAPES, ShapeResult
from bench.stats import summarize
from bench.targets import evaluate_targets


def shape_result(name: str, outcomes: list[str], **counts: int | None) -> ShapeResult:
    (shape,) = [shape for shape in SHAPES if shape.name == name]
    load = LoadResult(
        wall_s=0.5,
        cpu_s=0.1,
        all_sent_s=0.01,
        latencies=[0.5] * len(outcomes),
        finished_at=[0.5] * len(outcomes),
        outcomes=outcomes,
        start_delays=[None] * len(outcomes),
    )
    pending = counts.pop("pending_after", 0)
    health = {name: value for name, value in counts.items() if value is not None}
    run = MeasuredRun(summarize(load, job_duration=shape.job_duration), load)
    return ShapeResult(shape, run, health, pending)


def test_the_shapes_offered_are_the_shapes_defined() -> None:
    """--shapes offers exactly the shapes bench.shapes runs, in the same order."""
    assert tuple(shape.name for shape in SHAPES) == SHAPE_NAMES


def test_each_shape_is_judged_on_its_own_figure() -> None:
    """Each shape's run meets its own target: a total, a poll count, jobs started, a peak."""
    results = BenchResults(
        BenchOptions(),
        shapes=[
            shape_result("inline", [OK] * 50),
            shape_result("shuffled", [OK] * 10, status_polls=101),
            shape_result("flaky-status", [OK] * 9 + ["http-502:job_lost"]),
            shape_result("leave-gate", [LEFT] * 100, jobs_started=10, pending_after=1),
            shape_result("reset-burst", [LEFT] * 20, start_queue_peak=100),
        ],
    )
    judged = {
        (target.where.split(",")[0], target.name): target.passed
        for target in evaluate_targets(results)
    }
    assert judged == {
        ("shape inline", "requests_failed"): True,
        ("shape inline", "shape_total"): True,
        ("shape shuffled", "requests_failed"): True,
        ("shape shuffled", "status_polls"): False,
        ("shape flaky-status", "requests_failed"): False,
        ("shape leave-gate", "jobs_started"): True,
        ("shape leave-gate", "pending_after_clients_left"): False,
        ("shape reset-burst", "start_queue_peak"): True,
    }


def test_a_missing_count_never_passes() -> None:
    """When the job server could not say how many jobs it started, the target is missed."""
    results = BenchResults(
        BenchOptions(), shapes=[shape_result("leave-gate", [LEFT] * 100, jobs_started=None)]
    )
    (started,) = [t for t in evaluate_targets(results) if t.name == "jobs_started"]
    assert math.isnan(started.value)
    assert not started.passed


def test_the_reset_burst_is_held_to_the_proxys_own_limit() -> None:
    """With upstream_max_per_account set for the bench's proxies, that is the limit."""
    options = BenchOptions(proxy_settings=(("upstream_max_per_account", "50"),))
    results = BenchResults(
        options, shapes=[shape_result("reset-burst", [LEFT] * 20, start_queue_peak=60)]
    )
    (peak,) = [t for t in evaluate_targets(results) if t.name == "start_queue_peak"]
    assert (peak.limit, peak.passed) == (50, False)


def test_leave_after_reaches_the_generators_command_line() -> None:
    """A plan whose clients leave passes --leave-after to the generator."""
    plan = LoadPlan("http://h/proxy", 10, 1, "x", leave_after=0.05)
    assert plan.argv()[-2:] == ["--leave-after", "0.05"]


@pytest.mark.parametrize("shapes", ["inline,leave-gate"])
def test_shapes_bench_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shapes: str
) -> None:
    """The quick shapes run against real processes and meet their targets."""
    output = tmp_path / "results.json"
    argv = ["--scenarios", "shapes", "--shapes", shapes, "--warmup", "4", "--output", str(output)]
    assert main(argv) == EXIT_OK
    assert "Job servers built differently" in capsys.readouterr().out
    document = json.loads(output.read_text())
    runs = {run["shape"]: run for run in document["shapes"]}
    assert runs["inline"]["run"]["completed"] == 50
    assert runs["leave-gate"]["run"]["errors"] == {"left": 100}
    assert runs["leave-gate"]["jobserver_counts"]["jobs_started"] <= 10
    assert runs["leave-gate"]["pending_after"] == 0
    assert all(target["passed"] for target in document["targets"]), document["targets"]
