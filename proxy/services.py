"""Everything the proxy's lifespan opens, as every request reaches it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TypedDict

from starlette.requests import Request

from proxy.config import Settings
from proxy.dialects.dialect import Dialect
from proxy.holding.keyed import KeyedRequests
from proxy.holding.tracking import TrackedJob, TrackedJobs
from proxy.polling.overdue import OverdueWatch
from proxy.serving.metrics import Metrics
from proxy.shared.bus import RedisBus
from proxy.shared.jobs import SharedJobs
from proxy.upstream.start import Upstream
from proxy.waiting.waiters import WaiterRegistry


@dataclass(slots=True)
class Services:
    """Everything the lifespan opens, handed to every request."""

    settings: Settings
    dialect: Dialect
    upstream: Upstream
    waiters: WaiterRegistry
    bus: RedisBus | None
    watch: OverdueWatch
    keyed: KeyedRequests
    metrics: Metrics
    signing_key: bytes | None
    tracked: TrackedJobs
    shared_jobs: SharedJobs | None

    async def find_job(self, ref: str) -> TrackedJob | None:
        """The tracked job ``ref`` names: this replica's, or (shared mode) another's."""
        job = self.tracked.get(ref)
        if job is None and self.shared_jobs is not None:
            job = await self.shared_jobs.read(ref)
        return job

    def callback_url(self, token: str) -> str:
        """Where the job server calls back the job of the waiter holding ``token``."""
        return f"{self.settings.public_url}/callback/{token}"

    def job_url(self, ref: str) -> str:
        """Where a client comes back to a tracked job."""
        return f"{self.settings.public_url}/jobs/{ref}"

    def retry_after(self, started_at: float) -> int:
        """Whole seconds until a job whose /start went out at ``started_at`` (0: not yet)
        is expected to be done, at least 1."""
        age = time.monotonic() - started_at if started_at else 0.0
        return max(1, math.ceil(self.watch.expected() - age))


class LifespanState(TypedDict):
    services: Services


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services
