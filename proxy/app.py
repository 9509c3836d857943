"""The proxy's Starlette app: routes, lifespan and the one error-to-response table.

A held request's path: :func:`start_job` registers a waiter (``proxy.waiters``), starts
the job upstream with its callback URL (``proxy.upstream``), and waits for the callback
(:func:`receive_callback`, ``proxy.callbacks``) or, once the job is overdue, for a
status poll (``proxy.polling``), whichever answers first. With an ``Idempotency-Key``,
a retry follows the first request's job instead (``proxy.idempotency``); with Redis,
callbacks for other replicas travel through it (``proxy.shared``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
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
    BusUnavailable,
    ClientGone,
    JobMismatch,
    JobTimeout,
    NotReady,
    ProxyError,
    UnknownCallback,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.idempotency import Claim, LocalResults, ResultStore, check_key, fingerprint
from proxy.metrics import Metrics
from proxy.openapi import OPENAPI
from proxy.overdue import OverdueWatch
from proxy.polling import PollSchedule
from proxy.shared import RedisBus, connect
from proxy.upstream import Upstream, UpstreamAnswer, build_client, is_terminal, job_id_of
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
    results: ResultStore
    bus: RedisBus | None
    watch: OverdueWatch
    metrics: Metrics
    signing_key: bytes | None


class JSONAnswer(JSONResponse):
    """A JSON response that can encode whatever a job server sent: non-ASCII characters,
    lone surrogates included, are written as ``\\u`` escapes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


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
            services = Services(
                settings=settings,
                client=client,
                upstream=Upstream(client, settings),
                waiters=waiters,
                results=bus or LocalResults(settings.result_ttl),
                bus=bus,
                watch=watch,
                metrics=Metrics.create(lambda: len(waiters)),
                signing_key=signing_key(settings.callback_secret)
                if settings.callback_secret
                else None,
            )
            # The server drains these waiters on shutdown, before the lifespan ends.
            app.state.services = services
            logger.info(
                "replica %s proxying to %s, callbacks via %s, %s",
                waiters.replica_id,
                settings.upstream_url,
                settings.public_url,
                "shared through Redis" if bus else "in-process",
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
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            ProxyError: proxy_error_response,
            HTTPException: http_error_response,
            Exception: unexpected_error_response,
        },
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def start_job(request: Request) -> Response:
    services = services_of(request)
    settings = services.settings
    outcome = "internal_error"
    try:
        job_request = JobRequest.parse(await read_body(request, settings.max_body_size))
        key = request.headers.get("idempotency-key")
        key = None if key is None else check_key(key)
        deadline = time.monotonic() + settings.job_deadline
        with services.waiters.hold() as waiter:
            answer = await _until_client_leaves(
                request, waiter, _serve(services, waiter, job_request, key, deadline)
            )
        outcome = str(answer.body.get("state")) if job_request.wait else "forwarded"
        return JSONAnswer(answer.body, answer.status_code)
    except ProxyError as exc:
        outcome = exc.error
        if isinstance(exc, UpstreamError):
            services.metrics.upstream_errors.labels(exc.error).inc()
        raise
    finally:
        services.metrics.requests.labels(outcome).inc()


async def _until_client_leaves(
    request: Request, waiter: Waiter, serving: Coroutine[Any, Any, UpstreamAnswer]
) -> UpstreamAnswer:
    """Run ``serving``, cancelled as soon as the client disconnects (then ClientGone).

    Whatever the client was waiting for stops with it: a start still waiting for its
    account's lane is never sent, and the waiter leaves the registry at once.
    """
    task = asyncio.current_task()
    assert task is not None
    serving_done = False

    def client_left(watcher: asyncio.Future[Any]) -> None:
        if not watcher.cancelled() and not serving_done:
            waiter.client_left = True
            task.cancel()

    # The client's disconnect arrives as the next ASGI message once the body is read.
    watcher = asyncio.ensure_future(request.receive())
    watcher.add_done_callback(client_left)
    try:
        return await serving
    except asyncio.CancelledError:
        if not waiter.client_left:
            raise
        task.uncancel()
        raise ClientGone() from None
    finally:
        serving_done = True
        watcher.cancel()


async def _serve(
    services: Services, waiter: Waiter, job_request: JobRequest, key: str | None, deadline: float
) -> UpstreamAnswer:
    """Run the client's job (or follow the one its Idempotency-Key names)."""
    results = services.results
    if key is not None:
        digest = fingerprint(dataclasses.asdict(job_request))
        claim = await results.claim(key, digest, waiter.token)
        if not claim.owner:
            return UpstreamAnswer(200, await _follow(services, waiter, key, claim, job_request))
    own_callback = f"{services.settings.public_url}/callback/{waiter.token}"
    callback = own_callback if job_request.wait else job_request.callback
    try:
        answer = await services.upstream.start(
            job_request.upstream_body(callback), deadline=deadline
        )
    except (UpstreamUnavailable, UpstreamRejected):
        if key is not None:  # surely no job was started for this key: let a retry start one
            await _quietly(results.release(key, waiter.token))
        raise
    if not isinstance(answer.body, dict):
        raise UpstreamBadResponse(f"the job server answered {answer.body!r:.200}")
    job: Job = answer.body
    job_id = job_id_of(job)  # whatever the state: a job without an id is no answer
    if not job_request.wait:
        if key is not None:
            await _quietly(results.put_result(waiter.token, job))
        return answer
    waiter.bind(job_id)
    if not is_terminal(job):  # a job server may finish the job before answering
        waiter.started_at, waiter.accepted_at = answer.sent_at, time.monotonic()
        if key is not None:
            await _quietly(results.bind_job(key, job_id))
        job = await _await_result(services, waiter, deadline)
    if key is not None:
        await _quietly(results.put_result(waiter.token, job))
    return UpstreamAnswer(200, job)


