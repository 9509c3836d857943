"""What shapes one bench: sizes, durations, which scenarios and transports run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.dialects import DialectName

Transport = Literal["native", "httpx"]
Scenario = Literal["fifty", "scale", "floor", "network", "shapes", "holds", "fifty-direct"]
TRANSPORTS: tuple[Transport, ...] = ("native", "httpx")
SCENARIOS: tuple[Scenario, ...] = (
    "fifty",
    "scale",
    "floor",
    "network",
    "shapes",
    "holds",
    "fifty-direct",
)
# The job server shapes of the "shapes" scenario (bench.shapes).
SHAPE_NAMES: tuple[str, ...] = ("inline", "shuffled", "flaky-status", "leave-gate", "reset-burst")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Everything that shapes one bench: sizes, durations, which scenarios and transports."""

    sizes: tuple[int, ...] = (1_000, 5_000, 10_000)
    accounts: int = 100
    job_duration: float = 0.5
    job_spread: float = 0.0
    fifty_jobs: int = 50
    fifty_repeats: int = 3
    # Round trips of the network scenario, ms; the job server's latency is half of one.
    rtts: tuple[float, ...] = (0.0, 20.0, 100.0, 200.0)
    network_jobs: int = 1_000
    network_accounts: int = 20
    scenarios: tuple[Scenario, ...] = ("fifty", "scale", "floor", "network", "shapes", "holds")
    shapes: tuple[str, ...] = SHAPE_NAMES
    # The holds scenario: jobs per form (plain, streamed, 202 then long-polled), and
    # the respond-async run whose accept lag is judged.
    hold_jobs: int = 10_000
    async_jobs: int = 1_000
    transports: tuple[Transport, ...] = ("native",)
    # The API the job server, the proxy and the clients speak (bench.dialects).
    dialect: DialectName = "work-sample"
    # (name, value) pairs that every proxy gets as JOBPROXY_<NAME>=value.
    proxy_settings: tuple[tuple[str, str], ...] = ()
    warmup: int = 100
    request_timeout: float = 40.0
    seed: int = 1
    echo: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "sizes": list(self.sizes),
            "accounts": self.accounts,
            "job_duration_s": self.job_duration,
            "job_spread_s": self.job_spread,
            "fifty_jobs": self.fifty_jobs,
            "fifty_repeats": self.fifty_repeats,
            "rtts_ms": list(self.rtts),
            "network_jobs": self.network_jobs,
            "network_accounts": self.network_accounts,
            "scenarios": list(self.scenarios),
            "shapes": list(self.shapes),
            "hold_jobs": self.hold_jobs,
            "async_jobs": self.async_jobs,
            "transports": list(self.transports),
            "dialect": self.dialect,
            "proxy_settings": dict(self.proxy_settings),
            "warmup": self.warmup,
            "request_timeout_s": self.request_timeout,
            "seed": self.seed,
        }
