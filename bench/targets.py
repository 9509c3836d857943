"""The bench's verdicts: each figure against the limit it must stay under."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.scenarios import BenchResults
from bench.stats import RunSummary

FIFTY_RATIO_LIMIT = 1.10
SCALE_RATIO_LIMIT = 1.5
RSS_PER_REQUEST_LIMIT = 16 * 1_024


@dataclass(frozen=True, slots=True)
class Target:
    """One figure against its limit (lower is better for every target)."""

    name: str
    where: str
    value: float
    limit: float
    unit: str

    @property
    def passed(self) -> bool:
        return math.isfinite(self.value) and self.value <= self.limit

    def to_json(self) -> dict[str, object]:
        value = round(self.value, 4) if math.isfinite(self.value) else None
        return {
            "name": self.name,
            "where": self.where,
            "value": value,
            "limit": self.limit,
            "unit": self.unit,
            "passed": self.passed,
        }


def evaluate_targets(results: BenchResults) -> list[Target]:
    """Every target the results can be judged on."""
    targets: list[Target] = []

    def failures(where: str, summary: RunSummary) -> None:
        errors = float(summary.jobs - summary.completed)
        targets.append(Target("requests_failed", where, errors, 0, "requests"))

    for fifty in results.fifty:
        where = f"fifty {fifty.transport}"
        failures(where, fifty.run.summary)
        targets.append(Target("fifty_over_lower_bound", where, fifty.ratio, FIFTY_RATIO_LIMIT, "x"))
    if results.fifty_direct is not None:
        failures("fifty direct", results.fifty_direct.summary)
    for scale in results.scale:
        failures(f"{scale.size} direct", scale.direct.summary)
        for transport, run in scale.proxied.items():
            where = f"{scale.size} {transport}"
            failures(where, run.summary)
            ratio = scale.ratio(transport)
            targets.append(Target("proxied_over_direct", where, ratio, SCALE_RATIO_LIMIT, "x"))
            if run.proxy is not None:
                per_request = run.proxy.rss_growth_per_request_bytes
                limit = RSS_PER_REQUEST_LIMIT
                targets.append(Target("proxy_rss_per_held_request", where, per_request, limit, "B"))
    return targets
