"""Job proofs and the jobclient's proof bundle.

A job's proof is HMAC-SHA1(server secret, ``id:account:startedAt``) in 40 uppercase hex
digits, so only the job server that ran the job can make it and anyone holding the
secret can check it later. The jobclient packs the proofs of a run into a *bundle*, in
the original client's format: base64 of gzip of a JSON list of ``[id, startedAt, proof]``
triples, one per job. The bundle does not name the account, so whoever checks it must
know it (the job server finds it in its own job table for the jobs it ran).

A bundle that cannot be read is an :class:`InvalidBundle`; one that can is checked job
by job into a :class:`BundleCheck` that lists every job whose proof does not check.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PROOF_PATTERN = re.compile(r"[0-9A-F]{40}")
# A bundle of 10,000 jobs is about 1 MB of JSON; anything far larger is an attack.
MAX_BUNDLE_JSON = 64 * 1024 * 1024
NOT_PROOF_SHAPED = "the proof is not 40 uppercase hex digits"
PROOF_MISMATCH = "the proof does not match the id, the account and startedAt"
REPEATED = "the job appears more than once in the bundle"


class InvalidBundle(ValueError):
    """Text that is not a proof bundle in the original's format."""


@dataclass(frozen=True, slots=True)
class CompletedJob:
    """One job of a bundle: what a successful answer carries into it."""

    id: str
    started_at: str
    proof: str


@dataclass(frozen=True, slots=True)
class ProofFailure:
    """A job of a bundle whose proof does not check, and why."""

    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BundleCheck:
    """The verdict on every job of a bundle, checked against one account."""

    account: str
    jobs: int
    failures: tuple[ProofFailure, ...]

    @property
    def valid(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        """One sentence: all proofs check, or how many do not."""
        if self.valid:
            return f"{self.jobs} jobs of account {self.account!r}, all proofs check"
        return (
            f"{len(self.failures)} of {self.jobs} proofs do not check for account {self.account!r}"
        )


def make_proof(secret: bytes, job_id: str, account: str, started_at: str) -> str:
    """The proof the job server attaches to a completed job."""
    message = f"{job_id}:{account}:{started_at}".encode()
    return hmac.new(secret, message, hashlib.sha1).hexdigest().upper()


def is_proof_shaped(value: object) -> bool:
    """True for 40 uppercase hex digits: what a client can check without the secret."""
    return isinstance(value, str) and PROOF_PATTERN.fullmatch(value) is not None


def encode_bundle(jobs: Iterable[CompletedJob]) -> str:
    """base64(gzip(JSON list of ``[id, startedAt, proof]``)), as printed after ``Proof :``."""
    triples = [[job.id, job.started_at, job.proof] for job in jobs]
    raw = json.dumps(triples, separators=(",", ":")).encode()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")


def decode_bundle(text: str) -> tuple[CompletedJob, ...]:
    """The jobs of a bundle; raises :class:`InvalidBundle` when it is not one.

    Whitespace anywhere is ignored, so a bundle wrapped over several lines still reads.
    """
    try:
        compressed = base64.b64decode("".join(text.split()), validate=True)
        # Decompress in bounded steps: a small bundle must not expand without limit.
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            raw = stream.read(MAX_BUNDLE_JSON + 1)
    except (ValueError, OSError, EOFError) as exc:  # bad base64 is a ValueError too
        raise InvalidBundle(f"not a proof bundle: {exc}") from None
    if len(raw) > MAX_BUNDLE_JSON:
        raise InvalidBundle(f"not a proof bundle: it expands beyond {MAX_BUNDLE_JSON} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # deep nesting exhausts the parser's stack
        raise InvalidBundle(f"not a proof bundle: the JSON does not parse ({exc})") from None
    if not isinstance(document, list):
        raise InvalidBundle("not a proof bundle: the JSON is not a list of jobs")
    if not document:
        raise InvalidBundle("not a proof bundle: the list of jobs is empty")
    return tuple(_entry(index, entry) for index, entry in enumerate(document))


def _entry(index: int, entry: object) -> CompletedJob:
    if not (
        isinstance(entry, list)
        and len(entry) == 3
        and all(isinstance(part, str) and part for part in entry)
    ):
        raise InvalidBundle(
            f"not a proof bundle: entry {index} is not an [id, startedAt, proof] triple "
            "of non-empty strings"
        )
    job_id, started_at, proof = entry
    return CompletedJob(job_id, started_at, proof)


def check_bundle(secret: bytes, jobs: Sequence[CompletedJob], account: str) -> BundleCheck:
    """Check every job's proof against ``account``; list each job that fails, in order."""
    failures: list[ProofFailure] = []
    seen: set[str] = set()
    for job in jobs:
        if job.id in seen:
            failures.append(ProofFailure(job.id, REPEATED))
            continue
        seen.add(job.id)
        if not is_proof_shaped(job.proof):
            failures.append(ProofFailure(job.id, NOT_PROOF_SHAPED))
            continue
        expected = make_proof(secret, job.id, account, job.started_at)
        if not hmac.compare_digest(job.proof.encode(), expected.encode()):
            failures.append(ProofFailure(job.id, PROOF_MISMATCH))
    return BundleCheck(account=account, jobs=len(jobs), failures=tuple(failures))
