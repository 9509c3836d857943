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

from starlette.types import Receive, Scope, Send

from proxy.errors import UnknownJob
from proxy.holding import answer_tracked, read_wishes
from proxy.services import Services

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
