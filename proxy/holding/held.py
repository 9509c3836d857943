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
* ``Accept: text/event-stream``: ``200`` and the job's events (``proxy.holding.tracking``), with
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
from typing import Any, TypeVar

from starlette.types import Receive, Scope, Send

from proxy.answers import Answer, Headers, encode, json_answer, send_answer
from proxy.bodies import receive_body
from proxy.dialects.dialect import JobRequest
from proxy.errors import ClientGone, ProxyError, UpstreamError
from proxy.holding.keyed import Claim
from proxy.holding.resource import answer_tracked
from proxy.holding.tracking import SSE_HEADERS, EventStream, LongPoll, new_ref
from proxy.holding.wishes import Wishes, idempotency_key
from proxy.services import Services
from proxy.serving.metrics import Outcome
from proxy.upstream.start import StartProgress, UpstreamAnswer
from proxy.waiting.deliveries import AnsweredBy
from proxy.waiting.waiters import Waiter

T = TypeVar("T")

# Seconds a start runs before its client is watched for leaving (see until_client_leaves).
WATCH_AFTER = 0.02


class HeldJob:
    """A held request's job while it is started: what every form of holding shares."""

    __slots__ = ("key", "progress", "request", "services", "waiter")

    def __init__(
        self, services: Services, request: JobRequest, waiter: Waiter, key: str | None
    ) -> None:
        self.services, self.request, self.waiter, self.key = services, request, waiter, key
        self.progress = StartProgress()

    async def start(self) -> UpstreamAnswer:
        """POST the job to the job server; a keyed claim is released if no job can exist."""
        services, request, waiter = self.services, self.request, self.waiter
        callback = services.callback_url(waiter.token) if request.held else request.callback
        try:
            return await services.upstream.start(
                request.lane,
                services.dialect.upstream_body(request, callback),
                request.headers,
                deadline=waiter.deadline,
                progress=self.progress,
            )
        except BaseException:
            if self.key is not None and not self.progress.job_may_exist:
                await services.keyed.release(request, self.key, waiter)
            raise

    async def accepted(self, answer: UpstreamAnswer) -> None:
        """The job server accepted the job: bind the waiter to it and watch for its result."""
        services, waiter, dialect = self.services, self.waiter, self.services.dialect
        job = answer.job()
        waiter.started_at, waiter.accepted_at = answer.sent_at, time.monotonic()
        if dropped := waiter.bind(dialect.job_id(job)):
            services.metrics.callback(Outcome.EARLY_MISMATCH, dropped)
        if self.key is not None:
            await services.keyed.bind(self.request, self.key, str(waiter.job_id))
        if waiter.tracked is not None:
            waiter.tracked.accepted(str(waiter.job_id), waiter.started_at)
        if dialect.is_final(job):  # a job server may finish the job before answering
            waiter.settle(json_answer(answer.raw), AnsweredBy.START, str(dialect.state(job)))
        if not waiter.settled:
            services.watch.track(waiter, waiter.deadline)

    def goes_on(self) -> bool:
        """Whether the job must go on if its client leaves now: it is detached, or keyed and
        on its way (its result is wanted for the key's retries)."""
        return self.waiter.detached or (self.key is not None and self.progress.sent)


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
        job_request = services.dialect.parse(body, scope["headers"], wishes.asks_proxy)
        tracked = job_request.held and wishes.tracked
        with services.waiters.hold() as waiter:
            key = idempotency_key(scope) if wishes.keyed else None
            ref = new_ref() if tracked else None
            if key is not None:
                claim = await services.keyed.claim(waiter, job_request, key, ref)
                if not claim.owner:
                    outcome = await _follow(
                        services,
                        waiter,
                        job_request,
                        key,
                        claim,
                        wishes=wishes,
                        receive=receive,
                        send=send,
                    )
                    return
            job = HeldJob(services, job_request, waiter, key)
            if ref is not None:
                waiter.tracked = services.tracked.track(ref)
                job.progress.on_retry = waiter.tracked.retrying
                outcome = await _tracked_form(wishes)(job, receive, send, wishes)
                return
            answer = await until_client_leaves(receive, job.start(), unless=job.goes_on)
            if not job_request.held:
                started = answer.job()
                services.dialect.job_id(started)  # an answer without a job is no answer
                if key is not None:
                    await services.keyed.keep(waiter, started)
                await send_answer(send, json_answer(answer.raw, answer.status_code))
                outcome = Outcome.FORWARDED
                return
            await job.accepted(answer)
            waiter.send = send
            if waiter.settled:  # by the start's answer, or by a callback that came first
                await waiter.respond()
            else:
                # Nothing of the start is kept while held.
                del body, job_request, answer, job
                # The answer is sent by whoever decides it; receive() returns once it was
                # sent (the response is complete) or the client has gone.
                while (await receive())["type"] != "http.disconnect":
                    pass
            if waiter.keeper is not None and not waiter.settled:
                services.waiters.detach(waiter)  # its result is wanted by the key's retries
            outcome = waiter.outcome if waiter.settled else ClientGone.error
    except ProxyError as exc:
        outcome = exc.error
        if isinstance(exc, UpstreamError):
            services.metrics.upstream_error(exc.error)
        raise
    finally:
        services.metrics.request(outcome)


