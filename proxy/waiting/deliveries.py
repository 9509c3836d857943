"""How a held request's answer was decided (:class:`AnsweredBy`), and what became of a
job's result handed to the waiters (:class:`Delivery`)."""

from __future__ import annotations

from enum import Enum


class AnsweredBy(str, Enum):
    """Who decided a held request's answer."""

    #: The job server's callback brought the job.
    CALLBACK = "callback"
    #: A status poll found the job finished (its callback was presumed lost).
    POLL = "poll"
    #: Status polls showed the job lost (unknown, or not to be asked about): 502.
    LOST = "lost"
    #: The answer to /start already carried the finished job.
    START = "start"
    #: The job did not finish within job_deadline: 504.
    DEADLINE = "deadline"
    #: The proxy shut down before the job finished: 503.
    DRAIN = "drain"


class Delivery(str, Enum):
    """What became of a result handed to the registry."""

    OK = "ok"
    STORED = "stored"  # kept in Redis for its replica, which is not listening now
    DUPLICATE = "duplicate"  # its waiter was answered with the job already
    LATE = "late"  # its waiter ended without the job (client gone, deadline, drain, lost)
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"  # another job's result on this waiter's token: refused
    EARLY = "early"  # came before /start named the job: kept, judged once the id is known
    CROWDED = "crowded"  # came early, but the waiter keeps no more early results: retry later


#: Those who answer a held request with its job: a result after them is a duplicate.
WITH_THE_JOB = frozenset({AnsweredBy.CALLBACK, AnsweredBy.POLL, AnsweredBy.START})


def spent_delivery(answered_by: AnsweredBy | None) -> Delivery:
    """A result for a waiter already answered (``answered_by``; None: its client left
    first): a duplicate if the job was its answer, else late, and wanted by nobody."""
    return Delivery.DUPLICATE if answered_by in WITH_THE_JOB else Delivery.LATE
