"""The proxy's own counters, scraped from ``GET /metrics`` after a run.

They say what the proxy did that the client cannot see: how many jobs were answered by
a status poll instead of their callback, which upstream errors it met, what became of
the callbacks. One request after the run, so the scrape costs the run nothing.
"""

from __future__ import annotations

import contextlib
import math

from bench.http import fetch
from bench.outcomes import FAILURES

SCRAPE_TIMEOUT = 5.0
PREFIX = "jobproxy_"


def parse_counters(exposition: str) -> dict[str, float]:
    """The ``jobproxy_*_total`` samples of a Prometheus text exposition, by series."""
    counters: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line.startswith(PREFIX):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if not name.endswith("_total"):
            continue
        with contextlib.suppress(ValueError):
            number = float(value)
            if math.isfinite(number):
                counters[series] = number
    return counters


async def scrape_counters(base_url: str) -> dict[str, float]:
    """The proxy's counters now; empty when it cannot say (the run's figures still stand)."""
    try:
        answer = await fetch(f"{base_url}/metrics", SCRAPE_TIMEOUT)
    except FAILURES:
        return {}
    if answer.status != 200:
        return {}
    return parse_counters(answer.body.decode(errors="replace"))


async def scrape_sample(base_url: str, series: str) -> float | None:
    """One sample of the proxy's ``/metrics`` now (a gauge, say); None when it cannot say."""
    try:
        answer = await fetch(f"{base_url}/metrics", SCRAPE_TIMEOUT)
    except FAILURES:
        return None
    for line in answer.body.decode(errors="replace").splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            with contextlib.suppress(ValueError):
                return float(value)
    return None


def answered_by_poll(counters: dict[str, float]) -> int:
    """Jobs whose status poll answered before their callback arrived."""
    series = 'jobproxy_status_poll_fallbacks_total{answered_by="poll"}'
    return int(counters.get(series, 0))
