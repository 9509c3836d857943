"""The holds scenario's part of the bench's outputs: its JSON and its table."""

from __future__ import annotations

import math

from rich.table import Table

from bench.holds import HoldResult
from bench.scenarios import run_to_json


def _finite(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def hold_document(hold: HoldResult) -> dict[str, object]:
    return {
        "form": hold.form,
        "label": hold.label,
        "lag_run": hold.lag_run,
        "rss_per_request_bytes": _finite(hold.rss_per_request, 1),
        "accept_lag_max_s": _finite(hold.accept_lag_max, 4),
        "run": run_to_json(hold.run),
    }


def holds_table(holds: list[HoldResult]) -> Table:
    table = Table(
        title="How clients hold",
        title_justify="left",
        caption="RSS: the proxy's growth per request; accept lag: from a job's start to its "
        "202 reaching the client (respond-async)",
        caption_justify="left",
    )
    table.add_column("run")
    for header in (
        "completed",
        "total s",
        "RSS/req",
        "above plain",
        "proxy CPU/1k",
        "accept lag max",
    ):
        table.add_column(header, justify="right")
    plain = next((hold for hold in holds if hold.form == "plain"), None)
    for hold in holds:
        summary = hold.run.summary
        proxy = hold.run.proxy
        above = ""
        if plain is not None and hold is not plain and not hold.lag_run:
            above = f"{(hold.rss_per_request - plain.rss_per_request) / 1_024:+.1f}K"
        lag = hold.accept_lag_max
        table.add_row(
            hold.label,
            f"{summary.completed:,}/{summary.jobs:,}",
            f"{summary.wall_s:.3f}",
            f"{hold.rss_per_request / 1_024:.1f}K",
            above,
            f"{proxy.cpu_s_per_1000_jobs:.3f}" if proxy is not None else "",
            f"{lag * 1_000:.1f} ms" if math.isfinite(lag) else "",
        )
    return table
