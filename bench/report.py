"""The bench's two outputs: the JSON document and the rich tables (verdicts included)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from bench.counters import answered_by_poll
from bench.procfs import ProcessUsage
from bench.scenarios import BenchResults, FiftyResult, MeasuredRun, ScaleResult
from bench.stats import RunSummary
from bench.targets import (
    FIFTY_RATIO_LIMIT,
    RSS_PER_REQUEST_LIMIT,
    SCALE_RATIO_LIMIT,
    Target,
    evaluate_targets,
)

SCHEMA = "jobproxy-bench/1"
ERRORS_SHOWN = 3


def _usage(usage: ProcessUsage | None) -> dict[str, object] | None:
    return usage.to_json() if usage is not None else None


def run_document(run: MeasuredRun) -> dict[str, object]:
    document = {
        **run.summary.to_json(),
        "jobserver": _usage(run.jobserver),
        "proxy": _usage(run.proxy),
    }
    if run.proxy is not None:
        document["proxy_counters"] = run.proxy_counters
    return document


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
        "run": run_document(fifty.run),
    }


def scale_document(scale: ScaleResult) -> dict[str, object]:
    proxied = {
        transport: {**run_document(run), "ratio_to_direct": _number(scale.ratio(transport))}
        for transport, run in scale.proxied.items()
    }
    return {
        "size": scale.size,
        "accounts": scale.accounts,
        "direct": run_document(scale.direct),
        "proxied": proxied,
        "ratio_limit": SCALE_RATIO_LIMIT,
        "rss_per_held_request_limit_bytes": RSS_PER_REQUEST_LIMIT,
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
        "fifty_direct": run_document(fifty_direct) if fifty_direct is not None else None,
        "scale": [scale_document(scale) for scale in results.scale],
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
    table = Table(title="Scale: concurrent held requests", title_justify="left")
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
    return runs


def print_report(results: BenchResults, console: Console) -> list[Target]:
    """Print every table that has rows; returns the targets judged."""
    if results.fifty or results.fifty_direct is not None:
        console.print(fifty_table(results))
    if results.scale:
        console.print(scale_table(results))
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
