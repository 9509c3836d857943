"""What starting a job and asking for it are in every dialect, and what a dialect brings.

A start (``POST /start``, ``POST /v1/predictions``) is handled whole in its account's
gate, one at a time per account, under ``request_timeout``: the way to the gate and the
wait at it (given up at once when the client leaves, with ``honour_disconnects``), the
start's faults (``start_latency``, the ``start_error_*`` refusals), the job, then the
dialect's answer, which may wait for the job (``wait: true``, ``Prefer: wait``, the
``callback_before_answer`` window) while the gate stays held. :func:`start_in_gate`
does all of it; a dialect gives it the account, the callback, how its jobs are made and
how it answers. A status request finds its job through :func:`look_up_job`, which
counts it and injects the ``status_error_rate`` fault.

A :class:`Dialect` is what a protocol brings: its routes, the shape of its job ids, the
path its starts come to, and its part of the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from jobserver.callbacks import CallbackSender
from jobserver.config import Settings
from jobserver.disconnects import abandon_on_disconnect
from jobserver.errors import ClientGone, RequestTimeout, ShuttingDown, StartRefused, StatusFailed
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.jobs import AccountGate, Job, JobFactory, JobRunner, JobStore

logger = logging.getLogger(__name__)

#: A dialect's answer to a start once its job exists (it may wait for the job).
Answer = Callable[[Job], Awaitable[dict[str, Any]]]


class JSONAnswer(JSONResponse):
    """Starlette's JSON response, labelled as the real server labelled its answers.

    Starlette adds a charset to text/* types only; the body is UTF-8 either way.
    """

    media_type = "application/json; charset=utf-8"


@dataclass(slots=True)
class RequestCounts:
    """Counts of requests that ``/healthz`` shows, besides those of jobs and callbacks."""

    #: Status requests (GET /status, GET /v1/predictions/{id}) answered, whatever the answer.
    status_polls: int = 0
    #: Starts whose client left before their job was created (honour_disconnects).
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


@dataclass(frozen=True, slots=True)
class Dialect:
    """A protocol the job server speaks."""

    #: Its routes, besides the ones every dialect has (/verify, /healthz, /openapi.json).
    routes: Sequence[BaseRoute]
    #: The path of its starts: their network delay is spent on the way to the account's
    #: gate, where it is counted (``jobserver.network``).
    start_path: str
    #: A new job id of its shape.
    draw_id: Callable[[RandomStreams], str]
    #: Its paths and schemas of the OpenAPI document, for these settings.
    openapi: Callable[[Settings], tuple[dict[str, Any], dict[str, Any]]]


async def start_in_gate(
    request: Request[AppState],
    account: str,
    callback: httpx.URL | None,
    answer: Answer,
    make: JobFactory = Job,
) -> dict[str, Any]:
    """Handle a start of ``account`` in its gate: its job (``make`` builds it), then
    ``answer``; 504 past ``request_timeout``."""
    state = request.state
    settings = state["settings"]
    deadline = asyncio.timeout(settings.request_timeout)
    try:
        async with deadline:
            if settings.honour_disconnects:
                return await _start_unless_abandoned(
                    request, account, callback=callback, answer=answer, make=make
                )
            async with state["gate"].hold(account):
                return await answer(await _create_job(state, account, callback, make))
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RequestTimeout(
            f"the request did not end within request_timeout ({settings.request_timeout:g} s)"
        ) from None


async def _start_unless_abandoned(
    request: Request[AppState],
    account: str,
    *,
    callback: httpx.URL | None,
    answer: Answer,
    make: JobFactory,
) -> dict[str, Any]:
    """As in the account's gate, but a client that leaves before its job is created (on
    the way to the gate, at it, or in it) gives up its place at once and starts nothing."""
    state = request.state
    try:
        async with contextlib.AsyncExitStack() as held:
            async with abandon_on_disconnect(request.receive):
                await held.enter_async_context(state["gate"].hold(account))
                job = await _create_job(state, account, callback, make)
            return await answer(job)
    except ClientGone:
        state["counts"].starts_abandoned += 1
        logger.debug("a start of %r abandoned: its client left", account)
        raise


async def _create_job(
    state: AppState, account: str, callback: httpx.URL | None, make: JobFactory
) -> Job:
    """What a start does in the account's gate before its job exists, then the job."""
    if state["draining"].is_set():
        raise ShuttingDown
    faults = state["faults"]
    if faults.start_latency > 0:
        await asyncio.sleep(faults.start_latency)
    refusal = faults.start_refusal()
    if refusal is not None:
        raise StartRefused(*refusal)
    return state["runner"].submit(account, callback, make)


async def call_back_before_answer(job: Job, window: float, callbacks: CallbackSender) -> None:
    """Hold the answer up to ``window`` s for the job: one done by then is called back
    (the callback sent and its answer awaited) before the start answers, as a job server
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


async def wait_for_job(job: Job, draining: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until the job ends, the server starts to stop, or ``timeout`` seconds pass.

    Without a ``timeout``, the caller's request_timeout bounds this wait.
    """
    finished = asyncio.ensure_future(job.finished.wait())
    stopping = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait(
            (finished, stopping), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        finished.cancel()
        stopping.cancel()


def look_up_job(state: AppState, job_id: str) -> Job | None:
    """The job a status request asks for (None: unknown, or evicted): the request is
    counted, and a share of them fails with the ``status_error_rate`` fault (500)."""
    state["counts"].status_polls += 1
    if state["faults"].status_error():
        raise StatusFailed("injected fault: status_error_rate")
    return state["store"].get(job_id)
