"""Job proofs and the jobclient's proof bundle (``jobserver/proofs.py``)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from jobserver import proofs
from jobserver.proofs import (
    InvalidBundle,
    decode_bundle,
    encode_bundle,
    is_proof_shaped,
    make_proof,
    verify_bundle,
)

SECRET = b"secret"
ACCOUNT = "acme"
STARTED_AT = "2024-01-02T03:04:05.678Z"
# HMAC-SHA1("secret", "0123456789abcdef:acme:2024-01-02T03:04:05.678Z"), from openssl dgst.
KNOWN_PROOF = "942677B2F38168EC65DEA50162B70A0D760B31C3"


def job(job_id: str, *, secret: bytes = SECRET) -> dict[str, str]:
    return {
        "id": job_id,
        "startedAt": STARTED_AT,
        "proof": make_proof(secret, job_id, ACCOUNT, STARTED_AT),
    }


def bundle(*jobs: dict[str, str], account: str = ACCOUNT) -> dict[str, Any]:
    return {
        "account": account,
        "jobs": list(jobs),
        "timings": {"total": 0.6, "average": 0.55, "deadline": 5.0, "jobs": len(jobs)},
    }


def pack(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw)).decode()


def test_make_proof_known_value() -> None:
    """make_proof is uppercase HMAC-SHA1 of ``id:account:startedAt``."""
    assert make_proof(SECRET, "0123456789abcdef", ACCOUNT, STARTED_AT) == KNOWN_PROOF


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        (KNOWN_PROOF, True),
        (KNOWN_PROOF.lower(), False),
        (KNOWN_PROOF[:-1], False),
        (KNOWN_PROOF + "0", False),
        ("G" * 40, False),
        (None, False),
        (42, False),
    ],
)
def test_is_proof_shaped(value: object, shaped: bool) -> None:
    """Only 40 uppercase hex digits are proof-shaped."""
    assert is_proof_shaped(value) is shaped


def test_bundle_round_trips() -> None:
    """decode_bundle inverts encode_bundle."""
    original = bundle(job("a" * 16), job("b" * 16))
    assert decode_bundle(encode_bundle(original)) == original


def test_verify_bundle_accepts_good_bundle() -> None:
    """A bundle whose every proof was made with the secret verifies and is returned."""
    original = bundle(job("a" * 16), job("b" * 16))
    assert verify_bundle(SECRET, encode_bundle(original)) == original


def test_verify_bundle_rejects_forged_proof() -> None:
    """A well-shaped proof not made with the server's secret is rejected."""
    forged = bundle(job("a" * 16), job("b" * 16, secret=b"guess"))
    with pytest.raises(InvalidBundle, match="invalid proof"):
        verify_bundle(SECRET, encode_bundle(forged))


def test_verify_bundle_rejects_proof_for_other_account() -> None:
    """A genuine proof presented under another account does not verify."""
    with pytest.raises(InvalidBundle, match="invalid proof"):
        verify_bundle(SECRET, encode_bundle(bundle(job("a" * 16), account="other")))


def test_verify_bundle_rejects_duplicate_job() -> None:
    """The same job counted twice is rejected."""
    with pytest.raises(InvalidBundle, match="twice"):
        verify_bundle(SECRET, encode_bundle(bundle(job("a" * 16), job("a" * 16))))


def test_verify_bundle_rejects_garbage_base64() -> None:
    """Text that is not base64 is not a bundle."""
    with pytest.raises(InvalidBundle, match="not a proof bundle"):
        verify_bundle(SECRET, "this is *not* base64!")


def test_verify_bundle_rejects_non_gzip() -> None:
    """Valid base64 of bytes that are not gzip is not a bundle."""
    text = base64.b64encode(b'{"account": "acme"}').decode()
    with pytest.raises(InvalidBundle, match="not a proof bundle"):
        verify_bundle(SECRET, text)


def test_verify_bundle_rejects_non_json() -> None:
    """gzip of text that is not JSON is not a bundle."""
    with pytest.raises(InvalidBundle, match="not a proof bundle"):
        verify_bundle(SECRET, pack(b"not json"))


@pytest.mark.parametrize("document", [[1, 2], "text", 42, None])
def test_verify_bundle_rejects_non_object_json(document: object) -> None:
    """JSON that is not an object is not a bundle."""
    with pytest.raises(InvalidBundle, match="not an object"):
        verify_bundle(SECRET, pack(json.dumps(document).encode()))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"jobs": [job("a" * 16)]}, "no account"),
        ({"account": ACCOUNT, "jobs": []}, "no jobs"),
        ({"account": ACCOUNT, "jobs": ["a" * 16]}, "not an object"),
        ({"account": ACCOUNT, "jobs": [{"id": "a" * 16, "proof": KNOWN_PROOF}]}, "lacks"),
    ],
)
def test_verify_bundle_rejects_incomplete_bundle(document: dict[str, Any], message: str) -> None:
    """A bundle without an account, jobs, or job fields is rejected with the reason."""
    with pytest.raises(InvalidBundle, match=message):
        verify_bundle(SECRET, encode_bundle(document))


def test_bundle_that_expands_without_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip bomb is refused once it expands past the cap, not decompressed in full."""
    monkeypatch.setattr(proofs, "MAX_BUNDLE_JSON", 1000)
    bomb = base64.b64encode(gzip.compress(b" " * 100_000)).decode()
    with pytest.raises(InvalidBundle, match="expands beyond 1000 bytes"):
        proofs.decode_bundle(bomb)
