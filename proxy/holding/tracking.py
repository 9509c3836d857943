"""Jobs a client may come back to: ``/jobs/{ref}``, their events, and who listens.

A held request that asks for more than a plain hold (``Prefer``, ``Accept:
text/event-stream``) gets its job *tracked*: an unguessable ``ref`` (128 random bits,
never the callback token: knowing a ref lets one read the job, not complete it) and a
log of events, each with an increasing id:

* ``accepted``: the job server accepted the job (data ``{"ref", "id", "state"}``);
* ``retrying``: a start is being retried (data ``{"ref", "attempt", "pause"}``);
* ``polling``: the callback is overdue and the job server is being asked;
* then exactly one final event: ``completed`` or ``failed`` (data: the job JSON as the job
  server sent it) or ``error`` (data: the proxy's error JSON).

Listeners are the clients reading the job: an :class:`EventStream` (Server-Sent Events)
gets every event and ends after the final one; a :class:`LongPoll` gets one answer, the
final one or, when its time is up, another (the job still running). Events are pushed
to them by whoever emits them; a listener writes in a task of its own only while it has
something to write. A finished job is kept ``result_ttl`` seconds for ``GET
/jobs/{ref}``, ``max_results`` of them at most (the oldest leave first).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from starlette.types import Send

from proxy.answers import Answer, Headers, encode
from proxy.expiring import ExpiringMap

REF_BYTES = 16  # 128 random bits
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass the events on as they come
]
HEARTBEAT = b": keep-alive\n\n"
FINAL_EVENTS = frozenset({"completed", "failed", "error"})

#: One event: its id, its name and its data (JSON bytes).
Event = tuple[int, str, bytes]


def new_ref() -> str:
    return secrets.token_urlsafe(REF_BYTES)


def sse_bytes(event: Event) -> bytes:
    """An event as Server-Sent Events put it on the wire: a data line per line of data."""
    number, name, data = event
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    body = b"".join(b"data: %s\n" % line for line in lines)
    return b"id: %d\nevent: %s\n%s\n" % (number, name.encode(), body)


def final_event_name(answer: Answer, outcome: str, failed: frozenset[str]) -> str:
    """``completed`` or ``failed`` (a state in ``failed``) for a job's own answer,
    ``error`` for the proxy's."""
    if answer[0] != 200:
        return "error"
    return "failed" if outcome in failed else "completed"


class Listener(Protocol):
    """A client reading a tracked job."""

    def deliver(self, job: TrackedJob, event: Event) -> None: ...


class TrackedJob:
    """One job clients may come back to: its ref, its events, its listeners."""

    __slots__ = (
        "events",
        "failed",
        "final",
        "job_id",
        "listeners",
        "on_event",
        "on_final",
        "ref",
        "started_at",
    )

    def __init__(self, ref: str, failed: frozenset[str] = frozenset({"failed"})) -> None:
        self.ref = ref
        self.failed = failed  # the dialect's failed states
        self.job_id: str | None = None
        self.started_at = 0.0  # time.monotonic() when its /start went out, once accepted
        self.events: list[Event] = []
        self.listeners: list[Listener] = []
        self.final: Answer | None = None
        #: Called once the final answer is known (the registry keeps the job for later).
        self.on_final: Callable[[TrackedJob], None] | None = None
        #: Called with every event of a job of this replica (shared mode publishes it).
        self.on_event: Callable[[TrackedJob, Event], None] | None = None

    @property
    def running(self) -> dict[str, Any]:
        """The job as a client sees it while it runs."""
        return {"ref": self.ref, "id": self.job_id, "state": "running"}

    def emit(self, name: str, data: dict[str, Any] | bytes) -> None:
        """Log an event and push it to every listener; nothing comes after the final one."""
        if self.final is None:
            self._push(name, data if isinstance(data, bytes) else encode(data))

    def retrying(self, attempt: int, pause: float) -> None:
        """A start is retried: ``attempt`` (1 for the first retry) after ``pause`` seconds."""
        self.emit("retrying", {"ref": self.ref, "attempt": attempt, "pause": round(pause, 3)})

    def accepted(self, job_id: str, started_at: float) -> None:
        self.job_id, self.started_at = job_id, started_at
        self.emit("accepted", self.running)

    def finish(self, answer: Answer, outcome: str) -> None:
        """The job's answer is decided: the final event, then the listeners are let go."""
        if self.final is not None:
            return
        self.final = answer
        self._push(final_event_name(answer, outcome, self.failed), answer[2])
        self.listeners.clear()
        if self.on_final is not None:
            self.on_final(self)

    def heard(self, event: Event, final: Answer | None) -> None:
        """An event of this job from the replica that holds it (this one mirrors it):
        taken if it is the next one, with the final answer if it is the last."""
        if self.final is not None or event[0] != len(self.events) + 1:
            return  # a repeat, or after the end
        if event[1] == "accepted":
            self.job_id = orjson.loads(event[2]).get("id")
        self.final = final
        self.events.append(event)
        for listener in list(self.listeners):
            listener.deliver(self, event)
        if final is not None:
            self.listeners.clear()
            if self.on_final is not None:
                self.on_final(self)

    def events_after(self, last_id: int) -> list[Event]:
        """The events a client that saw ``last_id`` missed; the final one at least."""
        missed = [event for event in self.events if event[0] > last_id]
        if not missed and self.final is not None:
            missed = self.events[-1:]
        return missed

    def _push(self, name: str, data: bytes) -> None:
        event = (len(self.events) + 1, name, data)
        self.events.append(event)
        for listener in list(self.listeners):
            listener.deliver(self, event)
        if self.on_event is not None:
            self.on_event(self, event)


