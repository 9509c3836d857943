"""The held request, in each form a client may ask for.

``POST /proxy`` with ``wait: true`` starts the job upstream with the proxy's callback URL
and answers the client from the job's result. How long the client holds is its own
choice (RFC 7240 ``Prefer``, ``Accept: text/event-stream``):

* **plain** (no preference): held until the job's answer, or the deadline's 504;
* ``Prefer: wait=N``: held at most ``min(N, job_deadline)`` seconds, then ``202
  Accepted`` with ``Location: <public_url>/jobs/{ref}``, ``Retry-After`` and
  ``{"ref", "id", "state": "running"}``; a job done by then is answered as plain;
* ``Prefer: respond-async``: that ``202`` as soon as the job server accepted the job
  (``Preference-Applied: respond-async``);
* ``Accept: text/event-stream``: ``200`` and the job's events (``proxy.tracking``), with
  ``Location`` at once, until the final one.

A job whose client has its ref (a ``202``, a stream's ``Location``) goes on if the client
leaves: its waiter is *detached* and lives until its answer is decided, which is kept for
``GET /jobs/{ref}``. Otherwise a client that leaves withdraws its job: a start still
waiting in the proxy is never sent, one under way has its connection closed.

Whoever decides a held request's answer (its callback, a status poll, the deadline, the
drain) sends it: on the held request for a plain one, through the tracked job's
listeners for the others. The held coroutine only waits for its request to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.types import Receive, Scope, Send

from proxy.answers import Answer, Headers, encode, json_answer, send_answer
from proxy.bodies import JobRequest, receive_body
from proxy.errors import ClientGone, ProxyError, UpstreamError
from proxy.jobs import is_terminal, job_id_of
from proxy.metrics import Outcome
from proxy.prefer import NONE, Preferences, parse_prefer
from proxy.services import Services
from proxy.tracking import SSE_HEADERS, EventStream, LongPoll, TrackedJob
from proxy.upstream import StartProgress, UpstreamAnswer
from proxy.waiters import AnsweredBy, Waiter

T = TypeVar("T")

EVENT_STREAM = b"text/event-stream"


@dataclass(frozen=True, slots=True)
class Wishes:
    """What a request's headers ask of the proxy, read in one pass."""

    keyed: bool = False
    prefer: Preferences = NONE
    stream: bool = False

    @property
    def tracked(self) -> bool:
        """Whether the client may come back to its job (it gets a ref)."""
        return self.stream or self.prefer.any


PLAIN = Wishes()


def read_wishes(scope: Scope) -> Wishes:
    """The request's ``Idempotency-Key``, ``Prefer`` and ``Accept``, in one pass."""
    keyed = stream = False
    prefer: list[str] = []
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            keyed = True
        elif name == b"prefer":
            prefer.append(value.decode("latin-1"))
        elif name == b"accept" and EVENT_STREAM in value:
            stream = True
    if not (keyed or stream or prefer):
        return PLAIN
    return Wishes(keyed, parse_prefer(prefer) if prefer else NONE, stream)


async def held(
    services: Services, scope: Scope, receive: Receive, send: Send, wishes: Wishes
) -> None:
    """Start a ``POST /proxy``'s job and hold the request until its answer was sent.

    One coroutine for the whole life of a held request: every frame it keeps is kept
    for each of thousands of held requests.
    """
    outcome: str = Outcome.INTERNAL_ERROR
    try:
        body = await receive_body(scope, receive, services.settings.max_body_size)
        job_request = JobRequest.parse(body)
        with services.waiters.hold() as waiter:
            if job_request.wait and wishes.tracked:
                outcome = await _held_tracked(
                    services, job_request, waiter, wishes=wishes, receive=receive, send=send
                )
                return
            callback = job_request.callback
            if job_request.wait:
                callback = services.callback_url(waiter.token)
            start = services.upstream.start(
                job_request.upstream_body(callback), deadline=waiter.deadline
            )
            answer = await until_client_leaves(receive, start)
            job = answer.job()
            if not job_request.wait:
                await send_answer(send, json_answer(answer.raw, answer.status_code))
                outcome = Outcome.FORWARDED
                return
            _accepted(services, waiter, answer)
            waiter.send = send
            if waiter.settled:  # by the start's answer, or by a callback that came first
                await waiter.respond()
            else:
                # Nothing of the start is kept while held.
                del body, job_request, callback, answer, job
                # The answer is sent by whoever decides it; receive() returns once it was
                # sent (the response is complete) or the client has gone.
                while (await receive())["type"] != "http.disconnect":
                    pass
            outcome = waiter.outcome if waiter.settled else ClientGone.error
    except ProxyError as exc:
        outcome = exc.error
        if isinstance(exc, UpstreamError):
            services.metrics.upstream_error(exc.error)
        raise
    finally:
        services.metrics.request(outcome)


def _accepted(services: Services, waiter: Waiter, answer: UpstreamAnswer) -> None:
    """The job server accepted the job: bind the waiter to it and watch for its result."""
    job = answer.job()
    waiter.started_at, waiter.accepted_at = answer.sent_at, time.monotonic()
    if dropped := waiter.bind(job_id_of(job)):
        services.metrics.callback(Outcome.EARLY_MISMATCH, dropped)
    if waiter.tracked is not None:
        waiter.tracked.accepted(str(waiter.job_id), waiter.started_at)
    if is_terminal(job):  # a job server may finish the job before answering
        waiter.settle(json_answer(answer.raw), AnsweredBy.START, str(job["state"]))
    if not waiter.settled:
        services.watch.track(waiter, waiter.deadline)


