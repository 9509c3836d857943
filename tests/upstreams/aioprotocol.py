"""The protocol as the second job server reads it (``tests.upstreams.aioserver``): its
requests and their checks, its error answers, its jobs in either dialect's words, and
their proofs. Written from DESIGN.md alone, as the server is; it shares no code with
``jobserver/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from aiohttp import web
from yarl import URL

MAX_ACCOUNT_LENGTH = 256
PREDICTION_EVENTS = ("start", "output", "logs", "completed")
FAILURE = "the job failed"


class JobState(str, Enum):
    #: created, not ended yet
    RUNNING = "running"
    #: ended with a proof
    COMPLETED = "completed"
    #: ended with an error
    FAILED = "failed"
    #: cancelled by its client (predictions only)
    CANCELED = "canceled"


#: A prediction's status once it has ended; before, "starting" then "processing".
PREDICTION_STATUS = {
    JobState.COMPLETED: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELED: "canceled",
}


def sign(secret: str, job_id: str, account: str, started_at: str) -> str:
    """The job's proof: HMAC-SHA1 of ``id:account:startedAt``, 40 uppercase hex."""
    message = f"{job_id}:{account}:{started_at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest().upper()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ProtocolError(Exception):
    """An answer other than 2xx, as ``{"error", "detail"}`` (work-sample) or ``{"detail"}``
    (predictions); mapped in :func:`json_errors`."""

    status = 400

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


class Unauthenticated(ProtocolError):
    status = 401


class UnknownJob(ProtocolError):
    status = 404


class InvalidPrediction(ProtocolError):
    status = 422


class StatusFault(ProtocolError):
    status = 500


DIALECT = web.AppKey("dialect", str)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as exc:
        body = {"error": exc.error, "detail": exc.detail}
        if request.app[DIALECT] == "predictions":
            body = {"detail": exc.detail}
        return web.json_response(body, status=exc.status)


@dataclass(frozen=True)
class StartRequest:
    account: str  # whose gate: the account, or a prediction's token
    wait: bool
    callback: URL | None
    input: dict[str, Any] = field(default_factory=dict)  # a prediction's


def json_object(raw: bytes, error: type[ProtocolError]) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise error("invalid_json", "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise error("invalid_json", "the body must be a JSON object")
    return body


def absolute_url(value: object) -> URL | None:
    """``value`` as an absolute http(s) URL, or None if it is not one."""
    url = None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            url = URL(value)
    if url is None or url.scheme not in ("http", "https") or not url.host:
        return None
    return url


def parse_start(raw: bytes) -> StartRequest:
    """The body of ``POST /start``, or a 400 naming the field that is wrong."""
    body = json_object(raw, ProtocolError)
    account = body.get("account")
    if not isinstance(account, str) or not 1 <= len(account) <= MAX_ACCOUNT_LENGTH:
        detail = f"account must be a string of 1 to {MAX_ACCOUNT_LENGTH} characters"
        raise ProtocolError("invalid_account", detail)
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise ProtocolError("invalid_wait", "wait must be true or false")
    callback = body.get("callback")
    if callback is None:
        return StartRequest(account, wait, None)
    url = absolute_url(callback)
    if url is None:
        raise ProtocolError("invalid_callback", "callback must be an absolute http(s) URL")
    return StartRequest(account, wait, url)


def parse_prediction(raw: bytes, authorization: str) -> StartRequest:
    """``POST /v1/predictions``: a 401 without a bearer token, a 422 for a wrong field."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not 1 <= len(token) <= MAX_ACCOUNT_LENGTH:
        raise Unauthenticated("unauthenticated", "Authorization: Bearer <token> is required")
    body = json_object(raw, InvalidPrediction)
    if not isinstance(body.get("input"), dict):
        raise InvalidPrediction("invalid_input", "input must be a JSON object")
    events = body.get("webhook_events_filter", list(PREDICTION_EVENTS))
    if not isinstance(events, list) or not all(event in PREDICTION_EVENTS for event in events):
        detail = f"webhook_events_filter must be a list of {', '.join(PREDICTION_EVENTS)}"
        raise InvalidPrediction("invalid_webhook_events_filter", detail)
    webhook = body.get("webhook")
    url = None if webhook is None else absolute_url(webhook)
    if webhook is not None and url is None:
        raise InvalidPrediction("invalid_webhook", "webhook must be an absolute http(s) URL")
    return StartRequest(token, False, url if "completed" in events else None, body["input"])


@dataclass(eq=False)
class Job:
    id: str
    account: str
    started_at: str
    proof: str
    fails: bool
    callback: URL | None  # only for wait:false starts that named one
    state: JobState = JobState.RUNNING
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    # The /start handling sends this job's callback itself (early callbacks).
    callback_held: bool = False
    # A prediction's: its input, and when it began processing and ended (its created_at
    # is started_at).
    input: dict[str, Any] = field(default_factory=dict)
    processing_at: str | None = None
    ended_at: str | None = None

    def body(self) -> dict[str, str]:
        """The job in the work sample's words."""
        body = {"id": self.id, "state": self.state.value, "startedAt": self.started_at}
        if self.state is JobState.COMPLETED:
            body["proof"] = self.proof
        elif self.state is JobState.FAILED:
            body["error"] = FAILURE
        return body

    def prediction(self, base_url: str) -> dict[str, Any]:
        """The job as a prediction, its URLs below ``base_url``."""
        status = PREDICTION_STATUS.get(self.state)
        get = f"{base_url}/v1/predictions/{self.id}"
        return {
            "id": self.id,
            "status": status or ("processing" if self.processing_at else "starting"),
            "input": self.input,
            "output": {"proof": self.proof} if self.state is JobState.COMPLETED else None,
            "error": FAILURE if self.state is JobState.FAILED else None,
            "created_at": self.started_at,
            "started_at": self.processing_at,
            "completed_at": self.ended_at,
            "urls": {"get": get, "cancel": f"{get}/cancel"},
        }
