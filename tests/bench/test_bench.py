"""The benchmark package: its arithmetic, its parsers, and one tiny end-to-end run.

The end-to-end test starts the real ``jobserver`` and ``jobproxy`` console scripts and
the load generator as processes, at a size that finishes in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import resource
from pathlib import Path
from typing import Any

import pytest

from bench import floor, plot
from bench.__main__ import (
    EXIT_OK,
    USAGE_ERROR,
    build_parser,
    main,
    options_from,
    parse_choices,
    parse_proxy_setting,
    parse_rtts,
    parse_sizes,
)
from bench.counters import answered_by_poll, parse_counters
from bench.http import HttpAnswer, ResponseIncomplete, build_post, parse_response
from bench.load import LoadPlan, LoadResult
from bench.options import TRANSPORTS, BenchOptions
from bench.outcomes import OK, Verdict, error_kind, first_examples, judge
from bench.procfs import (
    ProcessUsage,
    parse_cpu_ticks,
    parse_listen_drops,
    parse_memory,
    parse_status_kib,
)
from bench.runs import BenchResults
from bench.scenarios import MeasuredRun, NetworkResult, ScaleResult
from bench.servers import proxy_environment
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
from bench.system import files_needed, raise_open_file_limit
from bench.targets import PROXY_CPU_PER_1000_LIMIT, Target, evaluate_targets

PROOF = "0123456789ABCDEF0123456789ABCDEF01234567"
STARTED_AT = "2024-01-02T03:04:05.678Z"
COMPLETED = {
    "id": "00ff00ff00ff00ff",
    "state": "completed",
    "startedAt": STARTED_AT,
    "proof": PROOF,
}

STATUS_TEXT = """\
Name:\tjobproxy
VmPeak:\t  300000 kB
VmHWM:\t   94436 kB
VmRSS:\t   62560 kB
Threads:\t1
"""
# The command name of a process may hold spaces and parentheses.
STAT_TEXT = "4242 (job (proxy) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 30 0 0 20 0 1 0"
NETSTAT_TEXT = """\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits
TcpExt: 0 7 9 123
IpExt: InNoRoutes InOctets
IpExt: 0 456
"""


def network_result(
    *,
    rtt_ms: float,
    jobs: int,
    accounts: int,
    wall_s: float,
    failed: int = 0,
    job_duration: float = 0.5,
    per_start_s: float = 0.0004,
) -> NetworkResult:
    outcomes = [OK] * (jobs - failed) + ["timeout"] * failed
    load = load_result(outcomes, [wall_s] * jobs)
    return NetworkResult(
        rtt_ms=rtt_ms,
        transport="native",
        accounts=accounts,
        job_duration=job_duration,
        per_start_s=per_start_s,
        run=MeasuredRun(summarize(load, job_duration=job_duration), load),
    )


def load_result(
    outcomes: list[str], latencies: list[float], start_delays: list[float | None] | None = None
) -> LoadResult:
    return LoadResult(
        wall_s=max(latencies),
        cpu_s=0.1,
        all_sent_s=0.01,
        latencies=latencies,
        finished_at=latencies,
        outcomes=outcomes,
        start_delays=start_delays or [None] * len(outcomes),
    )


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


def test_status_fields_are_read_in_kib() -> None:
    """VmRSS and VmHWM come out of /proc/<pid>/status as KiB."""
    assert parse_status_kib(STATUS_TEXT)["VmPeak"] == 300_000
    memory = parse_memory(STATUS_TEXT)
    assert (memory.rss_kib, memory.hwm_kib) == (62_560, 94_436)
    assert parse_memory("Name:\tzombie\n").rss_kib == 0


def test_cpu_ticks_are_counted_after_the_command_name() -> None:
    """utime + stime are found even when the command name holds spaces and parentheses."""
    assert parse_cpu_ticks(STAT_TEXT) == 180


def test_listen_drops_come_from_the_tcpext_table() -> None:
    """ListenDrops is read by name from /proc/net/netstat."""
    assert parse_listen_drops(NETSTAT_TEXT) == 9
    assert parse_listen_drops("") == 0


def test_process_usage_per_request_and_per_thousand() -> None:
    """Growth above the baseline is shared out per request; CPU is scaled to 1,000 jobs."""
    usage = ProcessUsage(cpu_s=3.0, rss_baseline_kib=60_000, rss_peak_kib=70_000, jobs=1_000)
    assert usage.cpu_s_per_1000_jobs == pytest.approx(3.0)
    assert usage.rss_growth_per_request_bytes == pytest.approx(10_240)
    shrunk = ProcessUsage(cpu_s=0, rss_baseline_kib=60_000, rss_peak_kib=50_000, jobs=10)
    assert shrunk.rss_growth_per_request_bytes == 0


def test_response_with_content_length_is_complete_when_the_body_is() -> None:
    """A Content-Length body completes the response; extra bytes are left over."""
    data = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1"
    assert parse_response(data, eof=False) == (HttpAnswer(200, b"ok"), len(data) - 8)
    assert parse_response(data[:-10], eof=False) is None
    with pytest.raises(ResponseIncomplete):
        parse_response(data[:-10], eof=True)


def test_chunked_and_close_delimited_bodies_are_decoded() -> None:
    """Chunked bodies are joined; a body without length ends when the server closes."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert parse_response(chunked, eof=False) == (HttpAnswer(200, b"abcde"), len(chunked))
    assert parse_response(chunked[:-4], eof=False) is None
    unframed = b"HTTP/1.1 500 Oops\r\nServer: x\r\n\r\nall of it"
    assert parse_response(unframed, eof=False) is None
    assert parse_response(unframed, eof=True) == (HttpAnswer(500, b"all of it"), len(unframed))