class _Writer:
    """Sends ASGI messages in order from a task that lives only while there are some."""

    __slots__ = ("_messages", "_send", "_task")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._messages: list[dict[str, Any]] = []  # a few at most: a list, not a deque
        self._task: asyncio.Task[None] | None = None

    def write(self, message: dict[str, Any]) -> None:
        self._messages.append(message)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._messages:
                await self._send(self._messages.pop(0))
        finally:
            self._task = None


class EventStream:
    """A client reading a job's events as Server-Sent Events; ends after the final one."""

    __slots__ = ("_writer", "open", "quiet")

    def __init__(self, send: Send) -> None:
        self._writer = _Writer(send)
        self.open = True
        self.quiet = True  # nothing written since the last heartbeat round

    def start(self, headers: Headers) -> None:
        self._writer.write({"type": "http.response.start", "status": 200, "headers": headers})

    def replay(self, events: list[Event]) -> None:
        for event in events:
            self.deliver(None, event)

    def deliver(self, job: TrackedJob | None, event: Event) -> None:
        self._chunk(sse_bytes(event), last=event[1] in FINAL_EVENTS)

    def heartbeat(self) -> None:
        """Keep the connection alive through proxies that cut idle ones."""
        if self.quiet:
            self._chunk(HEARTBEAT, last=False)
        self.quiet = True

    def _chunk(self, body: bytes, *, last: bool) -> None:
        if not self.open:
            return
        self.quiet = False
        self.open = not last
        self._writer.write({"type": "http.response.body", "body": body, "more_body": not last})


class LongPoll:
    """A client waiting for a job's final answer, or for its time to be up."""

    __slots__ = ("_job", "_on_time_up", "_timer", "_writer", "answered")

    def __init__(self, send: Send, job: TrackedJob) -> None:
        self._writer = _Writer(send)
        self._job = job
        self._timer: asyncio.TimerHandle | None = None
        self._on_time_up: Callable[[], Answer] | None = None
        self.answered = False

    def wait(self, seconds: float, on_time_up: Callable[[], Answer]) -> None:
        """Answer the final answer when it comes, or ``on_time_up()`` after ``seconds``."""
        job = self._job
        if job.final is not None:
            self._answer(job.final)
            return
        job.listeners.append(self)
        self._on_time_up = on_time_up
        self._timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self._time_up)

    def deliver(self, job: TrackedJob, event: Event) -> None:
        if job.final is not None:
            self._answer(job.final)

    def close(self) -> None:
        """The client is gone: stop waiting."""
        self.answered = True
        self._stop()

    def _time_up(self) -> None:
        self._timer = None
        if not self.answered and self._on_time_up is not None:
            self._answer(self._on_time_up())

    def _answer(self, answer: Answer) -> None:
        if self.answered:
            return
        self.answered = True
        self._stop()
        status, headers, body = answer
        self._writer.write({"type": "http.response.start", "status": status, "headers": headers})
        self._writer.write({"type": "http.response.body", "body": body})

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(ValueError):
            self._job.listeners.remove(self)


class TrackedJobs:
    """Every tracked job of this process: running ones, and finished ones for a while.

    In shared mode it also *mirrors* jobs held by other replicas while clients here read
    them: a mirror is filled from Redis and follows the events the holder publishes.
    """

    def __init__(self, ttl: float, max_finished: int, failed: frozenset[str]) -> None:
        self._failed = failed
        self._running: dict[str, TrackedJob] = {}
        self._mirrors: dict[str, TrackedJob] = {}
        self._finished = ExpiringMap(ttl, max_finished)
        self._streams: set[EventStream] = set()
        #: Told of every event of this replica's jobs (shared mode publishes them).
        self.on_event: Callable[[TrackedJob, Event], None] | None = None

    def __len__(self) -> int:
        return len(self._running) + len(self._finished)

    @property
    def streams(self) -> int:
        """Event streams open now."""
        return len(self._streams)

    def track(self, ref: str) -> TrackedJob:
        """A new tracked job under ``ref`` (:func:`new_ref`)."""
        job = TrackedJob(ref, self._failed)
        job.on_final = self._finished_job
        job.on_event = self.on_event
        self._running[job.ref] = job
        return job

    def get(self, ref: str) -> TrackedJob | None:
        job = self._running.get(ref) or self._mirrors.get(ref)
        return job if job is not None else self._finished.get(ref)

    def mirror(self, ref: str) -> TrackedJob:
        """The mirror of another replica's job (made now if there is none)."""
        job = self._mirrors.get(ref)
        if job is None:
            job = self._mirrors[ref] = TrackedJob(ref)
            job.on_final = self._finished_job
        return job

    def heard(self, ref: str, event: Event, final: Answer | None) -> None:
        """An event another replica published; only a job mirrored here wants it."""
        job = self._mirrors.get(ref)
        if job is not None:
            job.heard(event, final)

    def let_go(self, job: TrackedJob) -> None:
        """Nobody here reads ``job`` any more: a mirror that has no listener left goes."""
        if not job.listeners and self._mirrors.get(job.ref) is job:
            del self._mirrors[job.ref]

    def open_stream(self, stream: EventStream) -> None:
        """Count ``stream`` as open, and give it heartbeats, until :meth:`close_stream`."""
        self._streams.add(stream)

    def close_stream(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    async def send_heartbeats(self, interval: float) -> None:
        """Every ``interval`` seconds, a comment on each stream quiet since the last one."""
        while True:
            await asyncio.sleep(interval)
            for stream in list(self._streams):
                stream.heartbeat()

    def close(self) -> None:
        self._finished.close()

    def _finished_job(self, job: TrackedJob) -> None:
        self._running.pop(job.ref, None)
        self._mirrors.pop(job.ref, None)
        self._finished.put(job.ref, job)
