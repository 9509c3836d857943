"""The bench end to end: tiny runs against real ``jobserver`` and ``jobproxy`` processes
and the load generator as a process of its own, at sizes that finish in seconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.__main__ import EXIT_OK, main


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
