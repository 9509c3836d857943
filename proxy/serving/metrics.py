"""Prometheus metrics of one proxy app (a registry of its own, so apps never share)."""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

DURATION_BUCKETS = (0.1, 0.25, 0.5, 0.6, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)

Family = TypeVar("Family", Counter, Histogram)


class Outcome(str, Enum):
    """Outcome words of requests and callbacks besides a job's state or an error's word."""

    #: A wait: false request, answered with the job server's own answer.
    FORWARDED = "forwarded"
    #: A held request answered 202: its job goes on, its client comes back for it.
    ACCEPTED = "accepted"
    #: A request answered with a job it followed (GET /jobs/{ref}, a keyed retry).
    FOLLOWED = "followed"
    #: A stream of a job's events that ended (its final event sent, or its client gone).
    STREAMED = "streamed"
    #: A callback for a job that is not finished yet: taken, nothing to do.
    NOT_FINAL = "not_final"
    #: A callback that came before /start answered, and then was another job's: dropped.
    EARLY_MISMATCH = "early_mismatch"
    #: Anything the proxy did not foresee (its log says what).
    INTERNAL_ERROR = "internal_error"


class Labelled(Generic[Family]):
    """A metric family with one label whose children are looked up once per value:
    ``labels()`` takes a lock and builds a key on every call, on the hot path."""

    __slots__ = ("_children", "family")

    def __init__(self, family: Family) -> None:
        self.family: Family = family
        self._children: dict[str, Any] = {}

    def __call__(self, value: str) -> Any:
        child = self._children.get(value)
        if child is None:
            # The word itself: str() of a (str, Enum) member would name the member.
            word = value.value if isinstance(value, Enum) else value
            child = self._children[value] = self.family.labels(word)
        return child


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Labelled[Counter]
    pending: Gauge
    callbacks: Labelled[Counter]
    upstream_errors: Labelled[Counter]
    poll_fallbacks: Labelled[Counter]
    job_duration: Labelled[Histogram]

    def request(self, outcome: str) -> None:
        self.requests(outcome).inc()

    def callback(self, outcome: str, count: int = 1) -> None:
        self.callbacks(outcome).inc(count)

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors(kind).inc()

    def poll_fallback(self, answered_by: str) -> None:
        self.poll_fallbacks(answered_by).inc()

    @classmethod
    def create(
        cls,
        pending: Callable[[], float],
        streams: Callable[[], float],
        keyed: Sized | None = None,
    ) -> Metrics:
        """The metrics of one app: ``pending`` counts its held requests, ``streams`` its
        open event streams, ``keyed`` is the in-process store of Idempotency-Keys (none in
        shared mode: Redis keeps them)."""
        # A *_created series beside every counter only doubles the scrape: Prometheus
        # reads a counter's resets from its values.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # CPU, memory and open files of the process
        gauge = Gauge(
            "jobproxy_pending_jobs", "Client requests held open for a job.", registry=registry
        )
        gauge.set_function(pending)
        Gauge(
            "jobproxy_open_streams",
            "Event streams (text/event-stream) open now, held requests' and GET /jobs/{ref}'s.",
            registry=registry,
        ).set_function(streams)
        if keyed is not None:
            entries = Gauge(
                "jobproxy_idempotency_entries",
                "Idempotency-Key claims and results kept in this process.",
                registry=registry,
            )
            entries.set_function(lambda: len(keyed))
        return cls(
            registry=registry,
            requests=Labelled(
                Counter(
                    "jobproxy_requests",
                    "Client job requests by outcome (job state or error word).",
                    ["outcome"],
                    registry=registry,
                )
            ),
            pending=gauge,
            callbacks=Labelled(
                Counter(
                    "jobproxy_callbacks",
                    "Callbacks received, by outcome.",
                    ["outcome"],
                    registry=registry,
                )
            ),
            upstream_errors=Labelled(
                Counter(
                    "jobproxy_upstream_errors",
                    "Failed calls to the job server, by kind.",
                    ["kind"],
                    registry=registry,
                )
            ),
            poll_fallbacks=Labelled(
                Counter(
                    "jobproxy_status_poll_fallbacks",
                    "Jobs whose callback was late, by how they ended: callback, poll or lost.",
                    ["answered_by"],
                    registry=registry,
                )
            ),
            job_duration=Labelled(
                Histogram(
                    "jobproxy_job_duration_seconds",
                    "Time from the job server accepting a job to its result reaching the proxy.",
                    ["via"],
                    buckets=DURATION_BUCKETS,
                    registry=registry,
                )
            ),
        )
