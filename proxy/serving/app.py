"""The proxy's Starlette app: routes, lifespan, the held request, one error table.

A held request's path (:class:`HotPaths`, ``proxy.holding.held``): read and check the
body (``proxy.bodies``), register a waiter (``proxy.waiting.waiters``), start the job
upstream with its callback URL (``proxy.upstream.start``), then wait for the client's
disconnect while the answer is decided and sent (``proxy.answers``) by whoever comes
first: the job's callback (``proxy.waiting.callbacks``), a status poll once the job is
overdue (``proxy.polling.overdue``), the deadline, or the drain on shutdown. The hot
endpoints are plain ASGI code ahead of Starlette's own layers; the rare paths (an
Idempotency-Key, signed callbacks, another replica's callback) are ordinary Starlette
handlers (``proxy.holding.keyed``, ``proxy.waiting.callbacks``, ``proxy.shared.bus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.answers import JSON_MEDIA_TYPE, as_response, encode, send_answer
from proxy.config import Settings, signing_key
from proxy.dialects.dialect import Dialect, load_dialect
from proxy.errors import (
    NotReady,
    ProxyError,
)
from proxy.holding.held import held
from proxy.holding.keyed import KeyedRequests, LocalResults, ResultStore
from proxy.holding.resource import JOBS_PREFIX, job_resource
from proxy.holding.tracking import TrackedJobs
from proxy.holding.wishes import read_wishes
from proxy.polling.overdue import OverdueWatch
from proxy.services import LifespanState, Services, services_of
from proxy.serving.metrics import Metrics
from proxy.serving.openapi import openapi_document
from proxy.shared.bus import RedisBus, connect
from proxy.shared.jobs import SharedJobs
from proxy.upstream.client import build_client, native_transport
from proxy.upstream.start import Upstream
from proxy.waiting.callbacks import is_plain, receive_callback, receive_plain
from proxy.waiting.deliveries import AnsweredBy
from proxy.waiting.tokens import new_replica_id
from proxy.waiting.waiters import Waiter, WaiterRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")

READY_PROBE_TIMEOUT = 2.0


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The proxy app; ``transport`` replaces the outbound HTTP transport (tests)."""
    dialect = load_dialect(settings.upstream_dialect)
    held_paths = held_paths_of(dialect)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        waiters = WaiterRegistry(
            settings.replica_id or new_replica_id(), settings.max_pending, settings.job_deadline
        )
        async with contextlib.AsyncExitStack() as resources:
            native = native_transport(settings) if transport is None else None
            client = await resources.enter_async_context(
                build_client(settings, transport or native)
            )
            tracked = TrackedJobs(settings.result_ttl, settings.max_results, dialect.failed)
            resources.callback(tracked.close)
            bus: RedisBus | None = None
            shared_jobs: SharedJobs | None = None
            if settings.redis_url:
                redis = connect(settings.redis_url)
                resources.push_async_callback(redis.aclose)
                bus = RedisBus(redis, waiters, settings.result_ttl, dialect)
                shared_jobs = SharedJobs(
                    redis,
                    tracked,
                    running_ttl=settings.job_deadline + settings.result_ttl,
                    final_ttl=settings.result_ttl,
                )
                bus.on_job_event = shared_jobs.heard
                resources.push_async_callback(bus.leave)
                work = {
                    "redis-listener": bus.listen,
                    "heartbeat": bus.keep_alive,
                    "job-events": shared_jobs.write,
                }
                for name, run in work.items():
                    task = asyncio.create_task(run(), name=name)
                    resources.push_async_callback(_cancel, task)
            results: ResultStore
            local: LocalResults | None = None
            if bus is None:
                results = local = LocalResults(settings.result_ttl, settings.max_results)
                resources.callback(local.close)
            else:
                results = bus
            metrics = Metrics.create(lambda: len(waiters), lambda: tracked.streams, local)
            watch = OverdueWatch(settings, client, dialect, metrics.upstream_error)
            watching = asyncio.create_task(watch.run(), name="overdue-watch")
            resources.push_async_callback(_cancel, watching)
            upstream = Upstream(client, settings, dialect, native)
            heartbeats = asyncio.create_task(
                tracked.send_heartbeats(settings.stream_heartbeat), name="stream-heartbeats"
            )
            resources.push_async_callback(_cancel, heartbeats)
            keyed = KeyedRequests(results, watch, settings, dialect)
            resources.push_async_callback(keyed.aclose)
            services = Services(
                settings=settings,
                dialect=dialect,
                upstream=upstream,
                waiters=waiters,
                bus=bus,
                watch=watch,
                keyed=keyed,
                metrics=metrics,
                signing_key=signing_key(settings.callback_secret)
                if settings.callback_secret
                else None,
                tracked=tracked,
                shared_jobs=shared_jobs,
            )
            waiters.observer = functools.partial(observe, services)
            logger.info(
                "replica %s proxying to %s, callbacks via %s, %s",
                waiters.replica_id,
                settings.upstream_url,
                settings.public_url,
                "shared through Redis" if bus else "in-process",
            )
            yield {"services": services}

    prefixes = callback_prefixes(settings.public_url)
    app = Starlette(
        # HotPaths serves the held paths, GET /jobs/{ref} and plain callbacks before
        # they get this far: their routes here answer other methods with 405. Callbacks
        # that are signed or for another replica's token take their route.
        routes=[
            *(Route(path, _served_by_hot_paths, methods=["POST"]) for path in held_paths),
            Route(f"{JOBS_PREFIX}{{ref}}", _served_by_hot_paths, methods=["GET"]),
            *(Route(prefix + "{token}", receive_callback, methods=["POST"]) for prefix in prefixes),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        middleware=[Middleware(HotPaths, held_paths=held_paths, callback_prefixes=prefixes)],
        lifespan=lifespan,
        exception_handlers={
            ProxyError: proxy_error_response,
            HTTPException: http_error_response,
            Exception: unexpected_error_response,
        },
    )
    # /proxy/ is not /proxy: a redirect would be built from the client's Host header.
    app.router.redirect_slashes = False
    return app


def callback_prefixes(public_url: str) -> tuple[str, ...]:
    """Where callbacks arrive: ``/callback/``, and below ``public_url``'s path if it has one
    (a load balancer may pass that path on, or strip it)."""
    base = urlsplit(public_url).path.rstrip("/")
    return (CALLBACK_PREFIX, f"{base}{CALLBACK_PREFIX}") if base else (CALLBACK_PREFIX,)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class HotPaths:
    """The hot endpoints, served ahead of Starlette's exception and routing layers.

    ``POST /proxy`` (and ``/start``, ``/``), ``POST /callback/{token}`` for an unsigned
    callback on this replica's token, and ``GET /jobs/{ref}`` are served here: they are
    most of the traffic, or held by the thousand, and each layer skipped is CPU per
    request and a frame kept for every held request. Their errors become answers through
    :meth:`ProxyError.answer`, the same mapping the exception handlers use. Everything
    else goes on to the app's routes and ordinary handlers.
    """

    def __init__(
        self,
        app: ASGIApp,
        held_paths: tuple[str, ...] = ("/proxy", "/", "/start"),
        callback_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.held_paths = frozenset(held_paths)
        self.callback_prefixes = callback_prefixes or (CALLBACK_PREFIX,)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "GET" and path.startswith(JOBS_PREFIX) and "/" not in path[len(JOBS_PREFIX) :]:
            services = scope["state"]["services"]
            try:
                await job_resource(services, path[len(JOBS_PREFIX) :], scope, receive, send)
            except ProxyError as exc:  # always raised before anything was sent
                await send_answer(send, exc.answer())
            return
        if method == "POST":
            services = scope["state"]["services"]
            try:
                if path in self.held_paths:
                    await held(services, scope, receive, send, read_wishes(scope))
                    return
                for prefix in self.callback_prefixes:
                    if path.startswith(prefix):
                        token = path[len(prefix) :]
                        if is_plain(services, token):
                            await receive_plain(services, token, scope, receive, send)
                            return
                        break
            except ProxyError as exc:  # always raised before anything was sent
                await send_answer(send, exc.answer())
                return
        await self.app(scope, receive, send)


def held_paths_of(dialect: Dialect) -> tuple[str, ...]:
    """Where clients start a held job: /proxy, the bare base URL, and the dialect's own
    start path (the work sample's /start), so that a client of that API changes only its
    base URL."""
    return tuple(dict.fromkeys(("/proxy", "/", dialect.start_path)))


CALLBACK_PREFIX = "/callback/"
#: How a job whose callback was overdue may end: its callback, a poll, or shown lost.
POLLED_ENDS = frozenset({AnsweredBy.CALLBACK, AnsweredBy.POLL, AnsweredBy.LOST})


def observe(services: Services, waiter: Waiter) -> None:
    """Learn from an answered job: its duration, and how its answer came; hand it to its
    keeper, if it has one."""
    if waiter.keeper is not None:
        waiter.keeper(waiter)
    answered_by = waiter.answered_by
    if waiter.poll is not None and answered_by in POLLED_ENDS:
        services.metrics.poll_fallback(answered_by)
    if answered_by not in (AnsweredBy.CALLBACK, AnsweredBy.POLL):
        return  # a lost job has no duration, nor the deadline's, the drain's or the start's
    now = time.monotonic()
    services.metrics.job_duration(answered_by).observe(now - waiter.started_at)
    if answered_by is AnsweredBy.CALLBACK:
        services.watch.answered(waiter, now)


# -- the rest of the API -------------------------------------------------------------


async def _served_by_hot_paths(request: Request) -> Response:
    """HotPaths serves every request of these routes; the routes give other methods 405."""
    raise AssertionError(f"{request.method} {request.url.path} reached the router")


def _json(value: Any, status: int = 200) -> Response:
    return Response(encode(value), status, media_type=JSON_MEDIA_TYPE)


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    if services.waiters.closing:
        raise NotReady("the proxy is shutting down")
    if not await services.upstream.reachable(READY_PROBE_TIMEOUT):
        raise NotReady(f"the job server at {services.upstream.base_url} is unreachable")
    if services.bus is not None and not (
        services.bus.subscribed.is_set() and await services.bus.ping()
    ):
        raise NotReady("Redis is unreachable")
    ready: dict[str, Any] = {"status": "ready", "pending": len(services.waiters)}
    if services.bus is not None:
        ready["replicas"] = services.bus.live_replicas()
    return _json(ready)


async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return _json(openapi_document(services_of(request).dialect))


async def proxy_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return as_response(exc.answer())


async def http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body: dict[str, Any] = {"error": _http_error_word(exc.status_code), "detail": exc.detail}
    return Response(encode(body), exc.status_code, exc.headers, JSON_MEDIA_TYPE)


async def unexpected_error_response(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": "internal_error", "detail": "the proxy failed unexpectedly; see its log"}
    return _json(body, 500)


def _http_error_word(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status_code, "http_error")
