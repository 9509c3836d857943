"""Job proofs and the jobclient's proof bundle.

A job's proof is HMAC-SHA1(server secret, ``id:account:startedAt``) in 40 uppercase hex
digits, so only the job server that ran the job can make it and anyone holding the
secret can check it later. The jobclient packs the proofs of a run into a *bundle*:
base64 of gzip of a JSON object ``{"account", "jobs": [{"id", "startedAt", "proof"}],
"timings"}``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
import json
import re
from typing import Any

PROOF_PATTERN = re.compile(r"[0-9A-F]{40}")
# A bundle of 10,000 jobs is about 1 MB of JSON; anything far larger is an attack.
MAX_BUNDLE_JSON = 64 * 1024 * 1024


class InvalidBundle(ValueError):
    """A proof bundle that cannot be decoded or whose proofs do not check out."""


def make_proof(secret: bytes, job_id: str, account: str, started_at: str) -> str:
    """The proof the job server attaches to a completed job."""
    message = f"{job_id}:{account}:{started_at}".encode()
    return hmac.new(secret, message, hashlib.sha1).hexdigest().upper()


def is_proof_shaped(value: object) -> bool:
    """True for 40 uppercase hex digits: what a client can check without the secret."""
    return isinstance(value, str) and PROOF_PATTERN.fullmatch(value) is not None


def encode_bundle(bundle: dict[str, Any]) -> str:
    """base64(gzip(JSON)) of a bundle, as printed after ``Proof`` by the jobclient."""
    raw = json.dumps(bundle, separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")


def decode_bundle(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_bundle`; raises :class:`InvalidBundle` on any damage."""
    try:
        compressed = base64.b64decode(text.strip(), validate=True)
        # Decompress in bounded steps: a small bundle must not expand without limit.
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            raw = stream.read(MAX_BUNDLE_JSON + 1)
    except (ValueError, OSError, EOFError) as exc:  # bad base64 is a ValueError too
        raise InvalidBundle(f"not a proof bundle: {exc}") from None
    if len(raw) > MAX_BUNDLE_JSON:
        raise InvalidBundle(f"not a proof bundle: it expands beyond {MAX_BUNDLE_JSON} bytes")
    try:
        bundle = json.loads(raw)
    except ValueError as exc:
        raise InvalidBundle(f"not a proof bundle: {exc}") from None
    if not isinstance(bundle, dict):
        raise InvalidBundle("not a proof bundle: the JSON is not an object")
    return bundle


def verify_bundle(secret: bytes, text: str) -> dict[str, Any]:
    """Decode a bundle and check every job's proof; return the bundle when all are valid."""
    bundle = decode_bundle(text)
    account = bundle.get("account")
    jobs = bundle.get("jobs")
    if not isinstance(account, str) or not account:
        raise InvalidBundle("the bundle has no account")
    if not isinstance(jobs, list) or not jobs:
        raise InvalidBundle("the bundle has no jobs")
    seen: set[str] = set()
    for index, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise InvalidBundle(f"job {index} is not an object")
        job_id, started_at, proof = job.get("id"), job.get("startedAt"), job.get("proof")
        if not (isinstance(job_id, str) and isinstance(started_at, str)):
            raise InvalidBundle(f"job {index} lacks id or startedAt")
        if job_id in seen:
            raise InvalidBundle(f"job {job_id} appears twice")
        seen.add(job_id)
        expected = make_proof(secret, job_id, account, started_at)
        if not (isinstance(proof, str) and hmac.compare_digest(proof, expected)):
            raise InvalidBundle(f"job {job_id} has an invalid proof")
    return bundle
