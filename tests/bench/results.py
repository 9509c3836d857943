"""Results of the bench's runs built by hand, for tests of what is made of them."""

from __future__ import annotations

from bench.load import LoadResult
from bench.outcomes import OK
from bench.scenarios import MeasuredRun, NetworkResult
from bench.stats import summarize


def load_result(
    outcomes: list[str], latencies: list[float], start_delays: list[float | None] | None = None
) -> LoadResult:
    return LoadResult(
        wall_s=max(latencies),
        cpu_s=0.1,
        all_sent_s=0.01,
        latencies=latencies,
        finished_at=latencies,
        outcomes=outcomes,
        start_delays=start_delays or [None] * len(outcomes),
    )


def network_result(
    *,
    rtt_ms: float,
    jobs: int,
    accounts: int,
    wall_s: float,
    failed: int = 0,
    job_duration: float = 0.5,
    per_start_s: float = 0.0004,
) -> NetworkResult:
    outcomes = [OK] * (jobs - failed) + ["timeout"] * failed
    load = load_result(outcomes, [wall_s] * jobs)
    return NetworkResult(
        rtt_ms=rtt_ms,
        transport="native",
        accounts=accounts,
        job_duration=job_duration,
        per_start_s=per_start_s,
        run=MeasuredRun(summarize(load, job_duration=job_duration), load),
    )
