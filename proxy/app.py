"""The proxy's Starlette app: routes, lifespan and the one error-to-response table.

A held request's path: :func:`start_job` registers a waiter (``proxy.waiters``), starts
the job upstream with its callback URL (``proxy.upstream``), and waits for the callback
(:func:`receive_callback`, ``proxy.callbacks``) or, once the job is overdue, for a
status poll (``proxy.polling``), whichever answers first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.bodies import JobRequest, read_body
from proxy.callbacks import parse_job, signing_key, verify_signature
from proxy.config import Settings
from proxy.errors import (
    BadRequest,
    ClientGone,
    JobTimeout,
    NotReady,
    ProxyError,
    UnknownCallback,
    UpstreamBadResponse,
    UpstreamError,
)
from proxy.metrics import Metrics
from proxy.polling import DurationStats, PollSchedule, wait_for_job
from proxy.upstream import Upstream, build_client, is_terminal, job_id_of
from proxy.waiters import Delivery, Job, Waiter, WaiterRegistry, new_replica_id

logger = logging.getLogger(__name__)

READY_PROBE_TIMEOUT = 2.0


@dataclass(slots=True)
class Services:
    """Everything the lifespan opens, handed to every request."""

    settings: Settings
    client: httpx.AsyncClient
    upstream: Upstream
    waiters: WaiterRegistry
    stats: DurationStats
    metrics: Metrics
    signing_key: bytes | None


class LifespanState(TypedDict):
    services: Services


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The proxy app; ``transport`` replaces the outbound HTTP transport (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        waiters = WaiterRegistry(settings.replica_id or new_replica_id(), settings.max_pending)
        async with build_client(settings, transport) as client:
            services = Services(
                settings=settings,
                client=client,
                upstream=Upstream(client, settings),
                waiters=waiters,
                stats=DurationStats(),
                metrics=Metrics.create(lambda: len(waiters)),
                signing_key=signing_key(settings.callback_secret)
                if settings.callback_secret
                else None,
            )
            # The server drains these waiters on shutdown before the lifespan ends.
            app.state.services = services
            logger.info(
                "replica %s proxying to %s, callbacks via %s",
                waiters.replica_id,
                settings.upstream_url,
                settings.public_url,
            )
            yield {"services": services}

    return Starlette(
        routes=[
            Route("/proxy", start_job, methods=["POST"]),
            Route("/start", start_job, methods=["POST"]),
            Route("/callback/{token}", receive_callback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            ProxyError: proxy_error_response,
            HTTPException: http_error_response,
            Exception: unexpected_error_response,
        },
    )


async def start_job(request: Request) -> Response:
    services = services_of(request)
    settings = services.settings
    outcome = "internal_error"
    try:
        job_request = JobRequest.parse(await read_body(request, settings.max_body_size))
        deadline = time.monotonic() + settings.job_deadline
        if job_request.wait:
            job = await _run_held(request, services, job_request, deadline)
            outcome = str(job.get("state"))
            return JSONResponse(job)
        answer = await services.upstream.start(
            job_request.upstream_body(job_request.callback), deadline=deadline
        )
        outcome = "forwarded"
        return JSONResponse(answer.body, answer.status_code)
    except ProxyError as exc:
        outcome = exc.error
        if isinstance(exc, UpstreamError):
            services.metrics.upstream_errors.labels(exc.error).inc()
        raise
    finally:
        services.metrics.requests.labels(outcome).inc()


async def _run_held(
    request: Request, services: Services, job_request: JobRequest, deadline: float
) -> Job:
    """Start the job with our callback and hold the request until its result."""
    with services.waiters.hold() as waiter:
        callback = f"{services.settings.public_url}/callback/{waiter.token}"
        # The client's disconnect arrives as the next ASGI message once the body is read.
        watcher = asyncio.ensure_future(request.receive())
        watcher.add_done_callback(lambda done: _abandon(waiter, done))
        try:
            answer = await services.upstream.start(
                job_request.upstream_body(callback), deadline=deadline
            )
            if not isinstance(answer.body, dict):
                raise UpstreamBadResponse(f"the job server answered {answer.body!r:.200}")
            if is_terminal(answer.body):
                return answer.body  # a job server may finish the job before answering
            waiter.job_id = job_id_of(answer.body)
            waiter.started_at = time.monotonic()
            return await _await_result(services, waiter, deadline)
        finally:
            watcher.cancel()


def _abandon(waiter: Waiter, watcher: asyncio.Future[Any]) -> None:
    if not watcher.cancelled() and not waiter.future.done():
        waiter.future.set_exception(ClientGone())


async def _await_result(services: Services, waiter: Waiter, deadline: float) -> Job:
    """The callback's result, or a status poll's once the job is overdue."""
    settings = services.settings
    overdue_in = services.stats.expected(settings.poll_k, settings.poll_initial)
    first_wait = min(overdue_in, deadline - time.monotonic())
    await asyncio.wait((waiter.future,), timeout=max(0.0, first_wait))
    if waiter.future.done():
        return _observe(services, waiter, waiter.future.result(), via="callback")
    if time.monotonic() >= deadline:
        raise JobTimeout(f"job {waiter.job_id} did not finish within the deadline")
    assert waiter.job_id is not None
    schedule = PollSchedule(
        first_delay=0.0, base=settings.poll_backoff_base, cap=settings.poll_backoff_cap
    )
    poll = asyncio.ensure_future(
        wait_for_job(
            services.client,
            services.upstream.base_url,
            waiter.job_id,
            deadline=deadline,
            schedule=schedule,
        )
    )
    try:
        await asyncio.wait((waiter.future, poll), return_when=asyncio.FIRST_COMPLETED)
    finally:
        poll.cancel()
    if waiter.future.done():
        services.metrics.poll_fallbacks.labels("callback").inc()
        return _observe(services, waiter, waiter.future.result(), via="callback")
    services.metrics.poll_fallbacks.labels("poll").inc()
    logger.info("job %s answered by a status poll: its callback is late or lost", waiter.job_id)
    return _observe(services, waiter, poll.result(), via="poll")


def _observe(services: Services, waiter: Waiter, job: Job, *, via: str) -> Job:
    duration = time.monotonic() - waiter.started_at
    services.metrics.job_duration.labels(via).observe(duration)
    if via == "callback" and waiter.job_id is not None:
        # A poll only bounds the duration from above; callbacks teach the schedule.
        services.stats.add(duration)
    return job


async def receive_callback(request: Request) -> Response:
    services = services_of(request)
    token = request.path_params["token"]
    outcome = "internal_error"
    try:
        body = await read_body(request, services.settings.max_body_size)
        if services.signing_key is not None:
            verify_signature(services.signing_key, request.headers, body)
        job = parse_job(body)
        waiter = services.waiters.get(token)
        if waiter is not None and waiter.job_id is not None and job["id"] != waiter.job_id:
            raise BadRequest(f"callback for job {job['id']} on the token of job {waiter.job_id}")
        if not is_terminal(job):
            outcome = "not_final"
            return JSONResponse({"status": "ignored", "detail": "the job is not finished"})
        delivery = services.waiters.resolve(token, job)
        outcome = delivery.value
        if delivery is not Delivery.OK:
            logger.info("dropped the result of job %s: %s token", job["id"], delivery.value)
            raise UnknownCallback()
        return JSONResponse({"status": "delivered"})
    except ProxyError as exc:
        if not isinstance(exc, UnknownCallback):
            outcome = exc.error
        raise
    finally:
        services.metrics.callbacks.labels(outcome).inc()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    if not await services.upstream.reachable(READY_PROBE_TIMEOUT):
        raise NotReady(f"the job server at {services.upstream.base_url} is unreachable")
    return JSONResponse({"status": "ready", "pending": len(services.waiters)})


async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def proxy_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return JSONResponse(exc.body(), exc.status_code, headers=exc.headers)


async def http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body: dict[str, Any] = {"error": _http_error_word(exc.status_code), "detail": exc.detail}
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def unexpected_error_response(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": "internal_error", "detail": "the proxy failed unexpectedly; see its log"}
    return JSONResponse(body, 500)


def _http_error_word(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status_code, "http_error")
