"""The proxy's Starlette app: routes, lifespan, the held request, one error table.

A held request's path (:class:`HotPaths`, :func:`_held`): read and check the body
(``proxy.bodies``), register a waiter (``proxy.waiters``), start the job upstream with
its callback URL (``proxy.upstream``), then wait for the client's disconnect while the
answer is decided and sent (``proxy.answers``) by whoever comes first: the job's
callback (``proxy.callbacks``), a status poll once the job is overdue
(``proxy.overdue``), the deadline, or the drain on shutdown. The two hot endpoints are
plain ASGI code ahead of Starlette's own layers; the rare paths (an Idempotency-Key,
signed callbacks, another replica's callback) are ordinary Starlette handlers
(``proxy.idempotency``, ``proxy.callbacks``, ``proxy.shared``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
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

from proxy.answers import as_response, encode, json_answer, send_answer
from proxy.bodies import JobRequest, read_body, receive_body
from proxy.callbacks import is_plain, receive_callback, receive_plain
from proxy.config import Settings, signing_key
from proxy.errors import (
    ClientGone,
    NotReady,
    ProxyError,
    UpstreamError,
)
from proxy.idempotency import KeyedRequests, LocalResults, ResultStore, check_key
from proxy.jobs import is_terminal, job_id_of
from proxy.metrics import Metrics, Outcome
from proxy.openapi import OPENAPI
from proxy.overdue import OverdueWatch
from proxy.services import LifespanState, Services, services_of
from proxy.shared import RedisBus, connect
from proxy.upstream import Upstream, UpstreamAnswer, build_client
from proxy.waiters import AnsweredBy, Waiter, WaiterRegistry, new_replica_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

READY_PROBE_TIMEOUT = 2.0


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The proxy app; ``transport`` replaces the outbound HTTP transport (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        waiters = WaiterRegistry(
            settings.replica_id or new_replica_id(), settings.max_pending, settings.job_deadline
        )
        async with contextlib.AsyncExitStack() as resources:
            client = await resources.enter_async_context(build_client(settings, transport))
            bus: RedisBus | None = None
            if settings.redis_url:
                redis = connect(settings.redis_url)
                resources.push_async_callback(redis.aclose)
                bus = RedisBus(redis, waiters, settings.result_ttl)
                resources.push_async_callback(bus.leave)
                for name, work in (("redis-listener", bus.listen), ("heartbeat", bus.keep_alive)):
                    task = asyncio.create_task(work(), name=name)
                    resources.push_async_callback(_cancel, task)
            watch = OverdueWatch(settings, client)
            watching = asyncio.create_task(watch.run(), name="overdue-watch")
            resources.push_async_callback(_cancel, watching)
            upstream = Upstream(client, settings)
            results: ResultStore
            local: LocalResults | None = None
            if bus is None:
                results = local = LocalResults(settings.result_ttl, settings.idempotency_max_keys)
                resources.callback(local.close)
            else:
                results = bus
            metrics = Metrics.create(lambda: len(waiters), local)
            services = Services(
                settings=settings,
                client=client,
                upstream=upstream,
                waiters=waiters,
                results=results,
                bus=bus,
                watch=watch,
                keyed=KeyedRequests(results, upstream, watch, settings, metrics),
                metrics=metrics,
                signing_key=signing_key(settings.callback_secret)
                if settings.callback_secret
                else None,
            )
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
        # Most requests to /proxy (and its aliases) and /callback never get this far:
        # HotPaths serves them. These routes take the rest (Idempotency-Key, signed
        # callbacks, other replicas' tokens) and answer other methods with 405.
        routes=[
            Route("/proxy", start_with_key, methods=["POST"]),
            Route("/start", start_with_key, methods=["POST"]),
            Route("/", start_with_key, methods=["POST"]),
            *(Route(prefix + "{token}", receive_callback, methods=["POST"]) for prefix in prefixes),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        middleware=[Middleware(HotPaths, callback_prefixes=prefixes)],
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


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(key == name for key, _ in scope["headers"])


class HotPaths:
    """The two hot endpoints, served ahead of Starlette's exception and routing layers.

    ``POST /proxy`` (and ``/start``, ``/``) without an ``Idempotency-Key``, and ``POST
    /callback/{token}`` for an unsigned callback on this replica's token with no kept
    result, are served here: they are most of the traffic, and each layer skipped is
    CPU per request and a frame kept for every held request. Their errors become
    answers through :meth:`ProxyError.answer`, the same mapping the exception handlers
    use. Everything else goes on to the app's routes and ordinary handlers.
    """

    def __init__(self, app: ASGIApp, callback_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.callback_prefixes = callback_prefixes or (CALLBACK_PREFIX,)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            services: Services = scope["state"]["services"]
            path: str = scope["path"]
            try:
                if path in HELD_PATHS and not _has_header(scope, b"idempotency-key"):
                    await _held(services, scope, receive, send)
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


HELD_PATHS = frozenset({"/proxy", "/start", "/"})
CALLBACK_PREFIX = "/callback/"


async def _held(services: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """Start a ``POST /proxy``'s job and hold the request until its answer was sent.

    One coroutine for the whole life of a held request: every frame it keeps is kept
    for each of thousands of held requests.
    """
    outcome: str = Outcome.INTERNAL_ERROR
    try:
        body = await receive_body(scope, receive, services.settings.max_body_size)
        job_request = JobRequest.parse(body)
        with services.waiters.hold() as waiter:
            callback = job_request.callback
            if job_request.wait:
                callback = f"{services.settings.public_url}/callback/{waiter.token}"
            answer = await _start_unless_client_leaves(
                services, job_request, callback, waiter.deadline, receive
            )
            job = answer.job()
            if not job_request.wait:
                await send_answer(send, json_answer(answer.raw, answer.status_code))
                outcome = Outcome.FORWARDED
                return
            if dropped := waiter.bind(job_id_of(job)):
                services.metrics.callback(Outcome.EARLY_MISMATCH, dropped)
            if is_terminal(job):  # a job server may finish the job before answering
                waiter.settle(json_answer(answer.raw), AnsweredBy.START, str(job["state"]))
            waiter.send = send
            if waiter.settled:  # by the start's answer, or by a callback that came first
                await waiter.respond()
            else:
                waiter.started_at, waiter.accepted_at = answer.sent_at, time.monotonic()
                services.watch.track(waiter, waiter.deadline)
                # Nothing of the start is kept while held.
                del body, job_request, callback, answer, job
                # The answer is sent by whoever decides it; receive() returns once it was
                # sent (the response is complete) or the client has gone.
                while (await receive())["type"] != "http.disconnect":
                    pass
                if waiter.settled:
                    _observe(services, waiter)
            outcome = waiter.outcome if waiter.settled else ClientGone.error
    except ProxyError as exc:
        outcome = exc.error
        if isinstance(exc, UpstreamError):
            services.metrics.upstream_error(exc.error)
        raise
    finally:
        services.metrics.request(outcome)


async def _start_unless_client_leaves(
    services: Services,
    job_request: JobRequest,
    callback: str | None,
    deadline: float,
    receive: Receive,
) -> UpstreamAnswer:
    """Start the job upstream; a client that leaves meanwhile withdraws it: a start still
    waiting in the proxy is never sent, one under way has its connection closed."""
    start = services.upstream.start(job_request.upstream_body(callback), deadline=deadline)
    return await until_client_leaves(receive, start)


async def until_client_leaves(receive: Receive, serving: Coroutine[Any, Any, T]) -> T:
    """Run ``serving``, cancelled as soon as the client disconnects (then ClientGone).

    The disconnect arrives as the next ASGI message once the body is read, so watching
    for it takes a task of its own, kept only while ``serving`` runs (a held request
    itself then waits on ``receive()``).
    """
    task = asyncio.current_task()
    assert task is not None
    running, left = True, False

    def client_left(watcher: asyncio.Future[Any]) -> None:
        nonlocal left
        if running and not watcher.cancelled():
            left = True
            task.cancel()

    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(client_left)
    try:
        return await serving
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()
        raise ClientGone() from None
    finally:
        running = False
        watcher.cancel()


def _observe(services: Services, waiter: Waiter) -> None:
    """Learn from an answered job: its duration, and how its answer came."""
    if waiter.answered_by not in (AnsweredBy.CALLBACK, AnsweredBy.POLL):
        return
    now = time.monotonic()
    services.metrics.job_duration(waiter.answered_by).observe(now - waiter.started_at)
    if waiter.answered_by is AnsweredBy.CALLBACK:
        services.watch.answered(waiter, now)
    if waiter.poll is not None:
        services.metrics.poll_fallback(waiter.answered_by)


# -- requests with an Idempotency-Key ------------------------------------------------


async def start_with_key(request: Request) -> Response:
    """``POST /proxy`` with an ``Idempotency-Key``: run the job, or follow the one the
    key already names, keeping the result for later retries."""
    services = services_of(request)
    settings = services.settings
    outcome: str = Outcome.INTERNAL_ERROR
    try:
        job_request = JobRequest.parse(await read_body(request, settings.max_body_size))
        key = check_key(request.headers["idempotency-key"])
        with services.waiters.hold() as waiter:
            waiter.keyed = True
            waiter.future = asyncio.get_running_loop().create_future()
            answer = await until_client_leaves(
                request.receive, services.keyed.serve(waiter, job_request, key)
            )
            _observe(services, waiter)
        outcome = waiter.outcome or Outcome.FORWARDED
        return as_response(answer)
    except ProxyError as exc:
        outcome = exc.error
        if isinstance(exc, UpstreamError):
            services.metrics.upstream_error(exc.error)
        raise
    finally:
        services.metrics.request(outcome)


# -- callbacks -----------------------------------------------------------------------


# -- the rest of the API -------------------------------------------------------------


def _json(value: Any, status: int = 200) -> Response:
    return Response(encode(value), status, media_type="application/json")


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
    return _json(OPENAPI)


async def proxy_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return as_response(exc.answer())


async def http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body: dict[str, Any] = {"error": _http_error_word(exc.status_code), "detail": exc.detail}
    return Response(encode(body), exc.status_code, exc.headers, "application/json")


async def unexpected_error_response(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": "internal_error", "detail": "the proxy failed unexpectedly; see its log"}
    return _json(body, 500)


def _http_error_word(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status_code, "http_error")
