"""The job server shapes' part of the bench's outputs: their JSON and their table."""

from __future__ import annotations

from rich.table import Table

from bench.counters import answered_by_poll
from bench.scenarios import run_to_json
from bench.shapes import ShapeResult


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def shape_document(shape: ShapeResult) -> dict[str, object]:
    return {
        "shape": shape.shape.name,
        "label": shape.shape.label,
        "jobserver_flags": list(shape.shape.flags),
        "jobs": shape.shape.jobs,
        "accounts": shape.shape.accounts,
        "leave_after_s": shape.shape.leave_after,
        "jobserver_counts": shape.jobserver,
        "pending_after": shape.pending_after,
        "run": run_to_json(shape.run),
    }


def shapes_table(shapes: list[ShapeResult]) -> Table:
    table = Table(
        title="Job servers built differently",
        title_justify="left",
        caption="status polls, jobs started and the start queue peak as the job server "
        "counted them; pending: held requests left once the clients were answered or gone",
        caption_justify="left",
    )
    table.add_column("shape")
    table.add_column("run")
    for header in (
        "answered",
        "total s",
        "status polls",
        "answered by poll",
        "jobs started",
        "start queue peak",
        "pending",
        "proxy CPU/1k",
    ):
        table.add_column(header, justify="right")
    for shape in shapes:
        summary = shape.run.summary
        left = summary.errors.get("left", 0)
        answered = f"{summary.completed:,}/{summary.jobs:,}" + (f" ({left:,} left)" if left else "")
        proxy = shape.run.proxy
        table.add_row(
            shape.shape.name,
            shape.shape.label,
            answered,
            f"{summary.wall_s:.3f}",
            _count(shape.status_polls),
            f"{answered_by_poll(shape.run.proxy_counters):,}",
            _count(shape.jobs_started),
            _count(shape.start_queue_peak),
            _count(shape.pending_after),
            f"{proxy.cpu_s_per_1000_jobs:.3f}" if proxy is not None else "",
        )
    return table
