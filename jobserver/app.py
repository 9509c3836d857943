"""The job server's Starlette app: routes, error mapping and lifespan.

Every error is answered as JSON ``{"error": "<word>", "detail": "<sentence>"}`` by the
one ``EXCEPTION_HANDLERS`` table below; the errors and their statuses are drawn in
:mod:`jobserver.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypedDict

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from jobserver.bodies import StartRequest, parse_start_request, parse_verify_request, read_body
from jobserver.callbacks import CallbackSender
from jobserver.config import Settings
from jobserver.connections import ConnectionPool
from jobserver.disconnects import abandon_on_disconnect
from jobserver.errors import (
    AccountUnknown,
    ApiError,
    ClientGone,
    InvalidProof,
    JobNotFound,
    RequestTimeout,
    ShuttingDown,
    StartRefused,
    StatusFailed,
)
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.jobs import AccountGate, Job, JobRunner, JobStore
from jobserver.network import NetworkLatency
from jobserver.openapi import openapi_document
from jobserver.proofs import CompletedJob, InvalidBundle, check_bundle, decode_bundle

logger = logging.getLogger(__name__)


class JSONAnswer(JSONResponse):
    """Starlette's JSON response, labelled as the real server labelled its answers.

    Starlette adds a charset to text/* types only; the body is UTF-8 either way.
    """

    media_type = "application/json; charset=utf-8"


@dataclass(slots=True)
class RequestCounts:
    """Counts of requests that ``/healthz`` shows, besides those of jobs and callbacks."""

    #: GET /status requests answered, whatever the answer.
    status_polls: int = 0
    #: /start requests whose client left before their job was created (honour_disconnects).
    starts_abandoned: int = 0


class AppState(TypedDict):
    """What the lifespan yields; handlers reach it as ``request.state``."""

    settings: Settings
    counts: RequestCounts
    store: JobStore
    gate: AccountGate
    runner: JobRunner
    faults: FaultInjector
    callbacks: CallbackSender
    openapi: dict[str, Any]
    draining: asyncio.Event


def begin_drain(state: Mapping[str, Any]) -> None:
    """Tell held /start requests that the server stops: they answer 503 at once.

    The server calls this with the lifespan state when shutdown begins, so that
    ``wait: true`` requests end cleanly instead of being cancelled at the drain timeout.
    """
    draining = state.get("draining")
    if isinstance(draining, asyncio.Event):
        draining.set()


def _error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONAnswer:
    return JSONAnswer({"error": error, "detail": detail}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"retry-after": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONAnswer(exc.body(), status_code=exc.status, headers=headers)


async def _invalid_bundle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidBundle)
    return _error_response(422, "bad_bundle", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    word = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return _error_response(exc.status_code, word, exc.detail, exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error_response(500, "internal_error", "the job server failed to handle the request")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    InvalidBundle: _invalid_bundle,
    HTTPException: _http_error,
    Exception: _server_error,
}


async def start(request: Request[AppState]) -> Response:
    """``POST /start``: one request at a time per account, for the whole handling."""
    state = request.state
    settings = state["settings"]
    start_request = parse_start_request(await read_body(request, settings.max_body_size))
    deadline = asyncio.timeout(settings.request_timeout)
    try:
        async with deadline:
            if settings.honour_disconnects:
                body = await _start_unless_abandoned(state, start_request, request.receive)
            else:
                async with state["gate"].hold(start_request.account):
                    body = await _start_in_gate(state, start_request)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RequestTimeout(
            f"the request did not end within request_timeout ({settings.request_timeout:g} s)"
        ) from None
    return JSONAnswer(body)


async def _start_in_gate(state: AppState, start_request: StartRequest) -> dict[str, str]:
    job = await _create_job(state, start_request)
    return await _answer(state, start_request, job)


async def _start_unless_abandoned(
    state: AppState, start_request: StartRequest, receive: Receive
) -> dict[str, str]:
    """As :func:`_start_in_gate` in the account's gate, but a client that leaves before its
    job is created (on the way to the gate, at it, or in it) gives up its place at once
    and starts nothing."""
    try:
        async with contextlib.AsyncExitStack() as held:
            async with abandon_on_disconnect(receive):
                await held.enter_async_context(state["gate"].hold(start_request.account))
                job = await _create_job(state, start_request)
            return await _answer(state, start_request, job)
    except ClientGone:
        state["counts"].starts_abandoned += 1
        logger.debug("a /start of %r abandoned: its client left", start_request.account)
        raise


async def _create_job(state: AppState, start_request: StartRequest) -> Job:
    """What /start does in the account's gate before its job exists, then the job."""
    if state["draining"].is_set():
        raise ShuttingDown
    faults = state["faults"]
    if faults.start_latency > 0:
        await asyncio.sleep(faults.start_latency)
    refusal = faults.start_refusal()
    if refusal is not None:
        raise StartRefused(*refusal)
    return state["runner"].submit(start_request.account, start_request.callback)


async def _answer(state: AppState, start_request: StartRequest, job: Job) -> dict[str, str]:
    """The answer to /start once its job exists: at once, or when the job ends."""
    if not start_request.wait:
        window = state["settings"].callback_before_answer
        if window > 0:
            await _call_back_before_answer(job, window, state["callbacks"])
        return {"state": "running", "id": job.id}
    await _wait_until_finished(job, state["draining"])
    return job.to_json()


async def _call_back_before_answer(job: Job, window: float, callbacks: CallbackSender) -> None:
    """Hold the answer up to ``window`` s for the job: one done by then is called back
    (the callback sent and its answer awaited) before /start answers, as a job server
    that finishes quick jobs inline does. A job still running is called back when it ends.
    """
    job.callback_inline = True
    delivery = None
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                await job.finished.wait()
    finally:
        # Decided here, with nothing awaited since the job's state was read: the job ended
        # and is this handler's to call back (sent even when this handler is cancelled:
        # the sender owns the delivery), or it is the runner's when it ends.
        job.callback_inline = False
        if job.finished.is_set():
            delivery = callbacks.send_now(job)
    if delivery is not None:
        # Waited, not shielded: a cancelled request leaves the delivery going, to the sender.
        await asyncio.wait((delivery,))


async def _wait_until_finished(job: Job, draining: asyncio.Event) -> None:
    """Wait for the job, or raise ShuttingDown when the server starts to stop first.

    No deadline of its own: the caller's request_timeout bounds this wait.
    """
    finished = asyncio.ensure_future(job.finished.wait())
    stopping = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait((finished, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        stopping.cancel()
    if not job.finished.is_set():
        raise ShuttingDown


async def status(request: Request[AppState]) -> Response:
    """``GET /status/{job_id}``: the job as it stands."""
    state = request.state
    state["counts"].status_polls += 1
    if state["faults"].status_error():
        raise StatusFailed("injected fault: status_error_rate")
    job_id = request.path_params["job_id"]
    job = state["store"].get(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}: unknown, or finished longer than status_ttl ago")
    return JSONAnswer(job.to_json())


def account_of(jobs: Sequence[CompletedJob], store: JobStore) -> str:
    """The one account that this server's job table records for the bundle's jobs."""
    accounts = {job.account for entry in jobs if (job := store.get(entry.id)) is not None}
    if len(accounts) == 1:
        return accounts.pop()
    if not accounts:
        raise AccountUnknown(
            "account is required: none of the bundle's jobs is known to this job server "
            "(run elsewhere, or finished longer than status_ttl ago)"
        )
    raise AccountUnknown(
        f"account is required: the bundle's jobs belong to {len(accounts)} accounts"
    )


async def verify(request: Request[AppState]) -> Response:
    """``POST /verify``: check a jobclient proof bundle against this server's secret."""
    state = request.state
    settings = state["settings"]
    text, account = parse_verify_request(await read_body(request, settings.max_proof_size))
    jobs = decode_bundle(text)
    if account is None:
        account = account_of(jobs, state["store"])
    check = check_bundle(settings.secret.encode(), jobs, account)
    if not check.valid:
        raise InvalidProof(check)
    return JSONAnswer({"valid": True, "account": check.account, "jobs": check.jobs})


async def healthz(request: Request[AppState]) -> Response:
    """``GET /healthz``: up, with counts a benchmark can watch."""
    runner = request.state["runner"]
    return JSONAnswer(
        {
            "status": "ok",
            "jobs_started": runner.started,
            "jobs_running": runner.running,
            "jobs_queued": runner.admitted - runner.running,
            "callbacks_pending": request.state["callbacks"].pending,
            "start_queue_peak": request.state["gate"].peak,
            "status_polls": request.state["counts"].status_polls,
            "starts_abandoned": request.state["counts"].starts_abandoned,
        }
    )


async def openapi(request: Request[AppState]) -> Response:
    return JSONAnswer(request.state["openapi"])


@asynccontextmanager
async def callback_carrier(
    settings: Settings, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[ConnectionPool | httpx.AsyncClient]:
    """What carries the callbacks: the job server's own connections, or a client on
    ``transport`` when one is given."""
    if transport is None:
        async with ConnectionPool(settings.callback_connections) as pool:
            yield pool
    else:
        async with httpx.AsyncClient(
            transport=transport, timeout=settings.callback_timeout
        ) as client:
            yield client


def create_app(
    settings: Settings, callback_transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """The job server as an ASGI app; its lifespan owns every resource.

    ``callback_transport`` carries the callbacks instead of the job server's own
    connections (tests: ``httpx.ASGITransport`` to a proxy app in the same process).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        streams = RandomStreams(settings.seed)
        faults = FaultInjector(settings, streams)
        store = JobStore(settings.status_ttl)
        async with callback_carrier(settings, callback_transport) as carrier:
            callbacks = CallbackSender(carrier, settings, faults, streams)
            runner = JobRunner(settings, store, faults, streams, callbacks.job_finished)
            # What is alive now (modules, the app, these resources: ~50,000 objects) lives
            # as long as the server. Left to the collector, every full collection would walk
            # it again; with thousands of jobs in flight, collections were a quarter of the
            # server's CPU.
            gc.freeze()
            try:
                yield AppState(
                    settings=settings,
                    counts=RequestCounts(),
                    store=store,
                    gate=AccountGate(travel=settings.latency),
                    runner=runner,
                    faults=faults,
                    callbacks=callbacks,
                    openapi=openapi_document(settings),
                    draining=asyncio.Event(),
                )
            finally:
                gc.unfreeze()
                # Jobs first, since a finishing job schedules a callback; then deliveries;
                # the pool (or client) closes its connections when the block ends.
                jobs_cancelled = await runner.close(settings.shutdown_timeout)
                deliveries_cancelled = await callbacks.close(settings.shutdown_timeout)
                logger.info(
                    "stopped: %d jobs completed, %d failed, %d cancelled; callbacks: "
                    "%d delivered, %d rejected, %d abandoned, %d cancelled; faults: %s",
                    runner.completed,
                    runner.failed,
                    jobs_cancelled,
                    callbacks.delivered,
                    callbacks.rejected,
                    callbacks.abandoned,
                    deliveries_cancelled,
                    ", ".join(f"{name} {count}" for name, count in faults.injected.items()),
                )

    routes = [
        Route("/start", start, methods=["POST"]),
        Route("/status/{job_id}", status, methods=["GET"]),
        Route("/verify", verify, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(NetworkLatency, seconds=settings.latency, gated_paths=["/start"])],
    )
