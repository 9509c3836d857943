"""Job proofs and the jobclient's proof bundle (``jobserver/proofs.py``)."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest

from jobserver import proofs
from jobserver.proofs import (
    NOT_PROOF_SHAPED,
    PROOF_MISMATCH,
    REPEATED,
    BundleCheck,
    CompletedJob,
    InvalidBundle,
    ProofFailure,
    check_bundle,
    decode_bundle,
    encode_bundle,
    is_proof_shaped,
    make_proof,
)
from tests.jobserver.servers import ORIGINAL_ACCOUNT, ORIGINAL_BUNDLE

SECRET = b"secret"
ACCOUNT = "acme"
STARTED_AT = "2024-01-02T03:04:05.678Z"
# HMAC-SHA1("secret", "0123456789abcdef:acme:2024-01-02T03:04:05.678Z"), from openssl dgst.
KNOWN_PROOF = "942677B2F38168EC65DEA50162B70A0D760B31C3"


def job(job_id: str, *, secret: bytes = SECRET, account: str = ACCOUNT) -> CompletedJob:
    return CompletedJob(job_id, STARTED_AT, make_proof(secret, job_id, account, STARTED_AT))


def pack(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode()


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


def test_bundle_is_the_originals_format() -> None:
    """A bundle is base64 of gzip of a JSON list of [id, startedAt, proof], one per job."""
    jobs = [job("a" * 16), job("b" * 13)]
    raw = gzip.decompress(base64.b64decode(encode_bundle(jobs)))
    assert json.loads(raw) == [[j.id, j.started_at, j.proof] for j in jobs]


def test_bundle_round_trips() -> None:
    """decode_bundle gives back the jobs encode_bundle was given, in order."""
    jobs = (job("a" * 16), job("b" * 15), job("c" * 13))
    assert decode_bundle(encode_bundle(jobs)) == jobs


def test_the_original_clients_bundle_reads() -> None:
    """The original client's bundle reads as its 50 jobs, with ids of 13 to 16 hex digits."""
    jobs = decode_bundle(ORIGINAL_BUNDLE)
    assert len(jobs) == 50
    assert jobs[0] == CompletedJob(
        "f2ab274a795e6778", "2017-09-08T18:27:35.749Z", "B72FC9929DC544D8BE841BF00B62983FE162E78C"
    )
    assert {len(j.id) for j in jobs} == {13, 14, 15, 16}
    assert all(re.fullmatch(r"[1-9a-f][0-9a-f]*", j.id) for j in jobs)
    assert all(is_proof_shaped(j.proof) for j in jobs)


def test_the_original_clients_proofs_do_not_match_our_secret() -> None:
    """Made with another server's secret, every proof of the original bundle fails to match."""
    check = check_bundle(SECRET, decode_bundle(ORIGINAL_BUNDLE), ORIGINAL_ACCOUNT)
    assert not check.valid
    assert check.jobs == 50
    assert [f.reason for f in check.failures] == [PROOF_MISMATCH] * 50
    assert check.describe() == "50 of 50 proofs do not check for account 'fozzie@muppets.com'"


def test_wrapped_bundle_reads() -> None:
    """Whitespace inside the text (a bundle wrapped over lines) is ignored."""
    jobs = (job("a" * 16),)
    text = encode_bundle(jobs)
    wrapped = "\n".join(text[i : i + 20] for i in range(0, len(text), 20))
    assert decode_bundle(f"  {wrapped}\n") == jobs


def test_genuine_bundle_checks() -> None:
    """A bundle whose every proof was made with the secret for the account is valid."""
    check = check_bundle(SECRET, (job("a" * 16), job("b" * 16)), ACCOUNT)
    assert check == BundleCheck(account=ACCOUNT, jobs=2, failures=())
    assert check.valid
    assert check.describe() == "2 jobs of account 'acme', all proofs check"


def test_each_failing_job_is_named_with_its_reason() -> None:
    """Forged, misshapen and repeated jobs are each listed, in bundle order, with why."""
    jobs = (
        job("a" * 16),
        job("b" * 16, secret=b"guess"),
        CompletedJob("c" * 16, STARTED_AT, "not hex"),
        job("a" * 16),
        CompletedJob("d" * 16, STARTED_AT, "é" * 40),
    )
    check = check_bundle(SECRET, jobs, ACCOUNT)
    assert check.failures == (
        ProofFailure("b" * 16, PROOF_MISMATCH),
        ProofFailure("c" * 16, NOT_PROOF_SHAPED),
        ProofFailure("a" * 16, REPEATED),
        ProofFailure("d" * 16, NOT_PROOF_SHAPED),
    )
    assert check.describe() == "4 of 5 proofs do not check for account 'acme'"


def test_proofs_of_another_account_do_not_check() -> None:
    """A genuine proof presented under another account does not match."""
    check = check_bundle(SECRET, (job("a" * 16),), "other")
    assert check.failures == (ProofFailure("a" * 16, PROOF_MISMATCH),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is *not* base64!", "not a proof bundle"),
        (base64.b64encode(b'[["a", "b", "c"]]').decode(), "not a proof bundle"),
        (pack(b"not json"), "does not parse"),
        (pack(b"[" * 100_000), "does not parse"),
        (pack(b'{"account": "acme", "jobs": []}'), "not a list of jobs"),
        (pack(b'"text"'), "not a list of jobs"),
        (pack(b"[]"), "empty"),
        (pack(b'[["a", "b"]]'), "entry 0 is not an [id, startedAt, proof] triple"),
        (pack(b'[["a", "b", "c"], ["a", "b", "c", "d"]]'), "entry 1 "),
        (pack(b'[["a", "b", 3]]'), "entry 0 "),
        (pack(b'[["", "b", "c"]]'), "entry 0 "),
        (pack(b'["abc"]'), "entry 0 "),
    ],
)
def test_what_is_not_a_bundle_is_refused_saying_why(text: str, message: str) -> None:
    """Bad base64, not gzip, not JSON, not a list of string triples: InvalidBundle, with why."""
    with pytest.raises(InvalidBundle, match=re.escape(message)):
        decode_bundle(text)


def test_bundle_that_expands_without_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip bomb is refused once it expands past the cap, not decompressed in full."""
    monkeypatch.setattr(proofs, "MAX_BUNDLE_JSON", 1000)
    bomb = base64.b64encode(gzip.compress(b" " * 100_000)).decode()
    with pytest.raises(InvalidBundle, match="expands beyond 1000 bytes"):
        proofs.decode_bundle(bomb)
