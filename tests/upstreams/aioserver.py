"""A second job server on ``aiohttp.web``, written from DESIGN.md's protocol alone.

It shares no code with ``jobserver/``: it is another reading of the same protocol, so
that the proxy is tested against a job server it was not grown next to; its reading of
the messages and its jobs is ``tests.upstreams.aioprotocol``. Its options are ways real
job servers differ (callbacks before the ``/start`` answer, foreign or late or lost
callbacks, a flaky ``/status``, gates that honour disconnects); all are off by default.

    async with run_aioserver(AioServerConfig(early_callbacks=True)) as server:
        ...  # server.url, server.jobs_started, await server.idle()

It speaks one of two dialects, ``AioServerConfig.dialect``; the options mean the same in
both, with a start, a callback and a status read in the dialect's words:

- ``"work-sample"``: ``POST /start {"account", "wait", "callback"}`` answered
  ``{"state": "running", "id"}`` (or the ended job, with ``wait``); callbacks and
  ``GET /status/{id}`` of ``{"id", "state", "startedAt", "proof"}``; errors
  ``{"error", "detail"}``.
- ``"predictions"``, shaped like Replicate's: ``POST /v1/predictions {"input", "webhook",
  "webhook_events_filter"}`` with ``Authorization: Bearer <token>`` (the token is the
  account: one gate per token), answered 201 with the prediction ``"starting"``; it is
  ``"processing"`` from then until it ends ``"succeeded"`` (``"output": {"proof"}``),
  ``"failed"`` (an ``"error"``) or ``"canceled"``, when the whole prediction is POSTed to
  its webhook (only the ``completed`` event is sent: a filter without it means no
  webhook). ``GET /v1/predictions/{id}`` reads it, ``POST /v1/predictions/{id}/cancel``
  cancels it, neither with a token. Errors are ``{"detail"}``: 401 without a token, 422
  for a bad body, 404 for an unknown id. The proof is the work sample's, over the token
  and ``created_at``.

Counters, read from the yielded :class:`AioServer`: ``jobs_started``, ``status_polls``,
``callbacks_sent`` (POSTs answered below 500, early, foreign and duplicate ones
included), ``early_callbacks_sent``, ``foreign_callbacks_sent``, ``callbacks_dropped``,
``callbacks_failed`` (retries spent), ``starts_abandoned`` (a start cancelled before its
job was created), ``starts_orphaned`` (a job created for a client already gone),
``start_queue_peak``; and ``callbacks_owed``, ``callbacks_queued``,
``starts_in_progress``. ``await server.until(predicate)`` waits for any of them. A
prediction is a job, a webhook a callback, a ``GET /v1/predictions/{id}`` a status poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, fields
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from tests.upstreams.aioprotocol import (
    DIALECT,
    Job,
    JobState,
    StartRequest,
    StatusFault,
    UnknownJob,
    json_errors,
    parse_prediction,
    parse_start,
    sign,
    utc_now,
)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
WAIT_MARGIN = 60.0  # a wait:true /start holds at most the job's duration plus this
CALLBACK_TIMEOUT = 10.0
CALLBACK_CONNECTIONS = 64
CALLBACK_BACKOFF = 0.05  # before the first retry; doubles with each retry
SHUTDOWN_GRACE = 0.25  # for a /start still held when the server stops; then it is cancelled
UNTIL_TIMEOUT = 10.0
DIALECTS = ("work-sample", "predictions")


@dataclass(frozen=True)
class AioServerConfig:
    """How this job server behaves; the defaults are a plain, well-behaved server."""

    dialect: str = "work-sample"  # or "predictions"
    job_duration: float = 0.5
    gate_time: float = 0.0
    failure_rate: float = 0.0
    seed: int = 0
    early_callbacks: bool = False
    early_window: float = 1.0
    foreign_early_callback: bool = False
    out_of_order: bool = False
    senders: int = 2
    callback_drop_rate: float = 0.0
    callback_duplicate_rate: float = 0.0
    status_error_rate: float = 0.0
    honour_disconnects: bool = False
    callback_retries: int = 3
    secret: str = "aioserver-secret"

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            if option.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{option.name} must be within [0, 1], not {value!r}")
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{option.name} must not be negative, not {value!r}")
        if self.senders < 1:
            raise ValueError(f"senders must be at least 1, not {self.senders!r}")
        if self.dialect not in DIALECTS:
            expected = " or ".join(DIALECTS)
            raise ValueError(f"dialect must be {expected}, not {self.dialect!r}")


@dataclass(eq=False)
class AccountGate:
    """One /start of an account at a time, first come first served (asyncio.Lock is FIFO)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    present: int = 0  # /starts waiting at or holding the gate