async def _held_tracked(
    services: Services,
    job_request: JobRequest,
    waiter: Waiter,
    *,
    wishes: Wishes,
    receive: Receive,
    send: Send,
) -> str:
    """A held request whose client may come back to its job; returns its outcome word."""
    waiter.tracked = tracked = services.tracked.track()
    progress = StartProgress(on_retry=lambda attempt, pause: _retrying(tracked, attempt, pause))
    start = services.upstream.start(
        job_request.upstream_body(services.callback_url(waiter.token)),
        deadline=waiter.deadline,
        progress=progress,
    )
    if wishes.stream:
        return await _streamed(services, waiter, start, receive, send)
    if wishes.prefer.respond_async:
        answer = await until_client_leaves(receive, start)
        _accepted(services, waiter, answer)
        if waiter.answer is not None:  # done already: answered as a plain hold would be
            await send_answer(send, waiter.answer)
            return waiter.outcome
        await send_answer(send, _come_back(services, waiter, respond_async=True))
        return Outcome.ACCEPTED
    return await _held_at_most(
        services, waiter, start, receive=receive, send=send, seconds=wishes.prefer.wait or 0
    )


async def _streamed(
    services: Services,
    waiter: Waiter,
    start: Coroutine[Any, Any, UpstreamAnswer],
    receive: Receive,
    send: Send,
) -> str:
    """``Accept: text/event-stream``: the job's events until the final one. The client has
    the ref at once (``Location``), so its job goes on if it leaves."""
    assert waiter.tracked is not None
    stream = EventStream(send)
    stream.start([*SSE_HEADERS, (b"location", services.job_url(waiter.tracked.ref).encode())])
    waiter.tracked.listeners.append(stream)
    services.waiters.detach(waiter)
    with services.tracked.streaming(stream):
        try:
            _accepted(services, waiter, await start)
        except ProxyError as exc:
            waiter.fail(exc, AnsweredBy.START)  # the stream's final event
        # receive() returns once the final event was sent, or the client has gone.
        while (await receive())["type"] != "http.disconnect":
            pass
    return waiter.outcome if waiter.settled else ClientGone.error


async def _held_at_most(
    services: Services,
    waiter: Waiter,
    start: Coroutine[Any, Any, UpstreamAnswer],
    *,
    receive: Receive,
    send: Send,
    seconds: float,
) -> str:
    """``Prefer: wait=N``: the job's answer if it comes within N seconds (and the
    deadline), else ``202`` and the job goes on; ``202`` may come while the job server
    has not even accepted the job yet (then its ``id`` is null)."""
    assert waiter.tracked is not None
    poll = LongPoll(send, waiter.tracked)
    poll.wait(
        min(seconds, waiter.deadline - time.monotonic()), lambda: _come_back(services, waiter)
    )
    try:
        try:
            answer = await until_client_leaves(receive, start, unless=lambda: waiter.detached)
        except ProxyError as exc:
            if not waiter.detached:
                raise  # answered as a plain hold would be
            waiter.fail(exc, AnsweredBy.START)  # kept for GET /jobs/{ref}
        else:
            _accepted(services, waiter, answer)
        # receive() returns once the answer was sent, or the client has gone.
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        answered = poll.answered
        poll.close()
    if not answered:
        return ClientGone.error  # withdrawn, as a plain hold's would be
    return Outcome.ACCEPTED if waiter.detached and not waiter.settled else waiter.outcome


def _retrying(tracked: TrackedJob, attempt: int, pause: float) -> None:
    tracked.emit("retrying", {"ref": tracked.ref, "attempt": attempt, "pause": round(pause, 3)})


def _come_back(services: Services, waiter: Waiter, *, respond_async: bool = False) -> Answer:
    """``202 Accepted`` for a job that goes on without its client holding: its waiter is
    detached, and the client comes back at ``Location`` after ``Retry-After``."""
    tracked = waiter.tracked
    assert tracked is not None
    services.waiters.detach(waiter)
    headers: Headers = [(b"location", services.job_url(tracked.ref).encode())]
    headers.append((b"retry-after", b"%d" % services.retry_after(waiter.started_at)))
    if respond_async:
        headers.append((b"preference-applied", b"respond-async"))
    return json_answer(encode(tracked.running), 202, headers)


async def until_client_leaves(
    receive: Receive,
    serving: Coroutine[Any, Any, T],
    unless: Callable[[], bool] | None = None,
) -> T:
    """Run ``serving``, cancelled as soon as the client disconnects (then ClientGone),
    unless ``unless()`` says its work must go on by then.

    The disconnect arrives as the next ASGI message once the body is read, so watching
    for it takes a task of its own, kept only while ``serving`` runs (a held request
    itself then waits on ``receive()``).
    """
    task = asyncio.current_task()
    assert task is not None
    running, left = True, False

    def client_left(watcher: asyncio.Future[Any]) -> None:
        nonlocal left
        if running and not watcher.cancelled() and not (unless is not None and unless()):
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
