"""Waiters: the futures that park held client requests until their job's result arrives.

A waiter is registered under a fresh, unguessable callback token *before* the job is
started upstream, so a callback can never arrive before its waiter exists. A token is
``<replica>.<128 random bits>.<128-bit MAC>``: the replica that holds the waiter, and a
MAC with that replica's key, so that any replica can refuse a forged token at once. The holder
removes its waiter in a ``finally`` (see :meth:`WaiterRegistry.hold`), whatever happened:
answered, timed out, client gone or shut down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from proxy.errors import AtCapacity, ProxyError, ShuttingDown

logger = logging.getLogger(__name__)

TOKEN_BYTES = 16  # 128 bits of randomness per callback token
MAC_BYTES = 16  # a token's MAC, so that any replica can tell a forged one at once
TOKEN_KEY_BYTES = 32
REPLICA_ID_BYTES = 4
SPENT_TOKENS_KEPT = 16_384  # only to tell a late duplicate from a never-issued token

Job = dict[str, Any]


class Delivery(str, Enum):
    """What became of a result handed to the registry."""

    OK = "ok"
    STORED = "stored"  # kept for an Idempotency-Key retry; no waiter is listening now
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"  # another job's result on this waiter's token: refused
    HELD = "held"  # came before /start named the job: judged once the id is known


def new_replica_id() -> str:
    return secrets.token_hex(REPLICA_ID_BYTES)


def replica_of(token: str) -> str:
    """The replica named by a callback token (``<replica>.<random>.<mac>``), or ``""``."""
    replica, dot, _ = token.partition(".")
    return replica if dot else ""


def token_mac(key: bytes, stem: str) -> str:
    """The MAC part of a token: 128 bits of HMAC-SHA256(key, stem), base64url."""
    digest = hmac.new(key, stem.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_is_genuine(token: str, key: bytes) -> bool:
    """Whether ``token`` was issued with ``key`` (one HMAC, compared in constant time)."""
    stem, dot, mac = token.rpartition(".")
    return bool(dot) and hmac.compare_digest(mac.encode(), token_mac(key, stem).encode())


@dataclass(slots=True, eq=False)
class Waiter:
    """One held request: its token, the future its result lands in, and its job id.

    Only the job that ``/start`` named may settle it. A result that arrives before that
    answer is held in ``early`` with a verdict future, and judged in :meth:`bind`.
    """

    token: str
    future: asyncio.Future[Job]
    job_id: str | None = None
    # The job started between sending its /start (started_at) and reading the answer
    # (accepted_at); nothing more precise is known before its result.
    started_at: float = field(default_factory=time.monotonic)
    accepted_at: float = field(default_factory=time.monotonic)
    answered_by: str = ""
    poll: asyncio.Task[None] | None = None
    early: list[tuple[Job, asyncio.Future[Delivery] | None]] | None = None
    client_left: bool = False

    def settle(self, job: Job, via: str) -> bool:
        """Give the waiter its result unless it has one; True if this one counted."""
        if self.future.done():
            return False
        self.answered_by = via
        self.future.set_result(job)
        return True

    def fail(self, error: ProxyError) -> bool:
        """Answer the waiter with ``error`` unless it has an answer; True if this counted."""
        if self.future.done():
            return False
        self.future.set_exception(error)
        return True

    def offer(self, job: Job, verdict: asyncio.Future[Delivery] | None = None) -> Delivery:
        """A result from a callback: taken only if it is this waiter's job. Before the
        job is known it is held, and ``verdict`` (if any) learns its fate later."""
        if self.job_id is None:
            self.early = [*(self.early or ()), (job, verdict)]
            return Delivery.HELD
        if job.get("id") != self.job_id:
            return Delivery.MISMATCH
        return Delivery.OK if self.settle(job, "callback") else Delivery.DUPLICATE

    def bind(self, job_id: str) -> None:
        """The job server named the job: judge the results that came before."""
        self.job_id = job_id
        early, self.early = self.early, None
        for job, verdict in early or ():
            delivery = self.offer(job)
            if verdict is not None and not verdict.done():
                verdict.set_result(delivery)

    def release_early(self) -> None:
        """The waiter is gone: results held for it were for nobody."""
        for _, verdict in self.early or ():
            if verdict is not None and not verdict.done():
                verdict.set_result(Delivery.UNKNOWN)
        self.early = None


class WaiterRegistry:
    """Every waiter of this process, by callback token."""

    def __init__(self, replica_id: str, max_pending: int) -> None:
        self.replica_id = replica_id
        self.max_pending = max_pending
        # Signs this replica's tokens; in shared mode the other replicas learn it from
        # Redis, so a callback reaching any of them is checked with one HMAC.
        self.token_key = secrets.token_bytes(TOKEN_KEY_BYTES)
        self._waiters: dict[str, Waiter] = {}
        self._spent: OrderedDict[str, None] = OrderedDict()
        self._emptied = asyncio.Event()
        self._emptied.set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters.values()))

    def get(self, token: str) -> Waiter | None:
        return self._waiters.get(token)

    @contextlib.contextmanager
    def hold(self) -> Iterator[Waiter]:
        """Register a waiter under a fresh token for the duration of the block."""
        if self.closing:
            raise ShuttingDown("the proxy is shutting down")
        if len(self._waiters) >= self.max_pending:
            raise AtCapacity(f"the proxy already holds {self.max_pending} requests")
        stem = f"{self.replica_id}.{secrets.token_urlsafe(TOKEN_BYTES)}"
        token = f"{stem}.{token_mac(self.token_key, stem)}"
        waiter = Waiter(token, asyncio.get_running_loop().create_future())
        self._waiters[token] = waiter
        self._emptied.clear()
        try:
            yield waiter
        finally:
            del self._waiters[token]
            self._remember_spent(token)
            waiter.release_early()
            if waiter.poll is not None:
                waiter.poll.cancel()
            if not waiter.future.done():
                waiter.future.cancel()
            elif not waiter.future.cancelled():
                waiter.future.exception()  # mark retrieved: an unread failure is not an error
            if not self._waiters:
                self._emptied.set()

    def resolve(self, token: str, job: Job) -> Delivery:
        """Hand a finished job to the waiter holding ``token`` (``HELD``: judged later)."""
        waiter = self._waiters.get(token)
        if waiter is None:
            return Delivery.DUPLICATE if token in self._spent else Delivery.UNKNOWN
        return waiter.offer(job)

    async def deliver(self, token: str, job: Job) -> Delivery:
        """:meth:`resolve`, waiting for the verdict on a result that came early."""
        waiter = self._waiters.get(token)
        if waiter is None or waiter.job_id is not None:
            return self.resolve(token, job)
        verdict: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        waiter.offer(job, verdict)
        return await verdict

    def fail_all(self, error: ProxyError) -> int:
        """Answer every waiter still pending with ``error``; returns how many."""
        return sum(waiter.fail(error) for waiter in self._waiters.values())

    async def drain(self, timeout: float) -> tuple[int, int]:
        """Refuse new waiters, wait up to ``timeout`` for held ones, fail the rest.

        Returns (answered while draining, failed with 503).
        """
        self.closing = True
        held = len(self._waiters)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wait_until_empty()
        failed = self.fail_all(ShuttingDown("the proxy shut down before the job finished"))
        return held - failed, failed

    async def wait_until_empty(self) -> None:
        """Return once no waiter is held (at once when none is)."""
        await self._emptied.wait()

    def _remember_spent(self, token: str) -> None:
        self._spent[token] = None
        if len(self._spent) > SPENT_TOKENS_KEPT:
            self._spent.popitem(last=False)
