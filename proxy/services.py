"""Everything the proxy's lifespan opens, as every request reaches it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import httpx
from starlette.requests import Request

from proxy.config import Settings
from proxy.idempotency import KeyedRequests, ResultStore
from proxy.metrics import Metrics
from proxy.overdue import OverdueWatch
from proxy.shared import RedisBus
from proxy.upstream import Upstream
from proxy.waiters import WaiterRegistry


@dataclass(slots=True)
class Services:
    """Everything the lifespan opens, handed to every request."""

    settings: Settings
    client: httpx.AsyncClient
    upstream: Upstream
    waiters: WaiterRegistry
    results: ResultStore
    bus: RedisBus | None
    watch: OverdueWatch
    keyed: KeyedRequests
    metrics: Metrics
    signing_key: bytes | None


class LifespanState(TypedDict):
    services: Services


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services
