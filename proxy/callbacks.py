"""Callbacks from the job server: signature check, body check, delivery to the waiter.

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
import time
from collections.abc import Mapping

from proxy.bodies import parse_object
from proxy.errors import BadRequest, BadSignature
from proxy.jobs import Job

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


def parse_job(body: bytes) -> Job:
    """A callback body: a JSON object with a job id and a state."""
    job = parse_object(body)
    if not isinstance(job.get("id"), str) or not job["id"]:
        raise BadRequest("the callback body has no job id")
    if not isinstance(job.get("state"), str):
        raise BadRequest("the callback body has no job state")
    return job