def test_post_request_bytes() -> None:
    """The prebuilt request carries the body's length and the connection choice."""
    request = build_post("127.0.0.1", 8000, "/proxy", b"{}", keep_alive=False)
    assert request.startswith(b"POST /proxy HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Content-Length: 2\r\n" in request
    assert request.endswith(b"Connection: close\r\n\r\n{}")


def test_judge_accepts_only_well_formed_answers() -> None:
    """A completed job with a proof is ok; anything else is named."""

    def outcome(status: int, body: object, *, wait: bool = True) -> str:
        text = body if isinstance(body, bytes) else json.dumps(body).encode()
        return judge(HttpAnswer(status, text), wait=wait).outcome

    completed = judge(HttpAnswer(200, json.dumps(COMPLETED).encode()), wait=True)
    assert completed.outcome == OK
    assert completed.started_at == pytest.approx(1_704_164_645.678)
    assert outcome(200, {**COMPLETED, "proof": "short"}) == "bad-job"
    assert outcome(200, {**COMPLETED, "startedAt": "yesterday"}) == "bad-job"
    assert outcome(200, {**COMPLETED, "state": "failed"}) == "state-failed"
    assert outcome(200, {"state": "running", "id": "00ff00ff00ff00ff"}, wait=False) == OK
    assert outcome(200, b"<html>") == "bad-json"
    refused = {"error": "upstream_unavailable", "detail": "..."}
    assert outcome(502, refused) == "http-502:upstream_unavailable"
    assert outcome(503, b"Service Unavailable") == "http-503"
    assert (
        judge(HttpAnswer(503, b"Service Unavailable"), wait=True).example == "Service Unavailable"
    )


def test_first_example_of_each_failure_is_kept() -> None:
    """One example per kind of failure survives, the first one seen."""
    verdicts = [
        Verdict(OK),
        Verdict("timeout", example="first"),
        Verdict("timeout", example="second"),
        Verdict("http-502", example="bad gateway"),
    ]
    assert first_examples(verdicts) == {"timeout": "first", "http-502": "bad gateway"}


def test_error_kinds_tell_connecting_from_waiting() -> None:
    """Failures before the connection is up carry a connect- prefix."""
    assert error_kind(TimeoutError(), connected=True) == "timeout"
    assert error_kind(TimeoutError(), connected=False) == "connect-timeout"
    assert error_kind(ConnectionRefusedError(111, "refused"), connected=False) == "connect-refused"
    assert error_kind(OSError(24, "Too many open files"), connected=False) == "connect-emfile"
    assert error_kind(ResponseIncomplete("gone"), connected=True) == "closed-early"


def test_load_plan_round_robin_and_flags() -> None:
    """Accounts rotate; the plan turns into the generator's command line."""
    plan = LoadPlan("http://h:1/proxy", 10, 3, "acct", wait=False, sequential=True)
    assert [plan.account(number) for number in range(4)] == ["acct-0", "acct-1", "acct-2", "acct-0"]
    assert plan.argv()[-2:] == ["--no-wait", "--sequential"]


def test_load_result_survives_json() -> None:
    """The generator's JSON answer reads back into the same result."""
    result = load_result([OK, "timeout"], [0.5, 1.25], [0.001, None])
    assert LoadResult.from_json(json.loads(json.dumps(result.to_json()))) == result


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


def test_command_line_lists() -> None:
    """Sizes accept k suffixes; choices accept all/both and reject unknown words."""
    assert parse_sizes("1000, 5k,10_000") == (1_000, 5_000, 10_000)
    assert parse_choices("both", TRANSPORTS, "transport") == ("native", "httpx")
    assert parse_choices("httpx,httpx", TRANSPORTS, "transport") == ("httpx",)
    for bad in ("0", "1.5", "many", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="choose from"):
        parse_choices("curl", TRANSPORTS, "transport")


def test_round_trips_parse_as_milliseconds() -> None:
    """Round trips are non-negative milliseconds, in the order given, without repeats."""
    assert parse_rtts("0, 20,100,200") == (0.0, 20.0, 100.0, 200.0)
    assert parse_rtts("12.5,0,12.5") == (12.5, 0.0)
    for bad in ("-1", "fast", "", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rtts(bad)
    options = options_from(build_parser().parse_args(["--rtts", "100", "--network-jobs", "7"]))
    assert (options.rtts, options.network_jobs, options.network_accounts) == ((100.0,), 7, 20)


def test_proxy_settings_parse_and_reach_the_environment() -> None:
    """NAME=VALUE names a proxy setting; the last value given wins over the bench's own."""
    assert parse_proxy_setting("UPSTREAM_MAX_CONNECTIONS=50") == ("upstream_max_connections", "50")
    assert parse_proxy_setting("callback_secret=a=b") == ("callback_secret", "a=b")
    for bad, reason in (
        ("foo", "NAME=VALUE"),
        ("=1", "NAME=VALUE"),
        ("nope=1", "not a proxy setting"),
        ("port=1", "set by the bench"),
        ("upstream_transport=httpx", "--transport"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            parse_proxy_setting(bad)
    argv = ["--proxy-setting", "max_pending=5", "--proxy-setting", "MAX_PENDING=6"]
    options = options_from(build_parser().parse_args(argv))
    assert options.proxy_settings == (("max_pending", "6"),)
    assert options.to_json()["proxy_settings"] == {"max_pending": "6"}
    env = proxy_environment(options, "httpx")
    assert env["JOBPROXY_MAX_PENDING"] == "6"
    assert env["JOBPROXY_UPSTREAM_TRANSPORT"] == "httpx"
    assert proxy_environment(BenchOptions(), "native")["JOBPROXY_MAX_PENDING"] == "20000"


@pytest.mark.parametrize("setting", ["foo", "max_pending=lots", "port=1"])
def test_bad_proxy_setting_is_a_usage_error(
    setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed, unknown, reserved or invalid --proxy-setting exits 2 before anything runs."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--proxy-setting", setting])
    assert exit_info.value.code == USAGE_ERROR
    assert "--proxy-setting" in capsys.readouterr().err


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


def test_open_file_limit_never_goes_down() -> None:
    """Asking for fewer files than allowed leaves the limit as it is."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_open_file_limit(16) == soft
    assert files_needed(10_000) > 20_000


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib, --plot fails with a message naming the extra to install."""

    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(plot.PlotUnavailable, match=r"\.\[bench\]"):
        plot.write_plot(BenchResults(BenchOptions()), Path("unused.png"))


def test_quick_bench_end_to_end(tmp_path: Path) -> None:
    """A tiny bench against real processes completes every job and writes the full JSON."""
    output = tmp_path / "results.json"
    argv = [
        "--quick",
        "--scenarios",
        "fifty,scale",
        "--output",
        str(output),
        "--fifty-repeats",
        "1",
    ]
    picture = tmp_path / "bench.png"
    if importlib.util.find_spec("matplotlib") is not None:
        argv += ["--plot", str(picture)]
    assert main(argv) == EXIT_OK
    document = json.loads(output.read_text())
    assert {"machine", "options", "fifty", "scale", "targets", "passed"} <= set(document)
    assert document["machine"]["cpu_count"] >= 1
    (fifty,) = document["fifty"]
    assert fifty["run"]["completed"] == fifty["jobs"] == 50
    assert fifty["lower_bound_s"] == pytest.approx(0.1 + 50 * fifty["per_start_s"], rel=1e-3)
    (scale,) = document["scale"]
    assert scale["size"] == 20
    assert scale["direct"]["completed"] == 20
    proxied = scale["proxied"]["native"]
    assert proxied["completed"] == 20
    assert proxied["errors"] == {}
    assert proxied["proxy"]["rss_baseline_kib"] > 0
    assert proxied["proxy_counters"]
    assert {target["name"] for target in document["targets"]} >= {
        "fifty_over_lower_bound",
        "proxied_over_direct",
        "proxy_rss_per_held_request",
    }
    if importlib.util.find_spec("matplotlib") is not None:
        assert picture.read_bytes().startswith(b"\x89PNG")


def test_network_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny network bench completes every job at each round trip and reports each run."""
    output = tmp_path / "results.json"
    argv = ["--scenarios", "network", "--rtts", "0,40", "--job-duration", "0.1"]
    argv += ["--fifty-jobs", "10", "--network-jobs", "40", "--network-accounts", "4"]
    argv += ["--warmup", "4", "--output", str(output)]
    argv += ["--proxy-setting", "upstream_max_connections=64"]
    picture = tmp_path / "bench.png"
    with_plot = importlib.util.find_spec("matplotlib") is not None
    if with_plot:
        argv += ["--plot", str(picture)]
    assert main(argv) == EXIT_OK
    printed = capsys.readouterr().out
    assert "Across a network" in printed
    assert "10 on 1 account" in printed
    assert "40 on 4 accounts" in printed
    document = json.loads(output.read_text())
    assert document["options"]["proxy_settings"] == {"upstream_max_connections": "64"}
    network = document["network"]
    per_start = network["per_start_s"]
    assert per_start > 0
    shapes = [(run["rtt_ms"], run["label"]) for run in network["runs"]]
    assert shapes == [
        (0.0, "10 on 1 account"),
        (0.0, "40 on 4 accounts"),
        (40.0, "10 on 1 account"),
        (40.0, "40 on 4 accounts"),
    ]
    for run in network["runs"]:
        assert run["run"]["completed"] == run["jobs"]
        assert run["run"]["errors"] == {}
        expected = 0.1 + run["rtt_ms"] / 1_000 + run["jobs_per_account"] * per_start
        assert run["lower_bound_s"] == pytest.approx(expected, abs=1e-3)
        assert run["total_limit_s"] is None
        assert run["start_queue_peak"] >= 1
        assert run["run"]["proxy"]["cpu_s"] >= 0
    failures = {t["where"] for t in document["targets"] if t["name"] == "requests_failed"}
    assert "network 40 ms, 40 on 4 accounts, native" in failures
    assert document["passed"]
    if with_plot:
        assert not picture.exists()  # no loopback runs to draw
        assert (tmp_path / "bench-network.png").read_bytes().startswith(b"\x89PNG")


async def test_held_batches_release_when_full_and_give_up_when_late() -> None:
    """A batch is let go when its last request arrives; one that never fills, at its timeout."""
    batches = floor.HeldBatches(3, timeout=30.0)
    held = [asyncio.create_task(batches.hold()) for _ in range(2)]
    assert await batches.hold()
    assert await asyncio.wait_for(asyncio.gather(*held), 5.0) == [True, True]
    late = floor.HeldBatches(3, timeout=0.01)
    assert await asyncio.wait_for(asyncio.gather(late.hold(), late.hold()), 5.0) == [False, False]
    assert await floor.HeldBatches(1, timeout=30.0).hold()


async def call_floor(app: floor.FloorApp, method: str, path: str) -> list[dict[str, Any]]:
    """The messages the floor app sends for one request with a small body."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b'{"account":"a",', "more_body": True}]
    messages.append({"type": "http.request", "body": b'"wait":true}', "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent


async def test_floor_app_answers_a_job_the_generator_counts_as_done() -> None:
    """The floor reads the whole body and answers a completed job with a well-formed proof."""
    app = floor.FloorApp(floor.HeldBatches(1, timeout=30.0))
    for path in ("/", floor.HOLD_PATH):
        start, body = await call_floor(app, "POST", path)
        assert start["status"] == 200
        headers = dict(start["headers"])
        assert headers[b"content-length"] == str(len(body["body"])).encode()
        assert judge(HttpAnswer(200, body["body"]), wait=True).outcome == OK
    late = floor.FloorApp(floor.HeldBatches(2, timeout=0.01))
    start, body = await asyncio.wait_for(call_floor(late, "POST", floor.HOLD_PATH), 5.0)
    assert start["status"] == 503
    assert judge(HttpAnswer(503, body["body"]), wait=True).outcome == "http-503:hold_timeout"


def test_floor_rejects_an_empty_batch() -> None:
    """A batch size of 0 is a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        floor.parse_args(["--hold", "0"])
    assert exit_info.value.code == USAGE_ERROR


def test_floor_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny floor run holds every request at once and reports its CPU and memory."""
    output = tmp_path / "results.json"
    argv = ["--scenarios", "floor", "--sizes", "10,30", "--warmup", "4", "--output", str(output)]
    assert main(argv) == EXIT_OK
    assert "floor (raw ASGI under uvicorn)" in capsys.readouterr().out
    document = json.loads(output.read_text())
    result = document["floor"]
    assert result["size"] == 30  # the largest size
    assert result["run"]["completed"] == 30
    assert result["run"]["errors"] == {}
    assert result["cpu_s_per_1000_requests"] >= 0
    assert result["rss_per_held_request_bytes"] >= 0
    assert result["run"]["floor"]["rss_baseline_kib"] > 0
    assert {"requests_failed"} == {t["name"] for t in document["targets"] if t["where"] == "floor"}
    assert document["scale"] == []


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
