"""What one response (or failure) of the load generator says: ``"ok"`` or what went wrong.

Outcome words are short and stable, so that a run's errors can be counted by kind:
``http-502:upstream_unavailable`` (status and the server's error word), ``state-failed``,
``bad-job`` (no well-formed proof), ``timeout``, ``connect-refused`` (``connect-`` marks
failures before the connection was up), ...
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import httpx

from bench.dialects import DIALECTS, BenchDialect
from infra.http1 import Answer, AnswerIncomplete, AnswerMalformed

OK = "ok"
LEFT = "left"  # the client reset its connection before an answer, as the plan said
PROOF = re.compile(r"[0-9A-F]{40}")
ERROR_WORD = re.compile(r"[a-z][a-z0-9_-]{0,39}")
EXAMPLE_LENGTH = 300


class Verdict(NamedTuple):
    """What a response says: ``"ok"`` or what went wrong, and when the job started."""

    outcome: str
    started_at: float | None = None  # Unix time
    example: str = ""  # what came instead of a good answer


def failure(outcome: str, evidence: bytes | BaseException) -> Verdict:
    """A failed verdict, with the body or exception that shows what happened."""
    text = evidence.decode(errors="replace") if isinstance(evidence, bytes) else repr(evidence)
    return Verdict(outcome, example=text[:EXAMPLE_LENGTH])


def judge(
    answer: Answer, *, wait: bool, dialect: BenchDialect = DIALECTS["work-sample"]
) -> Verdict:
    """``"ok"`` for the answer the protocol promises, else a short word for what came."""
    # A job server may answer a held job as it answers an accepted one (201 Created).
    if answer.status not in (200, dialect.accepted_status):
        return failure(f"http-{answer.status}" + _error_word(answer.body), answer.body)
    try:
        job = json.loads(answer.body)
    except ValueError:
        job = None
    if not isinstance(job, dict):
        return failure("bad-json", answer.body)
    state = job.get(dialect.state_field)
    if state != (dialect.completed if wait else dialect.accepted):
        return failure(f"state-{state}", answer.body)
    if not wait:
        return Verdict(OK) if isinstance(job.get("id"), str) else failure("bad-job", answer.body)
    proof, job_id = dialect.proof_of(job), job.get("id")
    started_at = _unix_time(job.get(dialect.started_field))
    well_formed = isinstance(proof, str) and PROOF.fullmatch(proof) is not None
    if well_formed and isinstance(job_id, str) and started_at is not None:
        return Verdict(OK, started_at)
    return failure("bad-job", answer.body)


def final_event(answer: Answer) -> Answer:
    """A stream of Server-Sent Events as the answer its final event stands for: a job's
    JSON (completed, failed) as a 200, the proxy's error as a 502; no final event, as it
    came."""
    if answer.status != 200:
        return answer
    name, data = b"", b""
    for line in answer.body.split(b"\n"):
        if line.startswith(b"event: "):
            name, data = line[7:], b""
        elif line.startswith(b"data: "):
            data += line[6:]
    if name in (b"completed", b"failed"):
        return Answer(200, data)
    if name == b"error":
        return Answer(502, data)
    return Answer(599, answer.body)


def server_timing(answer: Answer, metric: bytes) -> float | None:
    """Seconds a ``Server-Timing`` header gives for ``metric`` (its ``dur``, in ms)."""
    for entry in (answer.header(b"server-timing") or b"").split(b","):
        name, _, params = entry.strip().partition(b";")
        if name == metric and params.startswith(b"dur="):
            try:
                return float(params[4:]) / 1_000
            except ValueError:
                return None
    return None


def _unix_time(timestamp: object) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


def _error_word(body: bytes) -> str:
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict):
            word = document.get("error")
            if isinstance(word, str) and ERROR_WORD.fullmatch(word):
                return f":{word}"
    return ""


# What a request may meet on its way: the client's errors, the OS's, the deadline.
FAILURES = (httpx.TransportError, OSError, TimeoutError)

# Most specific first: ConnectionRefusedError and friends are OSErrors too.
ERROR_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timeout"),
    (httpx.TimeoutException, "timeout"),
    (ConnectionRefusedError, "refused"),
    (ConnectionResetError, "reset"),
    (AnswerIncomplete, "closed-early"),
    (AnswerMalformed, "malformed"),
)


def error_kind(exc: BaseException, *, connected: bool) -> str:
    """A short word for a failed request, the first that fits in its chain of causes (a
    client's error wraps the OS's); ``connect-`` marks failures before connecting."""
    prefix = "" if connected else "connect-"
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    for error in chain:
        word = next((word for kind, word in ERROR_WORDS if isinstance(error, kind)), None)
        if word is None and isinstance(error, OSError) and error.errno is not None:
            word = errno.errorcode.get(error.errno, str(error.errno)).lower()
        if word is not None:
            return prefix + word
    return prefix + type(exc).__name__


def first_examples(verdicts: Iterable[Verdict]) -> dict[str, str]:
    """The first example of each kind of failure."""
    examples: dict[str, str] = {}
    for verdict in verdicts:
        if verdict.outcome != OK:
            examples.setdefault(verdict.outcome, verdict.example)
    return examples
