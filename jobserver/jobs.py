"""Jobs: the store behind ``/status``, the per-account gate and the runner.

A job is created by ``/start`` inside its account's gate, runs for a random duration
(the ``job_duration`` distribution) in a task the :class:`JobRunner` owns, then
completes with a proof or fails with an error (or, in the predictions dialect, is
canceled before it ends). Finished jobs stay in the :class:`JobStore` for
``status_ttl`` seconds. How a job is shown is its dialect's: :meth:`Job.to_json` is the
work sample's, :class:`jobserver.predictions.Prediction` the predictions'.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from typing import Any, Literal

import httpx

from jobserver.config import Settings
from jobserver.errors import QueueFull
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.proofs import make_proof

# A job id is the hex of a random number below 2**64, without leading zeros: 13 to 16
# lowercase digits, as the real server's. How many digits, and how often, follows the
# original's sample of 50 ids (27 had 16 digits, 14 had 15, 8 had 14, 1 had 13): about
# half are shorter than 16, where a uniform 64-bit number would give 1 in 16.
JOB_ID_DIGITS = (16, 15, 14, 13)
JOB_ID_DIGIT_WEIGHTS = (27, 14, 8, 1)


def draw_job_id(streams: RandomStreams) -> str:
    """A new job id: seeded and reproducible with ``seed``, else from the OS's secure source."""
    rng = streams.id_stream("job-ids")
    digits = rng.choices(JOB_ID_DIGITS, weights=JOB_ID_DIGIT_WEIGHTS)[0]
    # From the smallest number of that many digits: never a leading zero, never fewer.
    return f"{rng.randrange(16 ** (digits - 1), 16**digits):x}"


async def cancel_all(tasks: set[asyncio.Task[None]], timeout: float) -> int:
    """Cancel ``tasks`` and wait (at most ``timeout``) for them to end; return how many."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    return len(pending)


class JobState(str, Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    #: Ended before it finished, on request (the predictions dialect's cancel).
    CANCELED = "canceled"


#: What a job's callback may be sent on: the job starts running, or it ends.
CallbackEvent = Literal["start", "completed"]


def utc_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: ``2026-11-25T13:09:06.123Z``."""
    # isoformat truncates to milliseconds, as the format wants, at half strftime's cost.
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@dataclass(eq=False, slots=True)
class Job:
    """One job. A job waiting for a ``max_running`` slot is running without ``startedAt``."""

    id: str
    account: str
    callback: httpx.URL | None  # parsed once, when /start checked it
    state: JobState = JobState.RUNNING
    started_at: str | None = None
    completed_at: str | None = None  # when it ended: completed, failed or canceled
    proof: str | None = None
    error: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # Set while its /start waits to call it back before answering (callback_before_answer):
    # the callback is that handler's to send, not the runner's.
    callback_inline: bool = False

    def calls_back_on(self, event: CallbackEvent) -> bool:
        """Whether the job's callback is sent on ``event``: the work sample's, when it ends."""
        return event == "completed"

    def to_json(self) -> dict[str, Any]:
        """The job as ``/status``, ``wait: true`` and callbacks show it."""
        body = {"id": self.id, "state": self.state.value}
        if self.started_at is not None:
            body["startedAt"] = self.started_at
        if self.proof is not None:
            body["proof"] = self.proof
        if self.error is not None:
            body["error"] = self.error
        return body