async def _quietly(step: Awaitable[Any]) -> None:
    """Bookkeeping for later retries must not fail the request at hand."""
    try:
        await step
    except BusUnavailable as exc:
        logger.warning("%s", exc.detail)


async def _await_result(services: Services, waiter: Waiter, deadline: float) -> Job:
    """The job's result: from its callback, or from a status poll if that is lost."""
    services.watch.track(waiter, deadline)
    try:
        # Awaiting the future itself (no asyncio.wait bookkeeping per held request); at
        # the deadline it is cancelled, which a late callback then finds spent.
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            job = await waiter.future  # raises JobLost, or ShuttingDown when the proxy stops
    except TimeoutError:
        raise JobTimeout(f"job {waiter.job_id} did not finish within the deadline") from None
    now = time.monotonic()
    services.metrics.job_duration.labels(waiter.answered_by).observe(now - waiter.started_at)
    if waiter.answered_by == "callback":
        services.watch.answered(waiter, now)
    if waiter.poll is not None:
        services.metrics.poll_fallbacks.labels(waiter.answered_by).inc()
    return job


async def _follow(
    services: Services, waiter: Waiter, key: str, claim: Claim, job_request: JobRequest
) -> Job:
    """A retry's answer: the first request's stored result, waited for if need be."""
    settings = services.settings
    deadline = time.monotonic() + settings.job_deadline
    delays = PollSchedule(base=settings.poll_backoff_base, cap=settings.poll_backoff_cap).delays()
    job_id = claim.job_id
    poll: asyncio.Future[Job] | None = None
    try:
        while True:
            result = await services.results.get_result(claim.token)
            if result is not None:
                return result
            if job_request.wait and poll is None:
                job_id = job_id or await services.results.job_id_for(key)
                if job_id is not None:
                    # The first request's holder may be gone: ask the job server too.
                    overdue_in = services.watch.expected()
                    polling = services.watch.poll(
                        job_id, deadline, known_since=time.monotonic(), first_delay=overdue_in
                    )
                    poll = asyncio.ensure_future(polling)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(f"the job of Idempotency-Key {key!r} did not finish in time")
            watched: set[asyncio.Future[Any]] = {waiter.future, *([poll] if poll else [])}
            timeout = min(next(delays), remaining)
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if waiter.future.done():
                return waiter.future.result()  # raises JobLost or ShuttingDown
            if poll is not None and poll.done():
                return poll.result()
    finally:
        if poll is not None:
            poll.cancel()


async def receive_callback(request: Request) -> Response:
    services = services_of(request)
    token = request.path_params["token"]
    outcome = "internal_error"
    try:
        body = await read_body(request, services.settings.max_body_size)
        if services.signing_key is not None:
            verify_signature(services.signing_key, request.headers, body)
        job = parse_job(body)
        if not is_terminal(job):
            outcome = "not_final"
            return JSONAnswer({"status": "ignored", "detail": "the job is not finished"})
        delivery = await _deliver(services, token, job)
        outcome = delivery.value
        if delivery is Delivery.MISMATCH:
            raise JobMismatch(f"job {job['id']} is not the job of this callback token")
        if delivery in (Delivery.DUPLICATE, Delivery.UNKNOWN):
            logger.debug("dropped the result of job %s: %s token", job["id"], delivery.value)
            raise UnknownCallback()
        return JSONAnswer({"status": delivery.value})
    except ProxyError as exc:
        if not isinstance(exc, UnknownCallback):
            outcome = exc.error
        raise
    finally:
        services.metrics.callbacks.labels(outcome).inc()


async def _deliver(services: Services, token: str, job: Job) -> Delivery:
    if services.bus is not None and services.bus.is_foreign(token):
        return await services.bus.forward(token, job)
    delivery = await services.waiters.deliver(token, job)
    if delivery is Delivery.MISMATCH:
        return delivery
    if services.results.tracks(token):
        stored = await services.results.put_result(token, job)
        if stored and delivery is not Delivery.OK:
            return Delivery.STORED
    return delivery


async def healthz(request: Request) -> Response:
    return JSONAnswer({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    if not await services.upstream.reachable(READY_PROBE_TIMEOUT):
        raise NotReady(f"the job server at {services.upstream.base_url} is unreachable")
    if services.bus is not None and not (
        services.bus.subscribed.is_set() and await services.bus.ping()
    ):
        raise NotReady("Redis is unreachable")
    ready: dict[str, Any] = {"status": "ready", "pending": len(services.waiters)}
    if services.bus is not None:
        ready["replicas"] = services.bus.live_replicas()
    return JSONAnswer(ready)


async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONAnswer(OPENAPI)


async def proxy_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return JSONAnswer(exc.body(), exc.status_code, headers=exc.headers)


async def http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body: dict[str, Any] = {"error": _http_error_word(exc.status_code), "detail": exc.detail}
    return JSONAnswer(body, exc.status_code, headers=exc.headers)


async def unexpected_error_response(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": "internal_error", "detail": "the proxy failed unexpectedly; see its log"}
    return JSONAnswer(body, 500)


def _http_error_word(status_code: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status_code, "http_error")
