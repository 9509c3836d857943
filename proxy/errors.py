"""The proxy's errors, each carrying the HTTP answer it becomes.

Library errors (httpx, Redis) are translated into these at one boundary each
(``proxy.upstream.client`` and ``proxy.shared.bus``); ``proxy.serving.app`` maps them to
JSON responses in one exception handler. Route handlers never build error responses by
hand. An error about a job that the job server did start carries its ``job_id`` in the
body. The shape of every error answer (``{"error", "detail"}``, whole-second ``Retry-After``) is
that of their base, :class:`infra.errors.AnsweredError`, which the job server's errors
share; the hierarchy below is the proxy's own.

    ProxyError                      500 internal_error
    ├── BadRequest                  400 bad_request
    │   ├── BodyTooLarge            413 body_too_large
    │   └── JobMismatch             400 job_mismatch          (a callback of another job)
    ├── BadSignature                401 bad_signature
    ├── UnknownCallback             404 unknown_callback
    ├── UnknownJob                  404 unknown_job            (GET /jobs/{ref})
    ├── IdempotencyConflict         422 idempotency_conflict
    ├── UpstreamError               502 upstream_error
    │   ├── UpstreamUnavailable     502 upstream_unavailable   (no job can have started)
    │   ├── UpstreamBadResponse     502 upstream_bad_response
    │   ├── JobLost                 502 job_lost               (accepted, then forgotten)
    │   └── UpstreamRejected        upstream's 4xx, passed on
    ├── Unavailable                 503 (+ Retry-After)
    │   ├── AtCapacity              503 at_capacity
    │   ├── ShuttingDown            503 shutting_down
    │   ├── BusUnavailable          503 bus_unavailable
    │   └── NotReady                503 not_ready              (/readyz)
    ├── JobTimeout                  504 job_timeout
    └── ClientGone                  499 client_closed_request  (never reaches the client)
"""

from __future__ import annotations

from typing import Any

import orjson

from infra.errors import AnsweredError
from proxy.answers import Answer, encode, json_answer

#: The most characters of a job server's answer an error's sentence quotes.
SAID_LENGTH = 200


class ProxyError(AnsweredError):
    """Base of every error the proxy answers with; ``detail`` is a human sentence."""

    def __init__(
        self, detail: Any = None, *, job_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        #: The job server's job this error is about, when one was started: the client
        #: can follow it (``GET /status/{id}``) instead of starting another.
        self.job_id = job_id

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.job_id is not None:
            body["job_id"] = self.job_id
        return body

    def answer(self) -> Answer:
        """The whole HTTP answer: status, headers and the JSON body."""
        headers = [(name.lower().encode(), value.encode()) for name, value in self.headers.items()]
        return json_answer(encode(self.body()), self.status_code, headers)


class BadRequest(ProxyError):
    """The request body is not what the API accepts."""

    status_code = 400
    error = "bad_request"


class BodyTooLarge(BadRequest):
    """The request body is larger than the configured limit."""

    status_code = 413
    error = "body_too_large"


class JobMismatch(BadRequest):
    """The callback carries another job than the one started for its token."""

    error = "job_mismatch"


class BadSignature(ProxyError):
    """The callback's webhook signature is missing, stale or wrong."""

    status_code = 401
    error = "bad_signature"


class UnknownCallback(ProxyError):
    """No job is waiting on this callback token (unknown, or already answered)."""

    status_code = 404
    error = "unknown_callback"


class UnknownJob(ProxyError):
    """No job is known by this ref (never issued, or finished longer than result_ttl ago)."""

    status_code = 404
    error = "unknown_job"


class IdempotencyConflict(ProxyError):
    """This Idempotency-Key was already used with a different request body."""

    status_code = 422
    error = "idempotency_conflict"


class UpstreamError(ProxyError):
    """The job server could not be used."""

    status_code = 502
    error = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """The job server could not be reached; no job was started."""

    error = "upstream_unavailable"


class UpstreamBadResponse(UpstreamError):
    """The job server answered with something that is not a valid job response."""

    error = "upstream_bad_response"


class UpstreamTimedOut(UpstreamBadResponse):
    """The job server did not answer in time (its client sees upstream_bad_response)."""


class JobLost(UpstreamError):
    """The job server accepted the job but no longer knows it, or cannot be asked about it."""

    error = "job_lost"


class UpstreamRejected(UpstreamError):
    """The job server refused the request; its status is kept, and its answer is passed
    on whole as ``upstream`` beside the sentence that says what it said."""

    error = "upstream_rejected"

    def __init__(self, status_code: int, upstream: Any) -> None:
        super().__init__(f"the job server refused the job with {status_code}: {said(upstream)}")
        self.status_code = status_code
        self.upstream = upstream

    def body(self) -> dict[str, Any]:
        return {**super().body(), "upstream": self.upstream}


def said(answer: Any) -> str:
    """What a job server's answer says, in a few words: its own message (``detail``,
    ``message``, ``error``, as error bodies name it), else its JSON, cut short."""
    if isinstance(answer, dict):
        words = [answer[key] for key in ("error", "detail", "message") if key in answer]
        if words and all(isinstance(word, str) for word in words):
            return ": ".join(dict.fromkeys(words))[:SAID_LENGTH]
    if isinstance(answer, str):
        return answer[:SAID_LENGTH] or "nothing"
    text = orjson.dumps(answer).decode()
    return text if len(text) <= SAID_LENGTH else text[: SAID_LENGTH - 3] + "..."


class Unavailable(ProxyError):
    """The proxy cannot take this request now; retry later."""

    status_code = 503
    error = "unavailable"

    def __init__(
        self, detail: Any = None, *, retry_after: float = 1.0, job_id: str | None = None
    ) -> None:
        super().__init__(detail, job_id=job_id, retry_after=retry_after)


class AtCapacity(Unavailable):
    """The proxy holds as many requests as it is configured to."""

    error = "at_capacity"


class ShuttingDown(Unavailable):
    """The proxy is shutting down and did not see this job finish in time."""

    error = "shutting_down"


class BusUnavailable(Unavailable):
    """The shared Redis bus is unreachable; requests that need it cannot be served."""

    error = "bus_unavailable"


class JobTimeout(ProxyError):
    """The job did not finish within the deadline."""

    status_code = 504
    error = "job_timeout"


class NotReady(Unavailable):
    """A dependency of the proxy (job server, Redis) is unreachable."""

    error = "not_ready"


class ClientGone(ProxyError):
    """The client disconnected before its job finished; nobody reads this answer."""

    status_code = 499  # nginx's "client closed request"
    error = "client_closed_request"
