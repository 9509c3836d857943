"""The job model the proxy works with: a job as the job server writes it, its states, and
the rules shared by every place that reads one."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from proxy.errors import UpstreamBadResponse

#: A job as JSON: ``{"id", "state", "startedAt", "proof"}`` or ``"error"``.
Job = dict[str, Any]

MAX_JOB_ID_LENGTH = 256


class JobState(str, Enum):
    """A job's ``state`` on the job server."""

    #: Started (or queued for a slot); its result comes later.
    RUNNING = "running"
    #: Done, with a ``proof``.
    COMPLETED = "completed"
    #: Done, with an ``error``; passed to the client as a 200 all the same.
    FAILED = "failed"


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED})
JOB_STATES = frozenset(JobState)


def is_terminal(job: Job) -> bool:
    """Whether the job has ended (completed or failed)."""
    return job.get("state") in FINAL_STATES


def job_id_of(job: Job) -> str:
    """The job's id; UpstreamBadResponse when the job server's answer has none usable."""
    job_id = job.get("id")
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_LENGTH:
        raise UpstreamBadResponse(f"the job server's answer has no valid job id: {job!r:.200}")
    return job_id


def parse_retry_after(value: str | bytes | None) -> float:
    """Seconds a ``Retry-After`` value asks for; 0.0 when absent or unusable.

    Only the delta-seconds form: an HTTP date would need a wall clock we do not inject.
    """
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
