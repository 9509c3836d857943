"""``--plot PATH``: a PNG of latency distributions and completions over time.

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
from bench.scenarios import BenchResults

SMALLEST_SHOWN_LATENCY = 1e-4  # s; the x axis is logarithmic
LINE_STYLES = {"direct": "-", "aiohttp": "--", "httpx": ":"}


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


def write_plot(results: BenchResults, path: Path) -> None:
    """Left: CDF of latency above the job's duration. Right: share completed over time."""
    plt = _pyplot()
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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