TrackedForm = Callable[[HeldJob, Receive, Send, Wishes], Coroutine[Any, Any, str]]


def _tracked_form(wishes: Wishes) -> TrackedForm:
    """How a held request whose client may come back is held; each returns its outcome."""
    if wishes.stream:
        return _streamed
    return _respond_async if wishes.prefer.respond_async else _held_at_most


async def _respond_async(job: HeldJob, receive: Receive, send: Send, wishes: Wishes) -> str:
    """``Prefer: respond-async``: ``202`` as soon as the job server accepted the job."""
    services, waiter = job.services, job.waiter
    await job.accepted(await until_client_leaves(receive, job.start(), unless=job.goes_on))
    if waiter.answer is not None:  # done already: answered as a plain hold would be
        await send_answer(send, waiter.answer)
        return waiter.outcome
    await send_answer(send, _come_back(services, waiter, respond_async=True))
    return Outcome.ACCEPTED


async def _streamed(job: HeldJob, receive: Receive, send: Send, wishes: Wishes) -> str:
    """``Accept: text/event-stream``: the job's events until the final one. The client has
    the ref at once (``Location``), so its job goes on if it leaves."""
    services, waiter = job.services, job.waiter
    assert waiter.tracked is not None
    stream = EventStream(send)
    stream.start([*SSE_HEADERS, (b"location", services.job_url(waiter.tracked.ref).encode())])
    waiter.tracked.listeners.append(stream)
    services.waiters.detach(waiter)
    services.tracked.open_stream(stream)
    try:
        try:
            await job.accepted(await job.start())
        except ProxyError as exc:
            waiter.fail(exc, AnsweredBy.START)  # the stream's final event
        # receive() returns once the final event was sent, or the client has gone.
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        services.tracked.close_stream(stream)
    return waiter.outcome if waiter.settled else ClientGone.error


async def _held_at_most(job: HeldJob, receive: Receive, send: Send, wishes: Wishes) -> str:
    """``Prefer: wait=N``: the job's answer if it comes within N seconds (and the
    deadline), else ``202`` and the job goes on; ``202`` may come while the job server
    has not even accepted the job yet (then its ``id`` is null)."""
    services, waiter = job.services, job.waiter
    assert waiter.tracked is not None
    poll = LongPoll(send, waiter.tracked)
    seconds = min(wishes.prefer.wait or 0.0, waiter.deadline - time.monotonic())
    poll.wait(seconds, lambda: _come_back(services, waiter))
    try:
        try:
            answer = await until_client_leaves(receive, job.start(), unless=job.goes_on)
        except ProxyError as exc:
            if not waiter.detached:
                raise  # answered as a plain hold would be
            waiter.fail(exc, AnsweredBy.START)  # kept for GET /jobs/{ref}
        else:
            await job.accepted(answer)
        # receive() returns once the answer was sent, or the client has gone.
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        answered = poll.answered
        poll.close()
    if not answered:
        if waiter.keeper is not None and not waiter.settled:
            services.waiters.detach(waiter)  # its result is wanted by the key's retries
        return ClientGone.error
    return Outcome.ACCEPTED if waiter.detached and not waiter.settled else waiter.outcome


async def _follow(
    services: Services,
    waiter: Waiter,
    job_request: JobRequest,
    key: str,
    claim: Claim,
    *,
    wishes: Wishes,
    receive: Receive,
    send: Send,
) -> str:
    """A retry of a keyed request follows the first one's job: by its ref in the form the
    retry asks for, when the first one had it tracked; else until its result."""
    tracked = await services.find_job(claim.ref) if claim.ref is not None else None
    if tracked is not None and wishes.tracked and job_request.held:
        return await answer_tracked(services, tracked, wishes, receive, send, come_back=True)
    answer = await until_client_leaves(
        receive, services.keyed.follow(waiter, job_request, key, claim)
    )
    await send_answer(send, answer)
    return waiter.outcome or Outcome.FORWARDED


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
        # How long after reading the job server's answer this 202 went out (RFC 9110's
        # Server-Timing), for whoever checks that it follows the acceptance closely.
        took = (time.monotonic() - waiter.accepted_at) * 1_000
        headers.append((b"server-timing", b"accept;dur=%.1f" % took))
    return json_answer(encode(tracked.running), 202, headers)


async def until_client_leaves(
    receive: Receive,
    serving: Coroutine[Any, Any, T],
    unless: Callable[[], bool] | None = None,
) -> T:
    """Run ``serving``, cancelled soon after the client disconnects (then ClientGone),
    unless ``unless()`` says its work must go on by then.

    The disconnect arrives as the next ASGI message once the body is read, so watching
    for it takes a task of its own. Most starts are answered within milliseconds: the
    watch begins only once ``serving`` has run ``WATCH_AFTER`` seconds, so that a client
    that leaves is noticed at most that much later, and a quick start costs a timer.
    """
    task = asyncio.current_task()
    assert task is not None
    running, left = True, False
    watcher: asyncio.Future[Any] | None = None

    def client_left(watching: asyncio.Future[Any]) -> None:
        nonlocal left
        if running and not watching.cancelled() and not (unless is not None and unless()):
            left = True
            task.cancel()

    def watch() -> None:
        nonlocal watcher
        if running:
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(client_left)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER, watch)
    try:
        return await serving
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()
        raise ClientGone() from None
    finally:
        running = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
