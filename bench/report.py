"""The bench's two outputs: the JSON document and the rich tables (verdicts included)."""

from __future__ import annotations

import itertools
import math

from rich.console import Console
from rich.table import Table

from bench.counters import answered_by_poll
from bench.procfs import ProcessUsage
from bench.report_holds import hold_document, holds_table
from bench.report_shapes import shape_document, shapes_table
from bench.runs import BenchResults
from bench.scenarios import (
    FiftyResult,
    FloorResult,
    MeasuredRun,
    NetworkResult,
    ScaleResult,
    run_to_json,
)
from bench.stats import RunSummary, jobs_per_account
from bench.targets import (
    FIFTY_RATIO_LIMIT,
    NETWORK_TARGET_JOB_DURATION,
    NETWORK_TOTAL_LIMITS,
    RSS_PER_REQUEST_LIMIT,
    SCALE_RATIO_LIMIT,
    Target,
    evaluate_targets,
    network_total_limit,
    network_where,
)

SCHEMA = "jobproxy-bench/1"
ERRORS_SHOWN = 3
FLOOR_LABEL = "floor (raw ASGI under uvicorn)"


def _number(value: float, digits: int = 4) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def fifty_document(fifty: FiftyResult) -> dict[str, object]:
    return {
        "transport": fifty.transport,
        "jobs": fifty.run.summary.jobs,
        "job_duration_s": fifty.job_duration,
        "per_start_s": _number(fifty.per_start_s, 6),
        "per_start_run": fifty.per_start.to_json(),
        "lower_bound_s": _number(fifty.lower_bound_s),
        "total_s": _number(fifty.run.summary.wall_s),
        "totals_of_repeats_s": [_number(run.summary.wall_s) for run in fifty.runs],
        "ratio": _number(fifty.ratio),
        "ratio_limit": FIFTY_RATIO_LIMIT,
        "run": run_to_json(fifty.run),
    }


def scale_document(scale: ScaleResult) -> dict[str, object]:
    proxied = {
        transport: {**run_to_json(run), "ratio_to_direct": _number(scale.ratio(transport))}
        for transport, run in scale.proxied.items()
    }
    return {
        "size": scale.size,
        "accounts": scale.accounts,
        "direct": run_to_json(scale.direct),
        "proxied": proxied,
        "ratio_limit": SCALE_RATIO_LIMIT,
        "rss_per_held_request_limit_bytes": RSS_PER_REQUEST_LIMIT,
    }


def floor_document(floor: FloorResult) -> dict[str, object]:
    return {
        "app": FLOOR_LABEL,
        "size": floor.size,
        "cpu_s_per_1000_requests": _number(floor.usage.cpu_s_per_1000_jobs),
        "rss_per_held_request_bytes": _number(floor.usage.rss_growth_per_request_bytes, 1),
        "run": {**floor.summary.to_json(), "floor": floor.usage.to_json()},
    }


def network_run_to_json(network: NetworkResult) -> dict[str, object]:
    return {
        "rtt_ms": network.rtt_ms,
        "latency_s": network.rtt_ms / 2_000,
        "transport": network.transport,
        "label": network.label,
        "jobs": network.jobs,
        "accounts": network.accounts,
        "jobs_per_account": jobs_per_account(network.jobs, network.accounts),
        "job_duration_s": network.job_duration,
        "per_start_s": _number(network.per_start_s, 6),
        "lower_bound_s": _number(network.lower_bound_s),
        "total_s": _number(network.run.summary.wall_s),
        "ratio": _number(network.ratio),
        "total_limit_s": network_total_limit(network),
        "start_queue_peak": network.start_queue_peak,
        "run": run_to_json(network.run),
    }


def network_document(results: BenchResults) -> dict[str, object] | None:
    """The ``/start`` timing all network runs share, and each run."""
    starts = results.network_starts
    if starts is None:
        return None
    return {
        "per_start_s": _number(starts.per_start_s, 6),
        "per_start_run": starts.summary.to_json(),
        "runs": [network_run_to_json(network) for network in results.network],
    }


def results_document(
    results: BenchResults, *, machine: dict[str, object], started_at: str, duration_s: float
) -> dict[str, object]:
    """Everything measured, the machine it ran on, and each target passed or missed."""
    targets = evaluate_targets(results)
    fifty_direct = results.fifty_direct
    return {
        "schema": SCHEMA,
        "started_at": started_at,
        "duration_s": round(duration_s, 2),
        "machine": machine,
        "options": results.options.to_json(),
        "fifty": [fifty_document(fifty) for fifty in results.fifty],
        "fifty_direct": run_to_json(fifty_direct) if fifty_direct is not None else None,
        "scale": [scale_document(scale) for scale in results.scale],
        "floor": floor_document(results.floor) if results.floor is not None else None,
        "network": network_document(results),
        "shapes": [shape_document(shape) for shape in results.shapes],
        "holds": [hold_document(hold) for hold in results.holds],
        "targets": [target.to_json() for target in targets],
        "passed": all(target.passed for target in targets),
    }


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    milliseconds = value * 1_000
    return f"{milliseconds:.1f}" if abs(milliseconds) < 100 else f"{milliseconds:.0f}"


