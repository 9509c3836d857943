"""The job servers the proxy is tried against: every shape of the simulator, and a second
server written independently (``tests.upstreams.aioserver``), behind one interface, in
each dialect they speak.

Each :data:`UPSTREAMS` entry starts a job server of its shape on a real port for a
block, given the :class:`Faults` a behaviour needs, and yields an :class:`Upstream`: its
URL and the counts it keeps. Its :class:`Speaker` is how a client of the proxy speaks
that dialect. The proxy in front of it (:func:`proxy_in_front`) is the proxy app, served
by uvicorn on a real port too, so that every callback, start and poll crosses a socket.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from jobserver.app import create_app as create_jobserver_app
from jobserver.config import Settings as JobServerSettings
from proxy.config import Settings
from proxy.services import Services
from proxy.serving.app import create_app
from tests.conftest import app_lifespan, eventually, loopback_socket, run_server
from tests.upstreams.aioserver import AioServer, AioServerConfig, run_aioserver


@dataclass(frozen=True, slots=True)
class Faults:
    """What a behaviour asks of any job server, in words every shape understands."""

    job_duration: float = 0.02
    failure_rate: float = 0.0
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    gate_time: float = 0.0  # seconds each /start spends in its account's gate


@dataclass(frozen=True, slots=True)
class Speaker:
    """A dialect as a client of the proxy speaks it: where it asks, how it asks to be
    held, where a job's id and state are and what they are called."""

    dialect: str
    path: str
    completed: str
    failed: str
    state_field: str

    def held(self, lane: str, prefer: str = "") -> dict[str, Any]:
        """``client.post``'s arguments for a job of ``lane`` held by the proxy;
        ``prefer``: a ``Prefer`` beyond what holding takes in this dialect."""
        if self.dialect == "work-sample":
            headers = {"prefer": prefer} if prefer else {}
            return {"json": {"account": lane, "wait": True}, "headers": headers}
        return {
            "json": {"input": {"prompt": lane}},
            "headers": {"authorization": f"Bearer {lane}", "prefer": prefer or "wait"},
        }

    def state(self, job: dict[str, Any]) -> str:
        return str(job[self.state_field])


SPEAKERS = {
    "work-sample": Speaker("work-sample", "/proxy", "completed", "failed", "state"),
    "predictions": Speaker("predictions", "/v1/predictions", "succeeded", "failed", "status"),
}


class Upstream(Protocol):
    """A running job server, as the conformance tests see it."""

    honours_disconnects: bool

    @property
    def url(self) -> str:
        """Its base URL."""
        ...

    async def count(self, name: str) -> int:
        """``jobs_started``, ``status_polls`` or ``starts_abandoned`` so far."""
        ...

    async def callbacks_sent(self) -> None:
        """Return once no callback is under way."""
        ...


@dataclass
class Simulator:
    url: str
    honours_disconnects: bool

    async def count(self, name: str) -> int:
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"{self.url}/healthz")).json()
        return int(health.get(name, 0))

    async def callbacks_sent(self) -> None:
        async def quiet() -> bool:
            return await self.count("callbacks_pending") == 0

        await eventually(quiet, timeout=20)


@dataclass
class Independent:
    server: AioServer
    honours_disconnects: bool

    @property
    def url(self) -> str:
        return self.server.url

    async def count(self, name: str) -> int:
        return int(getattr(self.server, name))

    async def callbacks_sent(self) -> None:
        await self.server.idle(timeout=20)


UpstreamShape = Callable[[Faults], contextlib.AbstractAsyncContextManager[Upstream]]


@dataclass(frozen=True, slots=True)
class Shape:
    """A job server of a shape in a dialect, and how a client speaks to it."""

    run: UpstreamShape
    speaker: Speaker


def simulator(**shape: Any) -> UpstreamShape:
    """Our simulator, ``jobserver``, with the settings that give it a shape."""

    @contextlib.asynccontextmanager
    async def run(faults: Faults) -> AsyncIterator[Upstream]:
        settings = JobServerSettings(
            job_duration=faults.job_duration,
            job_duration_spread=0.0,
            failure_rate=faults.failure_rate,
            callback_drop_rate=faults.drop_rate,
            callback_duplicate_rate=faults.duplicate_rate,
            start_latency=faults.gate_time,
            callback_backoff=0.05,
            seed=7,
            **shape,
        )
        async with run_server(create_jobserver_app(settings)) as url:
            yield Simulator(url, settings.honour_disconnects)

    return run


def independent(**shape: Any) -> UpstreamShape:
    """The second job server, written from the protocol alone, in one of its shapes."""

    @contextlib.asynccontextmanager
    async def run(faults: Faults) -> AsyncIterator[Upstream]:
        config = AioServerConfig(
            job_duration=faults.job_duration,
            failure_rate=faults.failure_rate,
            callback_drop_rate=faults.drop_rate,
            callback_duplicate_rate=faults.duplicate_rate,
            gate_time=faults.gate_time,
            seed=7,
            **shape,
        )
        async with run_aioserver(config) as server:
            yield Independent(server, config.honour_disconnects)

    return run


SHAPES: dict[str, tuple[Callable[..., UpstreamShape], dict[str, Any]]] = {
    "simulator": (simulator, {}),
    "simulator-shuffled": (simulator, {"callback_order": "shuffled", "callback_senders": 2}),
    "simulator-callback-first": (simulator, {"callback_before_answer": 1.0}),
    "simulator-flaky-status": (simulator, {"status_error_rate": 0.5}),
    "simulator-honours-disconnects": (simulator, {"honour_disconnects": True}),
    "independent": (independent, {}),
    "independent-callback-first": (independent, {"early_callbacks": True}),
    "independent-foreign-callback": (independent, {"foreign_early_callback": True}),
    "independent-out-of-order": (independent, {"out_of_order": True, "senders": 2}),
    "independent-flaky-status": (independent, {"status_error_rate": 0.5}),
    "independent-honours-disconnects": (independent, {"honour_disconnects": True}),
}

#: Every shape in every dialect, as ``<dialect>/<shape>``.
UPSTREAMS: dict[str, Shape] = {
    f"{dialect}/{name}": Shape(kind(dialect=dialect, **shape), speaker)
    for dialect, speaker in SPEAKERS.items()
    for name, (kind, shape) in SHAPES.items()
}


@dataclass
class ProxyInFront:
    url: str
    services: Services


@contextlib.asynccontextmanager
async def proxy_in_front(upstream_url: str, **settings: Any) -> AsyncIterator[ProxyInFront]:
    """The proxy app on a real port in front of the job server at ``upstream_url``, its own
    callbacks included."""
    sock = loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxy_settings = Settings(
        **{"upstream_url": upstream_url, "public_url": url, "poll_initial": 0.3, **settings}
    )
    async with (
        app_lifespan(create_app(proxy_settings)) as (app, state),
        run_server(app, sock, lifespan="off") as served,
    ):
        assert served == url
        yield ProxyInFront(url, state["services"])
