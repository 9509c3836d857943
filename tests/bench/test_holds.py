"""The holds scenario of the bench: its targets, the generator's forms, and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.__main__ import EXIT_OK, main
from bench.holds import HoldResult
from bench.load import LoadResult
from bench.outcomes import OK, final_event, server_timing
from bench.procfs import ProcessUsage
from bench.scenarios import MeasuredRun
from bench.stats import summarize
from bench.targets import hold_targets
from infra.http1 import Answer

JOB = (
    b'{"id":"abc","state":"completed","startedAt":"2026-01-02T03:04:05.678Z","proof":"'
    + b"A" * 40
    + b'"}'
)


def hold(form: str, rss: float, lags: list[float | None] | None = None) -> HoldResult:
    """A run of two jobs in ``form``: the lag run when ``lags`` are given."""
    load = LoadResult(
        wall_s=1.0,
        cpu_s=0.1,
        all_sent_s=0.1,
        latencies=[0.5, 0.5],
        finished_at=[0.5, 0.5],
        outcomes=[OK, OK],
        start_delays=[None, None],
        accept_lags=lags or [],
    )
    usage = ProcessUsage(cpu_s=0.1, rss_baseline_kib=0, rss_peak_kib=round(rss * 2 / 1_024), jobs=2)
    run = MeasuredRun(summarize(load, job_duration=0.5), load, proxy=usage)
    return HoldResult(form, f"2 {form}", run, lag_run=lags is not None)  # type: ignore[arg-type]


def test_streams_and_long_polls_are_judged_against_the_plain_run() -> None:
    """A form costing up to 2 KB more per request than plain passes; more misses."""
    targets = hold_targets([hold("plain", 10_240), hold("stream", 12_288), hold("async", 12_800)])
    extra = {
        t.where: (t.value, t.passed) for t in targets if t.name == "rss_above_plain_per_request"
    }
    assert extra == {"holds 2 stream": (2_048, True), "holds 2 async": (2_560, False)}


def test_the_accept_lag_is_judged_on_the_last_run_and_needs_every_lag() -> None:
    """The respond-async run's slowest 202 is judged; a missing lag is no figure."""
    quick = hold_targets([hold("plain", 1), hold("async", 1, [0.001, 0.049])])
    missing = hold_targets([hold("plain", 1), hold("async", 1, [0.001, None])])
    (lag,) = [t for t in quick if t.name == "accept_lag_max"]
    (none,) = [t for t in missing if t.name == "accept_lag_max"]
    assert (lag.value, lag.passed) == (0.049, True)
    assert math.isnan(none.value)
    assert not none.passed


def test_a_stream_is_judged_by_its_final_event() -> None:
    """The final event's data stands for the job; an error event for a 502."""
    stream = b"id: 1\nevent: accepted\ndata: {}\n\nid: 2\nevent: completed\ndata: " + JOB + b"\n\n"
    error = b'id: 1\nevent: error\ndata: {"error":"job_timeout"}\n\n'
    assert final_event(Answer(200, stream)) == Answer(200, JOB)
    assert final_event(Answer(200, error)).status == 502
    assert final_event(Answer(200, b": keep-alive\n\n")).status == 599


def test_server_timing_gives_seconds() -> None:
    """Server-Timing's dur is in milliseconds; the generator records seconds."""
    answer = Answer(202, b"", [(b"server-timing", b"db;dur=3, accept;dur=1.5")])
    assert server_timing(answer, b"accept") == pytest.approx(0.0015)
    assert server_timing(answer, b"other") is None


def test_holds_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each form's tiny run completes against real processes and is reported."""
    output = tmp_path / "results.json"
    argv = ["--scenarios", "holds", "--hold-jobs", "20", "--async-jobs", "10"]
    argv += ["--warmup", "4", "--output", str(output)]
    assert main(argv) in (EXIT_OK,)
    assert "How clients hold" in capsys.readouterr().out
    document = json.loads(output.read_text())
    forms = [(run["form"], run["run"]["completed"]) for run in document["holds"]]
    assert forms == [("plain", 20), ("stream", 20), ("async", 20), ("async", 10)]
    assert document["holds"][-1]["accept_lag_max_s"] is not None
