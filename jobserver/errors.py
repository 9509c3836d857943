"""The job server's errors, each carrying the HTTP answer it becomes.

Handlers and the job runner raise these; ``jobserver.app`` answers them as JSON
``{"error": "<word>", "detail": "<sentence>"}`` (:meth:`ApiError.body`, with the headers
of :attr:`ApiError.headers`) in its one ``EXCEPTION_HANDLERS`` table.
No handler builds an error response by hand. That shape, and whole-second
``Retry-After``, is :class:`infra.errors.AnsweredError`'s, which the proxy's errors share;
the hierarchy below is the job server's own.

    ApiError                    500 internal_error; each subclass sets status and word
    ├── BadRequest              400 bad_request: the body is not a valid request
    ├── BodyTooLarge            413 body_too_large
    ├── JobNotFound             404 not_found
    ├── StatusFailed            500 status_failed: an injected GET /status fault
    ├── AccountUnknown          422 unknown_account: /verify without an account, for jobs
    │                               this server does not know
    ├── InvalidProof            422 invalid_proof: the body also lists each failed job
    ├── StartRefused            5xx start_failed: an injected /start fault
    ├── QueueFull               503 busy, with Retry-After: max_running jobs run and
    │                               queue_size more wait
    ├── ShuttingDown            503 shutting_down: the server stops before the job ends
    ├── ClientGone              499 client_closed: the client of a /start left before its
    │                               job was created (honour_disconnects); nobody reads
    │                               it, the access log shows it, as nginx's 499
    ├── RequestTimeout          504 timeout: /start did not end within request_timeout
    └── DetailOnly              the predictions dialect's own errors, answered
        │                       {"detail": "<sentence>"} as Replicate answers them
        ├── Unauthenticated     401 (with WWW-Authenticate: Bearer): no Authorization:
        │                           Bearer <token>, or a malformed one
        ├── InvalidPrediction   422: not a valid prediction request; the detail names
        │                           the field
        └── PredictionNotFound  404 "Not found.": no such prediction, or it expired

In the predictions dialect the other errors (413, 5xx) keep the ``{"error", "detail"}``
shape, which has its ``detail`` too.

The table answers three more: ``proofs.InvalidBundle`` (422 bad_bundle: not a bundle in
the original's format; it stays with the format it guards, which ``jobserver verify``
reads too), Starlette's ``HTTPException`` (its status, the word from the status phrase)
and anything else (500 internal_error).
"""

from __future__ import annotations

from typing import Any

from infra.errors import AnsweredError
from jobserver.proofs import BundleCheck


class ApiError(AnsweredError):
    """An error answered to the client; subclasses set the status and the word."""

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail, retry_after=retry_after)


class BadRequest(ApiError):
    status_code = 400
    error = "bad_request"


class BodyTooLarge(ApiError):
    status_code = 413
    error = "body_too_large"


class JobNotFound(ApiError):
    status_code = 404
    error = "not_found"


class StatusFailed(ApiError):
    status_code = 500
    error = "status_failed"


class AccountUnknown(ApiError):
    status_code = 422
    error = "unknown_account"


class InvalidProof(ApiError):
    """A readable bundle with proofs that do not check: the answer lists them."""

    status_code = 422
    error = "invalid_proof"

    def __init__(self, check: BundleCheck) -> None:
        super().__init__(check.describe())
        self.check = check

    def body(self) -> dict[str, Any]:
        return {
            **super().body(),
            "valid": False,
            "account": self.check.account,
            "jobs": self.check.jobs,
            "failures": [{"id": f.id, "reason": f.reason} for f in self.check.failures],
        }


class StartRefused(ApiError):
    error = "start_failed"

    def __init__(self, status: int, detail: str) -> None:
        # A 503 tells the client when to come back, as a real overloaded server would.
        super().__init__(detail, retry_after=1 if status == 503 else None)
        self.status_code = status


class QueueFull(ApiError):
    """``max_running`` jobs run and ``queue_size`` more wait: no room for another."""

    status_code = 503
    error = "busy"

    def __init__(self, running: int, queued: int, retry_after: int) -> None:
        super().__init__(
            f"the job server is at capacity: {running} jobs running and {queued} queued",
            retry_after=retry_after,
        )


class ShuttingDown(ApiError):
    status_code = 503
    error = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the job server is shutting down", retry_after=1)


class ClientGone(ApiError):
    status_code = 499
    error = "client_closed"

    def __init__(self) -> None:
        super().__init__("the client closed the connection before its job was created")


class RequestTimeout(ApiError):
    status_code = 504
    error = "timeout"


class DetailOnly(ApiError):
    """An error of the predictions dialect: its body is only the detail, as Replicate's."""

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class Unauthenticated(DetailOnly):
    status_code = 401
    error = "unauthenticated"

    @property
    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class InvalidPrediction(DetailOnly):
    status_code = 422
    error = "invalid_prediction"


class PredictionNotFound(DetailOnly):
    status_code = 404
    error = "not_found"

    def __init__(self) -> None:
        super().__init__("Not found.")