def _seconds(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "-"


def _ratio(value: float, limit: float) -> str:
    if not math.isfinite(value):
        return "[red]-[/]"
    colour = "green" if value <= limit else "red"
    return f"[{colour}]{value:.2f}[/]"


def _completed(summary: RunSummary) -> str:
    colour = "green" if summary.all_completed else "red"
    return f"[{colour}]{summary.completed:,}/{summary.jobs:,}[/]"


def _errors(summary: RunSummary) -> str:
    if not summary.errors:
        return "none"
    shown = [f"{count:,} {kind}" for kind, count in list(summary.errors.items())[:ERRORS_SHOWN]]
    more = len(summary.errors) - ERRORS_SHOWN
    return "\n".join(shown) + (f"\n+{more} kinds" if more > 0 else "")


def _over_job(summary: RunSummary) -> str:
    over = summary.latency_over_job
    return f"{_ms(over.p50)}/{_ms(over.p99)}"


def fifty_table(results: BenchResults) -> Table:
    table = Table(title="50 jobs on one account", title_justify="left")
    for header in ("via", "completed", "total s", "per /start ms", "lower bound s"):
        table.add_column(header, justify="right")
    table.add_column(f"ratio (≤ {FIFTY_RATIO_LIMIT:.2f})", justify="right")
    table.add_column("over job p50/p99 ms", justify="right")
    table.add_column("to start p50/max ms", justify="right")
    table.add_column("end to answer p50/p99 ms", justify="right")
    for fifty in results.fifty:
        summary = fifty.run.summary
        table.add_row(
            fifty.transport,
            _completed(summary),
            _seconds(summary.wall_s),
            f"{fifty.per_start_s * 1_000:.3f}",
            _seconds(fifty.lower_bound_s),
            _ratio(fifty.ratio, FIFTY_RATIO_LIMIT),
            _over_job(summary),
            f"{_ms(summary.start_delay.p50)}/{_ms(summary.start_delay.max)}",
            f"{_ms(summary.after_job.p50)}/{_ms(summary.after_job.p99)}",
        )
    if results.fifty_direct is not None:
        summary = results.fifty_direct.summary
        blank = ("", "", "")
        table.add_row(
            "direct", _completed(summary), _seconds(summary.wall_s), *blank, _over_job(summary)
        )
    return table


def _per_1000(usage: ProcessUsage | None) -> str:
    return f"{usage.cpu_s_per_1000_jobs:.3f}" if usage is not None else ""


def scale_table(results: BenchResults) -> Table:
    """The scale runs, and the floor: the serving stack alone, in the proxy's columns."""
    caption = None
    if results.floor is not None:
        caption = (
            "floor: a raw ASGI app under the proxy's uvicorn configuration (bench/floor.py), "
            "every request held at once; its RSS and CPU in the proxy's columns"
        )
    table = Table(
        title="Scale: concurrent held requests",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    table.add_column("size", justify="right")
    table.add_column("via")
    table.add_column("completed", justify="right")
    table.add_column("errors", no_wrap=True, overflow="ellipsis", max_width=36)
    for header in ("total s", "over job p50/p99 ms"):
        table.add_column(header, justify="right")
    table.add_column(f"vs direct ≤{SCALE_RATIO_LIMIT}", justify="right")
    table.add_column(f"RSS/req ≤{RSS_PER_REQUEST_LIMIT // 1_024}K", justify="right")
    for header in ("proxy CPU/1k", "jobsrv CPU/1k", "load CPU", "polled"):
        table.add_column(header, justify="right")
    for scale in results.scale:
        rows: list[tuple[str, MeasuredRun, str]] = [("direct", scale.direct, "")]
        for transport, run in scale.proxied.items():
            rows.append((transport, run, _ratio(scale.ratio(transport), SCALE_RATIO_LIMIT)))
        for label, run, versus in rows:
            summary = run.summary
            memory = ""
            if run.proxy is not None:
                per_request = run.proxy.rss_growth_per_request_bytes
                colour = "green" if per_request <= RSS_PER_REQUEST_LIMIT else "red"
                memory = f"[{colour}]{per_request / 1_024:.1f}K[/]"
            table.add_row(
                f"{scale.size:,}",
                label,
                _completed(summary),
                _errors(summary),
                _seconds(summary.wall_s),
                _over_job(summary),
                versus,
                memory,
                _per_1000(run.proxy),
                _per_1000(run.jobserver),
                f"{summary.generator_cpu_s:.2f}",
                f"{answered_by_poll(run.proxy_counters):,}" if run.proxy is not None else "",
            )
        table.add_section()
    if (floor := results.floor) is not None:
        summary = floor.summary
        table.add_row(
            f"{floor.size:,}",
            FLOOR_LABEL,
            _completed(summary),
            _errors(summary),
            _seconds(summary.wall_s),
            "",
            "",
            f"{floor.usage.rss_growth_per_request_bytes / 1_024:.1f}K",
            _per_1000(floor.usage),
            "",
            f"{summary.generator_cpu_s:.2f}",
            "",
        )
    return table


def _network_caption() -> str:
    limits = "; ".join(
        f"{rtt_ms:g} ms, {jobs:,} on {accounts:,}: ≤ {limit:.2f} s"
        for (rtt_ms, jobs, accounts), limit in NETWORK_TOTAL_LIMITS.items()
    )
    return (
        "lower bound: job + round trip + one account's starts, one after another; "
        f"totals with a target are coloured ({limits}; jobs of {NETWORK_TARGET_JOB_DURATION:g} s)"
    )


def network_table(results: BenchResults) -> Table:
    table = Table(
        title="Across a network",
        title_justify="left",
        caption=_network_caption(),
        caption_justify="left",
    )
    table.add_column("RTT ms", justify="right")
    table.add_column("run")
    for header in ("completed", "total s", "lower bound s", "ratio", "over job p50/p99 ms"):
        table.add_column(header, justify="right")
    table.add_column("proxy CPU/1k", justify="right")
    several_transports = len(results.options.transports) > 1
    for rtt_ms, runs in itertools.groupby(results.network, key=lambda network: network.rtt_ms):
        for network in runs:
            summary = network.run.summary
            total = _seconds(summary.wall_s)
            if (limit := network_total_limit(network)) is not None:
                passed = summary.all_completed and summary.wall_s <= limit
                total = f"[{'green' if passed else 'red'}]{total}[/]"
            label = network.label + (f" ({network.transport})" if several_transports else "")
            table.add_row(
                f"{rtt_ms:g}",
                label,
                _completed(summary),
                total,
                _seconds(network.lower_bound_s),
                f"{network.ratio:.2f}" if math.isfinite(network.ratio) else "-",
                _over_job(summary),
                _per_1000(network.run.proxy),
            )
        table.add_section()
    return table


def targets_table(targets: list[Target]) -> Table:
    table = Table(title="Targets", title_justify="left")
    for header in ("target", "where", "value", "limit", "result"):
        table.add_column(header, justify="left" if header in ("target", "where") else "right")
    for target in targets:
        value = f"{target.value:,.3f}" if math.isfinite(target.value) else "-"
        verdict = "[green]pass[/]" if target.passed else "[red]MISS[/]"
        table.add_row(target.name, target.where, value, f"{target.limit:,g} {target.unit}", verdict)
    return table


def _all_runs(results: BenchResults) -> list[tuple[str, RunSummary]]:
    runs = [
        (f"fifty {fifty.transport}", run.summary) for fifty in results.fifty for run in fifty.runs
    ]
    if results.fifty_direct is not None:
        runs.append(("fifty direct", results.fifty_direct.summary))
    for scale in results.scale:
        runs.append((f"{scale.size} direct", scale.direct.summary))
        runs += [(f"{scale.size} {name}", run.summary) for name, run in scale.proxied.items()]
    if results.floor is not None:
        runs.append(("floor", results.floor.summary))
    runs += [(network_where(network), network.run.summary) for network in results.network]
    runs += [(f"shape {shape.shape.name}", shape.run.summary) for shape in results.shapes]
    runs += [(f"holds {hold.label}", hold.run.summary) for hold in results.holds]
    return runs


def print_report(results: BenchResults, console: Console) -> list[Target]:
    """Print every table that has rows; returns the targets judged."""
    if results.options.dialect != "work-sample":
        console.print(f"dialect: {results.options.dialect} (job server, proxy and clients)")
    if results.fifty or results.fifty_direct is not None:
        console.print(fifty_table(results))
    if results.scale or results.floor is not None:
        console.print(scale_table(results))
    if results.network:
        console.print(network_table(results))
    if results.shapes:
        console.print(shapes_table(results.shapes))
    if results.holds:
        console.print(holds_table(results.holds))
    for where, summary in _all_runs(results):
        if summary.listen_drops:
            console.print(
                f"[yellow]{where}: {summary.listen_drops:,} connections dropped by a full accept "
                "queue (each costs its client a 1 s SYN retransmission)[/]"
            )
    targets = evaluate_targets(results)
    console.print(targets_table(targets))
    passed = sum(target.passed for target in targets)
    colour = "green" if passed == len(targets) else "red"
    console.print(f"[{colour}]targets: {passed} of {len(targets)} met[/]")
    return targets
