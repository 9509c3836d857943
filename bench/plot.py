"""``--plot PATH``: a PNG of latency distributions and completions over time, and, for
the network runs, ``<stem>-network.png`` next to it: total time against the round trip.

matplotlib is the optional extra ``bench`` (``pip install -e '.[bench]'``), imported only
when a plot is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.load import LoadResult
from bench.outcomes import OK
from bench.runs import BenchResults
from bench.scenarios import NetworkResult

SMALLEST_SHOWN_LATENCY = 1e-4  # s; the x axis is logarithmic
LINE_STYLES = {"direct": "-", "native": "--", "httpx": ":"}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    # Imported by name and typed Any: matplotlib is optional, so mypy must pass without it.
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, the optional extra 'bench': pip install -e '.[bench]'"
        ) from None
    matplotlib.use("Agg")  # no display: write files only
    return importlib.import_module("matplotlib.pyplot")


def _series(results: BenchResults) -> Iterator[tuple[str, str, str, LoadResult, float]]:
    """(label, colour key, line style, load, job duration) for every run worth drawing."""
    duration = results.options.job_duration
    for fifty in results.fifty:
        style = LINE_STYLES.get(fifty.transport, "-.")
        yield f"50 on 1 account, {fifty.transport}", "fifty", style, fifty.run.load, duration
    for scale in results.scale:
        key = str(scale.size)
        yield f"{scale.size:,} direct", key, LINE_STYLES["direct"], scale.direct.load, duration
        for transport, run in scale.proxied.items():
            style = LINE_STYLES.get(transport, "-.")
            yield f"{scale.size:,} proxy {transport}", key, style, run.load, duration


def network_plot_path(path: Path) -> Path:
    """``bench.png`` → ``bench-network.png``, in the same directory."""
    return path.with_name(f"{path.stem}-network{path.suffix or '.png'}")


def write_plot(results: BenchResults, path: Path) -> list[Path]:
    """The PNGs that the results have runs for; returns the paths written.

    ``path``: the latencies of the loopback runs; next to it, ``<stem>-network.png``:
    the network runs.
    """
    plt = _pyplot()
    written: list[Path] = []
    if any(True for _ in _series(results)):
        _write_latencies(plt, results, path)
        written.append(path)
    if results.network:
        network_path = network_plot_path(path)
        _write_network(plt, results, network_path)
        written.append(network_path)
    return written


def _write_latencies(plt: Any, results: BenchResults, path: Path) -> None:
    """Left: CDF of latency above the job's duration. Right: share completed over time."""
    figure, (latency_axes, completion_axes) = plt.subplots(1, 2, figsize=(14, 5.5))
    colours: dict[str, Any] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for label, key, style, load, duration in _series(results):
        colour = colours.setdefault(key, palette[len(colours) % len(palette)])
        ok = [index for index, outcome in enumerate(load.outcomes) if outcome == OK]
        if not ok:
            continue
        over_job = sorted(max(load.latencies[i] - duration, SMALLEST_SHOWN_LATENCY) for i in ok)
        shares = [(rank + 1) / len(over_job) for rank in range(len(over_job))]
        latency_axes.plot(over_job, shares, style, color=colour, label=label)
        finished = sorted(load.finished_at[i] for i in ok)
        done = [(rank + 1) / len(load.outcomes) for rank in range(len(finished))]
        completion_axes.plot(finished, done, style, color=colour, label=label)
    latency_axes.set_xscale("log")
    latency_axes.set_xlabel("latency above the job's duration (s, log)")
    latency_axes.set_ylabel("share of completed requests")
    latency_axes.set_title("Latency distribution")
    completion_axes.set_xlabel("seconds since the first request")
    completion_axes.set_ylabel("share of requests completed")
    completion_axes.set_title("Completion over time")
    for axes in (latency_axes, completion_axes):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    options = results.options
    figure.suptitle(
        f"jobproxy bench: job duration {options.job_duration:g} s, "
        f"{options.accounts} accounts through the proxy; direct = one account per request"
    )
    _save(plt, figure, path)


def _write_network(plt: Any, results: BenchResults, path: Path) -> None:
    """Total time against the round trip for each kind of run; its lower bound dashed."""
    figure, axes = plt.subplots(figsize=(8, 5.5))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    several_transports = len(results.options.transports) > 1
    series: dict[str, list[NetworkResult]] = {}
    for network in results.network:
        label = network.label + (f", {network.transport}" if several_transports else "")
        series.setdefault(label, []).append(network)
    for number, (label, unordered) in enumerate(series.items()):
        colour = palette[number % len(palette)]
        runs = sorted(unordered, key=lambda network: network.rtt_ms)
        rtts = [network.rtt_ms for network in runs]
        # A run with failures has no meaningful total: leave a gap.
        totals = [
            network.run.summary.wall_s if network.run.summary.all_completed else float("nan")
            for network in runs
        ]
        bounds = [network.lower_bound_s for network in runs]
        axes.plot(rtts, totals, "-o", color=colour, label=label)
        axes.plot(rtts, bounds, "--", color=colour, label=f"{label}: lower bound")
    axes.set_xlabel("round trip to the job server (ms)")
    axes.set_ylabel("total time of the run (s)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(
        f"Across a network: job duration {results.options.job_duration:g} s; "
        "lower bound = job + round trip + one account's starts"
    )
    _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
