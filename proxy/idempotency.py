"""Idempotency-Key: a client's retry gets its first request's job, never a second job.

A request carrying ``Idempotency-Key`` *claims* the key for its callback token. A retry
with the same key and the same body finds the claim and follows that job: it returns
the stored result at once when there is one, else waits for it (and polls the job
server once the job id is known). The same key with another body is a 422.

:class:`LocalResults` keeps claims and results in this process; ``proxy.shared``
keeps them in Redis so a retry may land on any replica.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.errors import BadRequest, IdempotencyConflict
from proxy.jobs import Job

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Claim:
    """Who runs the job for an Idempotency-Key: ``owner`` is True for the first request."""

    owner: bool
    token: str
    job_id: str | None = None


def check_key(value: str) -> str:
    if not 0 < len(value) <= MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        raise BadRequest(f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return value


def fingerprint(fields: dict[str, Any]) -> str:
    """A digest of the request body's meaning (key order and spacing do not matter)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResultStore(Protocol):
    """Claims of Idempotency-Keys and results of jobs, by callback token."""

    async def claim(self, key: str, digest: str, token: str) -> Claim: ...
    async def bind_job(self, key: str, job_id: str) -> None: ...
    async def release(self, key: str, token: str) -> None: ...
    async def job_id_for(self, key: str) -> str | None: ...
    async def put_result(self, token: str, job: Job) -> bool: ...
    async def get_result(self, token: str) -> Job | None: ...
    def tracks(self, token: str) -> bool: ...


@dataclass(slots=True)
class _Record:
    digest: str
    token: str
    job_id: str | None = None


class ExpiringMap:
    """A dict whose entries all live ``ttl`` seconds; expired ones leave from the front."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any:
        self._expire()
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: str, value: Any) -> None:
        self._expire()
        self._entries.pop(key, None)
        self._entries[key] = (time.monotonic() + self._ttl, value)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[key]


class LocalResults:
    """The in-process store: claims and results live as long as ``ttl``."""

    def __init__(self, ttl: float) -> None:
        self._claims = ExpiringMap(ttl)
        self._results = ExpiringMap(ttl)
        self._tracked = ExpiringMap(ttl)

    async def claim(self, key: str, digest: str, token: str) -> Claim:
        record: _Record | None = self._claims.get(key)
        if record is None:
            self._claims.put(key, _Record(digest, token))
            self._tracked.put(token, True)
            return Claim(owner=True, token=token)
        if record.digest != digest:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was used with another body")
        return Claim(owner=False, token=record.token, job_id=record.job_id)

    async def bind_job(self, key: str, job_id: str) -> None:
        record: _Record | None = self._claims.get(key)
        if record is not None:
            record.job_id = job_id

    async def release(self, key: str, token: str) -> None:
        record: _Record | None = self._claims.get(key)
        if record is not None and record.token == token:
            self._claims.pop(key)

    async def job_id_for(self, key: str) -> str | None:
        record: _Record | None = self._claims.get(key)
        return None if record is None else record.job_id

    async def put_result(self, token: str, job: Job) -> bool:
        if self._results.get(token) is not None:
            return False
        self._results.put(token, job)
        return True

    async def get_result(self, token: str) -> Job | None:
        result: Job | None = self._results.get(token)
        return result

    def tracks(self, token: str) -> bool:
        """Whether a result for ``token`` must be kept for an Idempotency-Key retry."""
        return self._tracked.get(token) is not None
