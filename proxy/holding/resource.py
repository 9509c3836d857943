"""``GET /jobs/{ref}``: a tracked job as a resource a client comes back to.

* the job once final: its answer as a held request would have had it (``200`` with the
  job JSON, or the proxy error that ended it, with that error's status);
* while it runs: ``200 {"ref", "id", "state": "running"}`` with ``Retry-After``; with
  ``Prefer: wait=N``, held (a long poll) until it ends or N seconds pass (at most
  ``job_deadline``);
* with ``Accept: text/event-stream``: its events after ``Last-Event-ID`` (all without
  one; the final one at least), then the rest as they come, until the final one;
* ``404 unknown_job`` for a ref never issued, or finished longer than ``result_ttl`` ago.

Anyone holding the ref may read the job, like a pre-signed URL.
"""

from __future__ import annotations

import contextlib
import functools

from starlette.types import Receive, Scope, Send

from proxy.answers import Answer, Headers, encode, json_answer, send_answer
from proxy.errors import UnknownJob
from proxy.holding.tracking import SSE_HEADERS, EventStream, LongPoll, TrackedJob
from proxy.holding.wishes import Wishes, read_wishes
from proxy.services import Services
from proxy.serving.metrics import Outcome

JOBS_PREFIX = "/jobs/"


def last_event_id(scope: Scope) -> int:
    """The ``Last-Event-ID`` a reconnecting event stream sends; 0 without a usable one."""
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            return int(value) if value.isdigit() and len(value) < 10 else 0
    return 0


async def job_resource(
    services: Services, ref: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer ``GET /jobs/{ref}`` as the module docstring says."""
    tracked = await services.find_job(ref)
    if tracked is None:
        raise UnknownJob(f"no job is known by the ref {ref!r} (never issued, or expired)")
    wishes = read_wishes(scope)
    await answer_tracked(
        services,
        tracked,
        wishes,
        receive,
        send,
        come_back=False,
        last_event_id=last_event_id(scope),
    )


async def answer_tracked(
    services: Services,
    tracked: TrackedJob,
    wishes: Wishes,
    receive: Receive,
    send: Send,
    *,
    come_back: bool,
    last_event_id: int = 0,
) -> str:
    """Answer with a tracked job in the form ``wishes`` ask: its events (from
    ``last_event_id``), its answer within ``Prefer: wait=N``, or at once. A job still
    running is answered ``202`` to come back later (``come_back``, a retry of a ``POST``),
    else ``200`` running (``GET /jobs/{ref}``). Returns the outcome word."""
    try:
        location = services.job_url(tracked.ref)
        if wishes.stream:
            stream = EventStream(send)
            stream.start([*SSE_HEADERS, (b"location", location.encode())])
            stream.replay(tracked.events_after(last_event_id))
            if tracked.final is None:
                tracked.listeners.append(stream)
            services.tracked.open_stream(stream)
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            finally:
                services.tracked.close_stream(stream)
                with contextlib.suppress(ValueError):
                    tracked.listeners.remove(stream)
            return Outcome.STREAMED
        running = functools.partial(_running, services, tracked, come_back=come_back)
        if tracked.final is not None or wishes.prefer.wait is None:
            await send_answer(send, tracked.final or running())
            return Outcome.FOLLOWED
        poll = LongPoll(send, tracked)
        poll.wait(min(wishes.prefer.wait, services.settings.job_deadline), running)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            poll.close()
        return Outcome.FOLLOWED
    finally:
        services.tracked.let_go(tracked)  # a mirror nobody here reads goes


def _running(services: Services, tracked: TrackedJob, *, come_back: bool) -> Answer:
    """A tracked job still running: ``202`` and where to come back, or ``200`` as it is."""
    headers: Headers = [(b"retry-after", b"%d" % services.retry_after(tracked.started_at))]
    if not come_back:
        return json_answer(encode(tracked.running), 200, headers)
    headers.append((b"location", services.job_url(tracked.ref).encode()))
    return json_answer(encode(tracked.running), 202, headers)
