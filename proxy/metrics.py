"""Prometheus metrics of one proxy app (a registry of its own, so apps never share)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.1, 0.25, 0.5, 0.6, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    pending: Gauge
    callbacks: Counter
    upstream_errors: Counter
    poll_fallbacks: Counter
    job_duration: Histogram

    @classmethod
    def create(cls, pending: Callable[[], float]) -> Metrics:
        registry = CollectorRegistry()
        gauge = Gauge(
            "jobproxy_pending_jobs", "Client requests held open for a job.", registry=registry
        )
        gauge.set_function(pending)
        return cls(
            registry=registry,
            requests=Counter(
                "jobproxy_requests",
                "Client job requests by outcome (job state or error word).",
                ["outcome"],
                registry=registry,
            ),
            pending=gauge,
            callbacks=Counter(
                "jobproxy_callbacks",
                "Callbacks received, by outcome.",
                ["outcome"],
                registry=registry,
            ),
            upstream_errors=Counter(
                "jobproxy_upstream_errors",
                "Failed calls to the job server, by kind.",
                ["kind"],
                registry=registry,
            ),
            poll_fallbacks=Counter(
                "jobproxy_status_poll_fallbacks",
                "Jobs whose callback was late, by who answered first (callback or poll).",
                ["answered_by"],
                registry=registry,
            ),
            job_duration=Histogram(
                "jobproxy_job_duration_seconds",
                "Time from the job server accepting a job to its result reaching the proxy.",
                ["via"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
        )
