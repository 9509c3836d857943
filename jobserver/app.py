"""The job server's Starlette app: routes, error mapping and lifespan.

The app speaks the dialect its settings name (``dialect``): the work sample's
(``POST /start``, ``GET /status/{id}``, its routes below) or the predictions one
(:mod:`jobserver.predictions`). Both start jobs through :mod:`jobserver.starts`; the
routes every dialect has (``/verify``, ``/healthz``, ``/openapi.json``) are here.

Every error is answered as JSON ``{"error": "<word>", "detail": "<sentence>"}`` (the
predictions dialect's own as ``{"detail": "<sentence>"}``) by the one
``EXCEPTION_HANDLERS`` table below; the errors, their statuses and their bodies are
drawn in :mod:`jobserver.errors`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.errors import error_body
from jobserver import openapi, predictions
from jobserver.bodies import StartRequest, parse_start_request, parse_verify_request, read_body
from jobserver.callbacks import CallbackSender
from jobserver.config import Settings
from jobserver.connections import ConnectionPool
from jobserver.errors import (
    AccountUnknown,
    ApiError,
    InvalidProof,
    JobNotFound,
    ShuttingDown,
)
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.jobs import AccountGate, Job, JobRunner, JobStore, draw_job_id
from jobserver.network import NetworkLatency
from jobserver.proofs import CompletedJob, InvalidBundle, check_bundle, decode_bundle
from jobserver.starts import (
    AppState,
    Dialect,
    JSONAnswer,
    RequestCounts,
    call_back_before_answer,
    look_up_job,
    start_in_gate,
    wait_for_job,
)

logger = logging.getLogger(__name__)


def begin_drain(state: Mapping[str, Any]) -> None:
    """Tell held starts that the server stops: they answer at once (``wait: true`` 503,
    ``Prefer: wait`` the prediction as it stands), and new ones are refused 503.

    The server calls this with the lifespan state when shutdown begins, so that held
    requests end cleanly instead of being cancelled at the drain timeout.
    """
    draining = state.get("draining")
    if isinstance(draining, asyncio.Event):
        draining.set()


def _error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONAnswer:
    return JSONAnswer(error_body(error, detail), status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONAnswer(exc.body(), status_code=exc.status_code, headers=exc.headers)


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
    start_request = parse_start_request(await read_body(request, state["settings"].max_body_size))
    answer = partial(_answer, state, start_request)
    return JSONAnswer(
        await start_in_gate(request, start_request.account, start_request.callback, answer)
    )


async def _answer(state: AppState, start_request: StartRequest, job: Job) -> dict[str, Any]:
    """The answer to /start once its job exists: at once, or when the job ends."""
    if not start_request.wait:
        window = state["settings"].callback_before_answer
        if window > 0:
            await call_back_before_answer(job, window, state["callbacks"])
        return {"state": "running", "id": job.id}
    await wait_for_job(job, state["draining"])
    if not job.finished.is_set():
        raise ShuttingDown
    return job.to_json()


async def status(request: Request[AppState]) -> Response:
    """``GET /status/{job_id}``: the job as it stands."""
    job_id = request.path_params["job_id"]
    job = look_up_job(request.state, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}: unknown, or finished longer than status_ttl ago")
    return JSONAnswer(job.to_json())


WORK_SAMPLE = Dialect(
    routes=(
        Route("/start", start, methods=["POST"]),
        Route("/status/{job_id}", status, methods=["GET"]),
    ),
    start_path="/start",
    draw_id=draw_job_id,
    openapi=openapi.work_sample_part,
)
DIALECTS: Mapping[str, Dialect] = {
    "work-sample": WORK_SAMPLE,
    "predictions": predictions.DIALECT,
}


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


async def openapi_json(request: Request[AppState]) -> Response:
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
    dialect = DIALECTS[settings.dialect]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        streams = RandomStreams(settings.seed)
        faults = FaultInjector(settings, streams)
        store = JobStore(settings.status_ttl)
        async with callback_carrier(settings, callback_transport) as carrier:
            callbacks = CallbackSender(carrier, settings, faults, streams)
            runner = JobRunner(
                settings,
                store,
                faults,
                streams,
                callbacks.job_finished,
                on_started=callbacks.job_started,
                draw_id=dialect.draw_id,
            )
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
                    openapi=openapi.document(settings, *dialect.openapi(settings)),
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
        *dialect.routes,
        Route("/verify", verify, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    latency = Middleware(NetworkLatency, seconds=settings.latency, gated_paths=[dialect.start_path])
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[latency],
    )
