"""In-process fixtures: the proxy app wired to a job server, fake or real.

Both apps run in the test's event loop through ``httpx.ASGITransport``: the proxy's
outbound client reaches the job server, and the job server's callbacks reach the proxy.
``proxy_factory`` puts a scriptable fake behind the proxy; ``in_process_system`` the real
job server app (:func:`jobserver.app.create_app`, its callbacks through a transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobserver.app import create_app as create_jobserver_app
from jobserver.config import Settings as JobServerSettings
from jobserver.jobclient.__main__ import DEFAULT_DEADLINE, EXIT_FAILED, EXIT_PASSED
from jobserver.jobclient.run import run_jobs
from jobserver.jobclient.verdict import judge, render_json
from proxy.config import Settings
from proxy.dialects.dialect import load_dialect
from proxy.services import Services
from proxy.serving.app import create_app
from proxy.upstream.start import Upstream, UpstreamAnswer
from tests.conftest import app_lifespan, run_server

PROXY_URL = "http://proxy.test"
UPSTREAM_URL = "http://jobserver.test"

StartHook = Callable[[dict[str, Any]], Awaitable[Response | None]]


@dataclass
class FakeJobServer:
    """Records every /start and answers like the job server; tests decide when jobs end."""

    starts: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks: dict[str, str] = field(default_factory=dict)
    started: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    on_start: StartHook | None = None
    #: A job's status answered with this code instead of the job.
    status_codes: dict[str, int] = field(default_factory=dict)
    to_proxy: httpx.AsyncClient | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(0xABC0000000001))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/start", self._start, methods=["POST"]),
                Route("/status/{id}", self._status, methods=["GET"]),
            ]
        )

    async def _start(self, request: Request) -> Response:
        body = await request.json()
        self.starts.append(body)
        if self.on_start is not None:
            override = await self.on_start(body)
            if override is not None:
                return override
        job_id = f"{next(self._ids):x}"
        self.jobs[job_id] = {"id": job_id, "state": "running"}
        if body.get("callback"):
            self.callbacks[job_id] = body["callback"]
        self.started.put_nowait(job_id)
        return JSONResponse({"state": "running", "id": job_id})

    async def _status(self, request: Request) -> Response:
        code = self.status_codes.get(request.path_params["id"])
        if code is not None:
            return JSONResponse({"error": "scripted", "detail": "as the test asked"}, code)
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return JSONResponse({"error": "not_found", "detail": "no such job"}, 404)
        return JSONResponse(job)

    def finish(self, job_id: str, state: str = "completed") -> dict[str, Any]:
        job = {"id": job_id, "state": state, "startedAt": "2026-11-25T13:00:00.000Z"}
        job.update({"proof": "A" * 40} if state == "completed" else {"error": "it broke"})
        self.jobs[job_id] = job
        return job

    async def callback(
        self, job_id: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST the job (or ``body``) to the callback URL the proxy gave for ``job_id``."""
        assert self.to_proxy is not None
        payload = self.jobs[job_id] if body is None else body
        return await self.to_proxy.post(self.callbacks[job_id], json=payload, headers=headers)

    async def next_job(self, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            return await self.started.get()


@dataclass
class ProxyUnderTest:
    app: Starlette
    client: httpx.AsyncClient
    upstream: FakeJobServer
    services: Services
    served: ASGIApp  # the app as a server calls it, with the lifespan's state

    @contextlib.asynccontextmanager
    async def on_a_port(self) -> AsyncIterator[httpx.AsyncClient]:
        """The proxy served by uvicorn on a real port (responses stream as they are
        written, which ASGITransport does not do); yields a client to it."""
        async with (
            run_server(self.served, lifespan="off") as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield client

    async def held_job(self, account: str = "acme") -> tuple[asyncio.Task[httpx.Response], str]:
        """Start a wait:true request in the background; returns it and its upstream job id."""
        request = asyncio.ensure_future(
            self.client.post("/proxy", json={"account": account, "wait": True})
        )
        return request, await self.upstream.next_job()


ProxyFactory = Callable[..., contextlib.AbstractAsyncContextManager[ProxyUnderTest]]


@pytest.fixture
def proxy_factory() -> ProxyFactory:
    """Build a proxy (settings overridable) around a fresh fake job server."""

    @contextlib.asynccontextmanager
    async def build(
        upstream: FakeJobServer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **overrides: Any,
    ) -> AsyncIterator[ProxyUnderTest]:
        """``transport`` replaces the way to the fake job server (a failing one, say)."""
        upstream = upstream or FakeJobServer()
        settings = Settings(**{"upstream_url": UPSTREAM_URL, "public_url": PROXY_URL, **overrides})
        app = create_app(settings, transport=transport or httpx.ASGITransport(app=upstream.app()))
        async with app_lifespan(app) as (served, state):
            transport = httpx.ASGITransport(app=served)
            async with (
                httpx.AsyncClient(transport=transport, base_url=PROXY_URL) as client,
                httpx.AsyncClient(transport=transport, base_url=PROXY_URL) as to_proxy,
            ):
                upstream.to_proxy = to_proxy
                yield ProxyUnderTest(app, client, upstream, state["services"], served)

    return build


@pytest.fixture
async def proxy(proxy_factory: ProxyFactory) -> AsyncIterator[ProxyUnderTest]:
    async with proxy_factory() as built:
        yield built


# The upstream client on its own (test_upstream.py, test_upstream_lanes.py).

WORK_SAMPLE = load_dialect("work-sample")
RUNNING = {"state": "running", "id": "0123456789abcdef"}


def upstream_settings(**overrides: Any) -> Settings:
    """The proxy's settings for an Upstream of its own, on httpx's pool unless overridden."""
    values: dict[str, Any] = {
        "upstream_url": UPSTREAM_URL,
        "upstream_transport": "httpx",
        "start_retry_budget": 2.0,
        "start_timeout": 1.0,
    }
    return Settings(**(values | overrides))


def start_in_lane(
    upstream: Upstream, body: dict[str, Any], **options: Any
) -> Awaitable[UpstreamAnswer]:
    """Start ``body``'s job in the lane of its account, as the held path does."""
    return upstream.start(body["account"], orjson.dumps(body), **options)


def soon(seconds: float = 30.0) -> float:
    """A deadline ``seconds`` from now."""
    return time.monotonic() + seconds


def sample(metrics: str, name: str) -> float:
    """The value of the sample ``name`` in a ``/metrics`` text (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class StartsSeen(httpx.AsyncBaseTransport):
    """The proxy's way to the job server app; each /start that sets out is announced,
    so that a test can wait for it rather than poll."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = httpx.ASGITransport(app=app)
        self.starts: asyncio.Queue[httpx.Request] = asyncio.Queue()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            self.starts.put_nowait(request)
        return await self._app.handle_async_request(request)


class LateApp:
    """An ASGI app named after it is handed out: the job server is built before the
    proxy it calls back."""

    app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


@dataclass
class InProcessSystem:
    """The proxy in front of the real job server, both apps in the test's event loop."""

    client: httpx.AsyncClient  # to the proxy
    proxy_app: ASGIApp  # served: each call gets the lifespan's state
    services: Services
    jobserver: httpx.AsyncClient  # to the job server
    jobserver_state: dict[str, Any]
    to_jobserver: StartsSeen

    async def next_start(self, timeout: float = 5.0) -> httpx.Request:
        """The next /start the proxy sends to the job server, waiting at most ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self.to_jobserver.starts.get()

    async def metric(self, name: str) -> float:
        """The value of the sample ``name`` on the proxy's ``/metrics`` (0 when absent)."""
        return sample((await self.client.get("/metrics")).text, name)

    async def callbacks_sent(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout``) until the job server has no callback under way."""
        assert await self.jobserver_state["callbacks"].drain(timeout) == 0


SystemFactory = Callable[..., contextlib.AbstractAsyncContextManager[InProcessSystem]]


@pytest.fixture
def in_process_system() -> SystemFactory:
    """Build the proxy (settings overridable) in front of the real job server app."""

    @contextlib.asynccontextmanager
    async def build(
        jobserver_settings: Mapping[str, Any] | None = None, **overrides: Any
    ) -> AsyncIterator[InProcessSystem]:
        """``jobserver_settings`` are the job server's, ``overrides`` the proxy's."""
        callbacks_to = LateApp()
        jobserver_app = create_jobserver_app(
            JobServerSettings(**(jobserver_settings or {})),
            callback_transport=httpx.ASGITransport(app=callbacks_to),
        )
        async with app_lifespan(jobserver_app) as (jobserver_served, jobserver_state):
            to_jobserver = StartsSeen(jobserver_served)
            settings = Settings(upstream_url=UPSTREAM_URL, public_url=PROXY_URL, **overrides)
            async with app_lifespan(create_app(settings, transport=to_jobserver)) as (
                proxy_served,
                state,
            ):
                callbacks_to.app = proxy_served
                async with (
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=proxy_served), base_url=PROXY_URL
                    ) as client,
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=jobserver_served),
                        base_url=UPSTREAM_URL,
                    ) as to_jobserver_directly,
                ):
                    yield InProcessSystem(
                        client,
                        proxy_served,
                        state["services"],
                        to_jobserver_directly,
                        jobserver_state,
                        to_jobserver,
                    )

    return build


async def post_and_leave(
    app: ASGIApp,
    path: str,
    body: dict[str, Any],
    leave: asyncio.Event,
    headers: Mapping[str, str] | None = None,
) -> list[Message]:
    """POST ``body`` to ``app`` from a client that hangs up once ``leave`` is set; returns
    what the app sent.

    httpx.ASGITransport cannot hang up, so this speaks ASGI as uvicorn does: the body
    first; then each receive() returns ``http.disconnect`` once the client has left or
    the answer is complete.
    """
    content = json.dumps(body).encode()
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"proxy.test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("proxy.test", 80),
    }
    sent: list[Message] = []
    answered = asyncio.Event()
    unread = [{"type": "http.request", "body": content, "more_body": False}]

    async def receive() -> Message:
        if unread:
            return unread.pop()
        left = asyncio.ensure_future(leave.wait())
        complete = asyncio.ensure_future(answered.wait())
        try:
            await asyncio.wait((left, complete), return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            complete.cancel()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    await app(scope, receive, send)
    return sent


async def jobclient_in_process(
    url: str,
    *,
    jobs: int = 50,
    deadline: float = DEFAULT_DEADLINE,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[int, dict[str, Any]]:
    """The jobclient's run and verdict in the test's event loop: the exit code and the
    ``--json`` report that ``jobclient --url URL --account e2e --json`` would give."""
    report = await run_jobs(url, "e2e", jobs, transport=transport)
    verdict = judge(report, deadline)
    code = EXIT_PASSED if verdict.passed else EXIT_FAILED
    return code, json.loads(render_json(report, verdict, deadline))
