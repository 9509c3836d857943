"""Callback signatures (Standard Webhooks), callback bodies, and signed callbacks in the app."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from proxy.config import signing_key
from proxy.dialects.dialect import load_dialect
from proxy.errors import BadRequest, BadSignature
from proxy.waiting.callbacks import parse_job, verify_signature
from proxy.waiting.waiters import Result
from tests.proxy.conftest import ProxyFactory, ProxyUnderTest

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = b'{"id":"abc","state":"completed"}'
NOW = 1_750_000_000


def sign(
    key: bytes, body: bytes, *, message_id: str = "msg_1", timestamp: int | str = NOW
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, computed independently of the proxy."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


# signing_key


def test_whsec_secret_is_base64_decoded() -> None:
    """A whsec_ secret stands for the bytes its base64 part encodes."""
    assert signing_key(SECRET) == KEY


def test_plain_secret_is_its_utf8_bytes() -> None:
    """A secret without the whsec_ prefix is used as its UTF-8 bytes."""
    assert signing_key("plain secret") == b"plain secret"
    assert signing_key("clé") == "clé".encode()


@pytest.mark.parametrize("secret", ["whsec_not*base64", "whsec_abc", "whsec_ab=c"])
def test_whsec_secret_with_bad_base64_is_refused(secret: str) -> None:
    """A whsec_ secret whose rest is not base64 is a ValueError naming the setting."""
    with pytest.raises(ValueError, match="callback_secret"):
        signing_key(secret)


# verify_signature


def test_valid_signature_is_accepted() -> None:
    """A fresh v1 signature over id.timestamp.body passes."""
    verify_signature(KEY, sign(KEY, BODY), BODY, now=NOW)


def test_signature_with_plain_secret_is_accepted() -> None:
    """Signatures made with a plain secret's bytes pass with that secret's key."""
    key = signing_key("plain secret")
    verify_signature(key, sign(b"plain secret", BODY), BODY, now=NOW)


def test_one_of_several_signatures_is_enough() -> None:
    """Any one matching v1 signature among several space-separated ones passes."""
    headers = sign(KEY, BODY)
    wrong = sign(b"another key", BODY)["webhook-signature"]
    headers["webhook-signature"] = f"{wrong} v2,whatever {headers['webhook-signature']}"
    verify_signature(KEY, headers, BODY, now=NOW)


def test_timestamp_within_five_minutes_is_accepted() -> None:
    """A signature made up to five minutes before or after now passes."""
    verify_signature(KEY, sign(KEY, BODY, timestamp=NOW - 299), BODY, now=NOW)
    verify_signature(KEY, sign(KEY, BODY, timestamp=NOW + 299), BODY, now=NOW)


def test_real_clock_is_used_by_default() -> None:
    """Without `now`, the signature's timestamp is compared with the current time."""
    verify_signature(KEY, sign(KEY, BODY, timestamp=int(time.time())), BODY)
    with pytest.raises(BadSignature):
        verify_signature(KEY, sign(KEY, BODY, timestamp=NOW - 3600), BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    """A callback lacking any of the three webhook headers is refused."""
    headers = sign(KEY, BODY)
    del headers[missing]
    with pytest.raises(BadSignature, match="not signed"):
        verify_signature(KEY, headers, BODY, now=NOW)


def test_no_headers_is_refused() -> None:
    """An unsigned callback is refused."""
    with pytest.raises(BadSignature):
        verify_signature(KEY, {}, BODY, now=NOW)


def test_wrong_key_is_refused() -> None:
    """A signature made with another key is refused."""
    with pytest.raises(BadSignature, match="matches"):
        verify_signature(KEY, sign(b"not the key", BODY), BODY, now=NOW)


def test_tampered_body_is_refused() -> None:
    """A body changed after signing is refused."""
    headers = sign(KEY, BODY)
    with pytest.raises(BadSignature):
        verify_signature(KEY, headers, BODY.replace(b"completed", b"failed"), now=NOW)


def test_tampered_id_or_timestamp_is_refused() -> None:
    """Changing the signed webhook-id or timestamp invalidates the signature."""
    for header, value in (("webhook-id", "msg_2"), ("webhook-timestamp", str(NOW + 1))):
        headers = sign(KEY, BODY) | {header: value}
        with pytest.raises(BadSignature):
            verify_signature(KEY, headers, BODY, now=NOW)


@pytest.mark.parametrize("signature", ["v2,{sig}", "{sig}", "v1,", "v1", "", "v1,AAAA"])
def test_malformed_signature_is_refused(signature: str) -> None:
    """Signatures of another version, without a version, or empty are refused."""
    headers = sign(KEY, BODY)
    good = headers["webhook-signature"].removeprefix("v1,")
    headers["webhook-signature"] = signature.format(sig=good)
    with pytest.raises(BadSignature):
        verify_signature(KEY, headers, BODY, now=NOW)


@pytest.mark.parametrize("age", [301, 3600, -301, -3600])
def test_stale_or_future_timestamp_is_refused(age: int) -> None:
    """A timestamp more than five minutes before or after now is refused, even if signed."""
    headers = sign(KEY, BODY, timestamp=NOW - age)
    with pytest.raises(BadSignature, match="five minutes"):
        verify_signature(KEY, headers, BODY, now=NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1.5e9", "0x10", "", "1750000000.0"])
def test_non_numeric_timestamp_is_refused(timestamp: str) -> None:
    """A webhook-timestamp that is not whole seconds is refused."""
    headers = sign(KEY, BODY, timestamp=timestamp)
    with pytest.raises(BadSignature):
        verify_signature(KEY, headers, BODY, now=NOW)


# parse_job


WORK_SAMPLE = load_dialect("work-sample")


def test_parse_job_returns_the_object() -> None:
    """A JSON object with a string id and state is the job, other fields kept; its id,
    state and bytes are the result a waiter takes."""
    job = {"id": "abc", "state": "completed", "proof": "A" * 40, "extra": [1]}
    body = json.dumps(job).encode()
    assert parse_job(body, WORK_SAMPLE) == (job, Result("abc", "completed", body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "object"),
        (b'"abc"', "object"),
        (b"null", "object"),
        (b'{"state": "completed"}', "job id"),
        (b'{"id": "", "state": "completed"}', "job id"),
        (b'{"id": 7, "state": "completed"}', "job id"),
        (b'{"id": "abc"}', "state"),
        (b'{"id": "abc", "state": 1}', "state"),
    ],
)
def test_parse_job_refuses_bad_bodies(body: bytes, message: str) -> None:
    """Bodies that are not a JSON object with a job id and state are BadRequest."""
    with pytest.raises(BadRequest, match=message):
        parse_job(body, WORK_SAMPLE)


# Signed callbacks through the app.


def _signed_request(job: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(job).encode()
    headers = sign(KEY, body, timestamp=int(time.time()))
    return body, headers | {"content-type": "application/json"}


async def _post(proxy: ProxyUnderTest, job_id: str, body: bytes, headers: dict[str, str]) -> int:
    upstream = proxy.upstream
    assert upstream.to_proxy is not None
    response = await upstream.to_proxy.post(
        upstream.callbacks[job_id], content=body, headers=headers
    )
    return response.status_code


async def test_signed_callback_resolves_the_held_request(proxy_factory: ProxyFactory) -> None:
    """With a callback secret set, a correctly signed callback answers the client."""
    async with proxy_factory(callback_secret=SECRET) as proxy:
        request, job_id = await proxy.held_job()
        job = proxy.upstream.finish(job_id)
        assert await _post(proxy, job_id, *_signed_request(job)) == 200
        response = await request
    assert response.status_code == 200
    assert response.json() == job


async def test_unsigned_and_forged_callbacks_are_401(proxy_factory: ProxyFactory) -> None:
    """Unsigned, forged or stale callbacks get 401 and leave the job waiting for the real one."""
    async with proxy_factory(callback_secret=SECRET) as proxy:
        request, job_id = await proxy.held_job()
        job = proxy.upstream.finish(job_id)
        forged_job = job | {"proof": "F" * 40}
        body = json.dumps(forged_job).encode()

        unsigned = await proxy.upstream.callback(job_id, forged_job)
        assert unsigned.status_code == 401
        assert unsigned.json()["error"] == "bad_signature"
        forged = sign(b"guessed key", body, timestamp=int(time.time()))
        assert await _post(proxy, job_id, body, forged) == 401
        stale = sign(KEY, body, timestamp=int(time.time()) - 3600)
        assert await _post(proxy, job_id, body, stale) == 401
        _, genuine_headers = _signed_request(job)
        assert await _post(proxy, job_id, body, genuine_headers) == 401  # body swapped
        assert not request.done()
        assert len(proxy.services.waiters) == 1

        assert await _post(proxy, job_id, *_signed_request(job)) == 200
        response = await request
    assert response.status_code == 200
    assert response.json() == job


async def test_without_a_secret_unsigned_callbacks_are_accepted(proxy: ProxyUnderTest) -> None:
    """With no callback secret configured, callbacks need no signature."""
    request, job_id = await proxy.held_job()
    job = proxy.upstream.finish(job_id)
    assert (await proxy.upstream.callback(job_id)).status_code == 200
    assert (await request).json() == job