class JobStore:
    """Jobs by id; finished ones are evicted ``ttl`` seconds after they end.

    Every job gets the same TTL, so finish order is expiry order: a deque of
    ``(expires_at, id)`` is evicted from its left end on each access, in amortised O(1).
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._expiry: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def add(self, job: Job) -> None:
        self._evict_expired()
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        self._evict_expired()
        return self._jobs.get(job_id)

    def finished(self, job: Job) -> None:
        """Start the TTL of a job that has just ended."""
        self._expiry.append((self._clock() + self._ttl, job.id))
        self._evict_expired()

    def _evict_expired(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = self._expiry.popleft()
            self._jobs.pop(job_id, None)


@dataclass(slots=True)
class _GateSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class AccountGate:
    """One request at a time per account, first come first served.

    ``asyncio.Lock`` wakes its waiters in FIFO order. A slot lives only while someone
    holds or waits for it, so idle accounts cost no memory.

    ``travel`` is the simulated network's one-way latency (``jobserver.network``): a
    request reaches the gate that long after it was sent. ``peak`` is the most requests
    of one account ever on their way to its gate, waiting at it or holding it at once:
    it tells whether a client lets an account's requests overlap or sends them one after
    another.
    """

    def __init__(self, travel: float = 0.0) -> None:
        self._slots: dict[str, _GateSlot] = {}
        self._travel = travel
        self.peak = 0

    def __len__(self) -> int:
        return len(self._slots)

    @contextlib.asynccontextmanager
    async def hold(self, account: str) -> AsyncIterator[None]:
        """Wait for the account's turn and keep it until the block ends (the caller's deadline)."""
        slot = self._slots.get(account)
        if slot is None:
            slot = self._slots[account] = _GateSlot()
        slot.users += 1
        self.peak = max(self.peak, slot.users)
        try:
            if self._travel > 0:
                await asyncio.sleep(self._travel)
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[account]


#: Builds a job of a dialect from its new id, its account and its callback.
JobFactory = Callable[[str, str, httpx.URL | None], Job]


def _no_one(job: Job) -> None:
    pass


class JobRunner:
    """Creates jobs and runs each in an owned task, within the ``max_running`` bound.

    ``on_started`` hears of each job that starts running, ``on_finished`` of each that
    ends; ``draw_id`` gives the ids (the dialect's shape).
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        faults: FaultInjector,
        streams: RandomStreams,
        on_finished: Callable[[Job], None],
        *,
        on_started: Callable[[Job], None] = _no_one,
        draw_id: Callable[[RandomStreams], str] = draw_job_id,
    ) -> None:
        self._secret = settings.secret.encode()
        self._duration_mean = settings.job_duration
        self._duration_spread = settings.job_duration_spread
        self._max_running = settings.max_running
        self._queue_size = settings.queue_size
        self._slots = asyncio.Semaphore(settings.max_running) if settings.max_running else None
        self._store = store
        self._faults = faults
        self._streams = streams
        self._on_finished = on_finished
        self._on_started = on_started
        self._draw_id = draw_id
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by job id
        self._running = 0
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.canceled = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def admitted(self) -> int:
        """Jobs queued or running."""
        return len(self._tasks)

    def submit(self, account: str, callback: httpx.URL | None, make: JobFactory = Job) -> Job:
        """Create a job (``make`` builds it) and start it; raise :class:`QueueFull` when
        there is no room."""
        if self._max_running and len(self._tasks) >= self._max_running + self._queue_size:
            retry_after = max(1, math.ceil(self._duration_mean))
            raise QueueFull(self._running, len(self._tasks) - self._running, retry_after)
        job = make(self._new_id(), account, callback)
        self._store.add(job)
        self.started += 1
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(partial(self._forget, job.id))
        return job

    def cancel(self, job: Job) -> bool:
        """End a job that has not ended yet as canceled, at once: its task is stopped, and
        its end is reported as any job's. False for a job that had already ended."""
        if job.finished.is_set():
            return False
        # A job ends without awaiting anything once its run is over, so a job that has not
        # ended is one whose task has not finished running it: cancelling it stops the run.
        # Its place is free at once, not when the task next runs.
        task = self._tasks.pop(job.id, None)
        if task is not None:
            task.cancel()
        self.canceled += 1
        self._end(job, JobState.CANCELED)
        return True

    async def close(self, timeout: float) -> int:
        """Cancel every unfinished job and wait (at most ``timeout``) for them; return the count."""
        return await cancel_all(set(self._tasks.values()), timeout)

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]

    def _new_id(self) -> str:
        while True:
            job_id = self._draw_id(self._streams)
            if job_id not in self._store:
                return job_id

    def draw_duration(self) -> float:
        """A job duration from the configured distribution, never negative."""
        rng = self._streams.stream("durations")
        if self._duration_spread == 0:
            return self._duration_mean
        return max(0.0, rng.gauss(self._duration_mean, self._duration_spread))

    async def _run(self, job: Job) -> None:
        if self._slots is None:
            await self._execute(job)
        else:
            async with self._slots:
                await self._execute(job)

    async def _execute(self, job: Job) -> None:
        self._running += 1
        try:
            job.started_at = utc_timestamp(datetime.now(UTC))
            self._on_started(job)
            await asyncio.sleep(self.draw_duration())
        finally:
            self._running -= 1
        error = self._faults.job_error()
        if error is None:
            job.proof = make_proof(self._secret, job.id, job.account, job.started_at)
            self.completed += 1
            self._end(job, JobState.COMPLETED)
        else:
            job.error = error
            self.failed += 1
            self._end(job, JobState.FAILED)

    def _end(self, job: Job, state: JobState) -> None:
        job.state = state
        job.completed_at = utc_timestamp(datetime.now(UTC))
        self._store.finished(job)
        job.finished.set()
        self._on_finished(job)
