"""A whole bench: every chosen scenario, one after another, and what they measured."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.holds import HoldResult, run_holds
from bench.options import BenchOptions
from bench.scenarios import (
    FiftyResult,
    FloorResult,
    MeasuredRun,
    NetworkResult,
    Progress,
    ScaleResult,
    StartTiming,
    quiet,
    run_fifty,
    run_fifty_direct,
    run_floor,
    run_network,
    run_scale,
    time_network_starts,
)
from bench.shapes import ShapeResult, run_shapes


@dataclass
class BenchResults:
    options: BenchOptions
    fifty: list[FiftyResult] = field(default_factory=list)
    fifty_direct: MeasuredRun | None = None
    scale: list[ScaleResult] = field(default_factory=list)
    floor: FloorResult | None = None
    network_starts: StartTiming | None = None
    network: list[NetworkResult] = field(default_factory=list)
    shapes: list[ShapeResult] = field(default_factory=list)
    holds: list[HoldResult] = field(default_factory=list)


async def run_bench(options: BenchOptions, progress: Progress = quiet) -> BenchResults:
    """Every scenario of ``options``, one after another (they would skew each other)."""
    results = BenchResults(options)
    if "fifty" in options.scenarios:
        for transport in options.transports:
            results.fifty.append(await run_fifty(options, transport, progress))
    if "fifty-direct" in options.scenarios:
        results.fifty_direct = await run_fifty_direct(options, progress)
    if "scale" in options.scenarios:
        for size in options.sizes:
            results.scale.append(await run_scale(options, size, progress))
    if "floor" in options.scenarios:
        results.floor = await run_floor(options, progress)
    if "network" in options.scenarios:
        starts = await time_network_starts(options, progress)
        results.network_starts = starts
        for rtt_ms in options.rtts:
            for transport in options.transports:
                results.network += await run_network(options, rtt_ms, transport, starts, progress)
    if "shapes" in options.scenarios:
        results.shapes = await run_shapes(options, progress)
    if "holds" in options.scenarios:
        results.holds = await run_holds(options, progress)
    return results