class AioServer:
    """The job server's state and handlers; run it with :func:`run_aioserver`."""

    def __init__(self, config: AioServerConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.url = ""
        self.predictions = config.dialect == "predictions"
        self.jobs: dict[str, Job] = {}  # in the order they were created
        self.jobs_started = 0
        self.status_polls = 0
        self.callbacks_sent = 0
        self.early_callbacks_sent = 0
        self.foreign_callbacks_sent = 0
        self.callbacks_dropped = 0
        self.callbacks_failed = 0
        self.starts_abandoned = 0
        self.starts_orphaned = 0
        self.start_queue_peak = 0
        self._callbacks_owed = 0
        self._session = session
        self._gates: dict[str, AccountGate] = {}
        self._pool: list[Job] = []  # callbacks waiting for a sender (out_of_order)
        self._pool_filled = asyncio.Event()
        self._last_ended: Job | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # /start handlings: aiohttp's tasks, but one whose client left is nobody's unless
        # it is ours (aiohttp neither cancels nor awaits it at shutdown).
        self._handlings: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        # One generator per decision, so that one option's draws do not shift another's.
        self._ids = random.Random(f"{config.seed}/ids")
        self._failures = random.Random(f"{config.seed}/failures")
        self._callback_faults = random.Random(f"{config.seed}/callbacks")
        self._status_faults = random.Random(f"{config.seed}/status")
        self._picks = random.Random(f"{config.seed}/picks")

    @property
    def callbacks_owed(self) -> int:
        """Callbacks of started jobs not yet delivered, dropped or given up."""
        return self._callbacks_owed

    @property
    def starts_in_progress(self) -> int:
        """/start handlings under way (waiting at a gate or holding one)."""
        return len(self._handlings)

    @property
    def callbacks_queued(self) -> int:
        """Ended jobs' callbacks waiting in the pool for a sender (out_of_order)."""
        return len(self._pool)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app[DIALECT] = self.config.dialect
        if self.predictions:
            app.router.add_post("/v1/predictions", self._start)
            app.router.add_get("/v1/predictions/{id}", self._status)
            app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        else:
            app.router.add_post("/start", self._start)
            app.router.add_get("/status/{id}", self._status)
        return app

    async def until(self, predicate: Callable[[], bool], timeout: float = UNTIL_TIMEOUT) -> None:
        """Wait (at most ``timeout``) until ``predicate()`` holds; it is checked after
        each change of the counters."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def idle(self, timeout: float = UNTIL_TIMEOUT) -> None:
        """Wait (at most ``timeout``) until every callback owed has been delivered,
        dropped or given up."""
        await self.until(lambda: self._callbacks_owed == 0, timeout)

    def _note(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_senders(self) -> None:
        if self.config.out_of_order:
            for _ in range(self.config.senders):
                self._spawn(self._sender())

    async def close(self) -> None:
        """End what the stopped site left: /start handlings whose client had gone, job
        timers, callbacks under way."""
        for job in self.jobs.values():
            if job.timer is not None:
                job.timer.cancel()
        owned = [*self._handlings, *self._tasks]
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
        logger.info(
            "aioserver stopped: %d jobs started, %d callbacks sent, %d owed",
            self.jobs_started,
            self.callbacks_sent,
            self._callbacks_owed,
        )

    def _body(self, job: Job) -> dict[str, Any]:
        """The job in the dialect's words: a callback's body and a status answer."""
        return job.prediction(self.url) if self.predictions else job.body()

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            detail = "Not found." if self.predictions else f"no job {job_id}"
            raise UnknownJob("unknown_job", detail)
        return job

    async def _start(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.predictions:
            start = parse_prediction(raw, request.headers.get(hdrs.AUTHORIZATION, ""))
        else:
            start = parse_start(raw)
        handling = asyncio.current_task()
        assert handling is not None
        self._handlings.add(handling)
        gate = self._gates.setdefault(start.account, AccountGate())
        gate.present += 1
        self.start_queue_peak = max(self.start_queue_peak, gate.present)
        self._note()
        job: Job | None = None
        try:
            async with gate.lock:
                if self.config.gate_time:
                    await asyncio.sleep(self.config.gate_time)
                if self.config.foreign_early_callback and start.callback and not start.wait:
                    # Sent before the start's own job exists, so it surely arrives first.
                    await self._call_back_foreign(start.callback)
                transport = request.transport
                job = self._create(start, orphaned=transport is None or transport.is_closing())
                return await self._answer(start, job)
        except asyncio.CancelledError:
            # Only with honour_disconnects (or at shutdown) is a handler cancelled.
            if job is None:
                self.starts_abandoned += 1
                self._note()
            raise
        finally:
            gate.present -= 1
            if gate.present == 0:
                del self._gates[start.account]
            self._handlings.discard(handling)

    def _create(self, start: StartRequest, *, orphaned: bool) -> Job:
        # A wait:true start is answered with the job itself: its callback is not called.
        job = self._new_job(start.account, None if start.wait else start.callback)
        job.input = start.input
        job.timer = asyncio.get_running_loop().call_later(self.config.job_duration, self._end, job)
        self.jobs_started += 1
        self.starts_orphaned += orphaned
        self._callbacks_owed += job.callback is not None
        self._note()
        return job

    def _new_job(self, account: str, callback: URL | None) -> Job:
        while True:
            job_id = f"{self._ids.getrandbits(64):x}"
            if len(job_id) >= 13 and job_id not in self.jobs:
                break
        started_at = utc_now()
        proof = sign(self.config.secret, job_id, account, started_at)
        fails = self._failures.random() < self.config.failure_rate
        job = Job(job_id, account, started_at, proof, fails, callback)
        self.jobs[job_id] = job
        return job

    async def _answer(self, start: StartRequest, job: Job) -> web.Response:
        if start.wait:
            async with asyncio.timeout(self.config.job_duration + WAIT_MARGIN):
                await job.ended.wait()
            return web.json_response(self._body(job))
        # The answer says what the job was when it was created, even if it is sent after
        # the job's early callback.
        if self.predictions:
            answer = web.json_response(self._body(job), status=201)
            job.processing_at = utc_now()
        else:
            answer = web.json_response({"state": JobState.RUNNING.value, "id": job.id})
        if job.callback is not None and self.config.early_callbacks:
            await self._call_back_early(job)
        return answer

    def _end(self, job: Job, state: JobState | None = None) -> None:
        if state is None:
            state = JobState.FAILED if job.fails else JobState.COMPLETED
        job.state = state
        job.ended_at = utc_now()
        job.timer = None
        job.ended.set()
        self._last_ended = job
        if job.callback is not None and not job.callback_held:
            self._schedule_callback(job)
        self._note()

    def _copies(self) -> int:
        """How many times an ended job's callback is sent: 0 (dropped), 1 or 2."""
        if self._callback_faults.random() < self.config.callback_drop_rate:
            self.callbacks_dropped += 1
            self._callbacks_owed -= 1
            self._note()
            return 0
        copies = 2 if self._callback_faults.random() < self.config.callback_duplicate_rate else 1
        self._callbacks_owed += copies - 1
        return copies

    def _schedule_callback(self, job: Job) -> None:
        copies = self._copies()
        if not self.config.out_of_order:
            self._spawn(self._deliver(job, copies))
            return
        self._pool.extend([job] * copies)
        if self._pool:
            self._pool_filled.set()

    async def _sender(self) -> None:
        while True:
            await self._pool_filled.wait()
            job = self._pool.pop(self._picks.randrange(len(self._pool)))
            if not self._pool:
                self._pool_filled.clear()
            self._note()
            await self._deliver(job, 1)

    async def _deliver(self, job: Job, copies: int) -> None:
        """Send the job's callback ``copies`` times, one after the other, as owed."""
        assert job.callback is not None
        for _ in range(copies):
            try:
                if await self._post(job.callback, self._body(job)) and job.callback_held:
                    self.early_callbacks_sent += 1
            finally:
                self._callbacks_owed -= 1
                self._note()

    async def _call_back_early(self, job: Job) -> None:
        """Inside the gate, wait up to ``early_window`` for the job; if it ends, its
        callback is sent and answered before /start answers."""
        job.callback_held = True
        ended_in_window = False
        try:
            if self.config.early_window > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.early_window):
                        await job.ended.wait()
            ended_in_window = job.ended.is_set()
            if ended_in_window:
                await self._deliver(job, self._copies())
        finally:
            job.callback_held = False
            if job.ended.is_set() and not ended_in_window:
                # The wait was cancelled after the job ended: the callback goes out as usual.
                self._schedule_callback(job)

    async def _call_back_foreign(self, callback: URL) -> None:
        """POST another ended job's body to this start's callback, and await the answer."""
        other = self._last_ended
        if other is None:
            other = self._new_job("another-account", None)
            other.state = JobState.COMPLETED
            other.processing_at = other.ended_at = other.started_at
            other.ended.set()
            self._last_ended = other
        if await self._post(callback, self._body(other)):
            self.foreign_callbacks_sent += 1
            self._note()

    async def _post(self, url: URL, body: dict[str, Any]) -> bool:
        """POST ``body`` to ``url``; retried on connection errors and 5xx."""
        reason = ""
        for attempt in range(self.config.callback_retries + 1):
            if attempt:
                await asyncio.sleep(CALLBACK_BACKOFF * 2 ** (attempt - 1))
            try:
                async with self._session.post(url, json=body) as response:
                    await response.read()
                if response.status < 500:
                    self.callbacks_sent += 1
                    self._note()
                    return True
                reason = f"answered {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = repr(exc)
        logger.warning("callback of job %s to %s given up: %s", body["id"], url, reason)
        self.callbacks_failed += 1
        self._note()
        return False

    async def _status(self, request: web.Request) -> web.Response:
        self.status_polls += 1
        self._note()
        if self._status_faults.random() < self.config.status_error_rate:
            raise StatusFault("status_fault", "the status could not be read; try again")
        return web.json_response(self._body(self._job(request.match_info["id"])))

    async def _cancel(self, request: web.Request) -> web.Response:
        """A prediction still running ends canceled, and is called back so; an ended one
        is answered as it is."""
        job = self._job(request.match_info["id"])
        if job.state is JobState.RUNNING:
            if job.timer is not None:
                job.timer.cancel()
            self._end(job, JobState.CANCELED)
        return web.json_response(self._body(job))


@contextlib.asynccontextmanager
async def run_aioserver(config: AioServerConfig | None = None) -> AsyncIterator[AioServer]:
    """Serve an :class:`AioServer` on 127.0.0.1 and a port the kernel picked, for the block."""
    config = config or AioServerConfig()
    connector = aiohttp.TCPConnector(limit=CALLBACK_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        server = AioServer(config, session)
        # aiohttp cancels a handler whose client left only when asked to.
        runner = web.AppRunner(
            server.app(),
            handler_cancellation=config.honour_disconnects,
            shutdown_timeout=SHUTDOWN_GRACE,
            access_log=None,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, LOOPBACK, 0).start()
            host, port = runner.addresses[0][:2]
            server.url = f"http://{host}:{port}"
            server.start_senders()
            logger.info("aioserver listening on %s", server.url)
            yield server
        finally:
            # 1. Stop accepting; a /start still held gets SHUTDOWN_GRACE, then is cancelled.
            await runner.cleanup()
            # 2. Orphaned handlings, job timers and callbacks end; the session closes last.
            await server.close()
