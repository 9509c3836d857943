"""Callbacks from the job server: signature check, body check, delivery to the waiter.

A plain callback (unsigned, for a token of this replica) is served by
:func:`receive_plain` on the hot path; the others (signed, another replica's token) by
the ordinary handler :func:`receive_callback`. Either way the job must be finished and
must be the waiter's own.

A callback is answered at once, whatever the job server's answer to ``/start`` is
doing: some job servers deliver a quick job's callback, and await its answer, before
they answer ``/start``. One that comes before that answer is kept and answered ``200``;
the waiter takes it only if ``/start`` names the same job (``proxy.waiting.waiters``).

With a callback secret configured, a callback must carry a Standard Webhooks signature:
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>``
with a timestamp within five minutes of now. The key is the base64-decoded part after
``whsec_`` for secrets in that form, else the secret's UTF-8 bytes
(:func:`proxy.config.signing_key`, which also checks the setting).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.answers import Answer, as_response, encode, json_answer, send_answer
from proxy.bodies import parse_object, read_body, receive_body
from proxy.dialects.dialect import Dialect, UnreadableJob
from proxy.errors import (
    BadRequest,
    BadSignature,
    JobMismatch,
    ProxyError,
    Unavailable,
    UnknownCallback,
)
from proxy.jobs import Job
from proxy.services import Services, services_of
from proxy.serving.metrics import Outcome
from proxy.waiting.deliveries import Delivery
from proxy.waiting.waiters import Result, log_late

logger = logging.getLogger(__name__)

SIGNATURE_TOLERANCE = 300.0  # seconds either side of now


def verify_signature(
    key: bytes, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> None:
    """Raise :class:`BadSignature` unless ``body`` carries a valid, fresh signature."""
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise BadSignature("the callback is not signed (webhook-* headers missing)")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise BadSignature("webhook-timestamp is not a whole number of seconds") from None
    if abs((time.time() if now is None else now) - sent_at) > SIGNATURE_TOLERANCE:
        raise BadSignature("webhook-timestamp is more than five minutes from now")
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    # The header may list several space-separated signatures (key rotation).
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise BadSignature("no webhook-signature matches the body")


def parse_job(body: bytes, dialect: Dialect) -> tuple[Job, Result]:
    """A callback body: a JSON object with a job id and a state where the dialect says."""
    job = parse_object(body)
    try:
        job_id, state = dialect.read(job)
    except UnreadableJob as exc:
        raise BadRequest(f"the callback body is not a job: {exc}") from None
    assert state is not None  # read() requires one
    return job, Result(job_id, state, body)


RECEIPTS = {
    delivery: json_answer(encode({"status": delivery.value}))
    for delivery in (Delivery.OK, Delivery.STORED, Delivery.EARLY)
}
IGNORED = json_answer(encode({"status": "ignored", "detail": "the job is not finished"}))


def is_plain(services: Services, token: str) -> bool:
    """Whether a callback may take the fast way: unsigned, for a token of this replica."""
    bus = services.bus
    return (
        bool(token)
        and "/" not in token
        and services.signing_key is None
        and not (bus is not None and bus.is_foreign(token))
    )


async def receive_plain(
    services: Services, token: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """``POST /callback/{token}``: a finished job for a held request of this replica."""
    body = receive_body(scope, receive, services.settings.max_body_size)
    await send_answer(send, await _take(services, token, body))


async def receive_callback(request: Request) -> Response:
    """The callback endpoint's rare paths: signed callbacks, other replicas' tokens."""
    services = services_of(request)
    body = _signed_body(request, services.signing_key, services.settings.max_body_size)
    return as_response(await _take(services, request.path_params["token"], body))


async def _signed_body(request: Request, key: bytes | None, limit: int) -> bytes:
    body = await read_body(request, limit)
    if key is not None:
        verify_signature(key, request.headers, body)
    return body


async def _take(services: Services, token: str, reading: Awaitable[bytes]) -> Answer:
    """Read a callback's body, judge its job and deliver it; the answer for the job
    server, with the outcome counted whatever happens."""
    outcome: str = Outcome.INTERNAL_ERROR
    try:
        job, result = parse_job(await reading, services.dialect)
        if result.state not in services.dialect.final:
            outcome = Outcome.NOT_FINAL
            return IGNORED
        delivery = await _deliver(services, token, job, result)
        outcome = delivery.value
        _refuse(delivery, result)
        return RECEIPTS[delivery]
    except ProxyError as exc:
        if not isinstance(exc, UnknownCallback):
            outcome = exc.error
        raise
    finally:
        services.metrics.callback(outcome)


def _refuse(delivery: Delivery, result: Result) -> None:
    """Raise the error a callback gets when its result was not taken."""
    if delivery is Delivery.MISMATCH:
        raise JobMismatch(f"job {result.job_id} is not the job of this callback token")
    if delivery is Delivery.CROWDED:
        raise Unavailable(
            "this callback token already has results waiting for the job server to name "
            "its job: send it again once /start is answered"
        )
    if delivery is Delivery.LATE:
        log_late(result.job_id)
        raise UnknownCallback()
    if delivery in (Delivery.DUPLICATE, Delivery.UNKNOWN):
        logger.debug("dropped the result of job %s: %s token", result.job_id, delivery.value)
        raise UnknownCallback()


async def _deliver(services: Services, token: str, job: Job, result: Result) -> Delivery:
    if services.bus is not None and services.bus.is_foreign(token):
        return await services.bus.forward(token, job)
    delivery = await services.waiters.deliver(token, result)
    if delivery is Delivery.DUPLICATE and services.waiters.answered_by_poll(token):
        services.watch.polled_too_soon()
    return delivery
