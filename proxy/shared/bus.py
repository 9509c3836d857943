"""Shared mode: several replicas behind a load balancer, one Redis between them.

Waiters stay in the replica that holds the client. A callback token names that replica
and carries a MAC made with that replica's token key (``<replica>.<random>.<mac>``).
Every replica registers itself in Redis with its key and refreshes the entry every
``HEARTBEAT_INTERVAL`` (an entry not refreshed for ``REPLICA_TTL`` is gone), and keeps a
local view of the live replicas. A replica that receives a callback for another
replica's token first checks, with that view and one HMAC, that a live replica issued
it: a forged token, or one of a replica that is gone, is a 404 and writes nothing. A
genuine one is *stored* in Redis with a TTL (``SET NX``, so duplicates are harmless),
then *published* on the holder's channel. Pub/sub loses what is sent while a subscriber
is away, so after every (re)subscribe the holder re-reads the stored results of the
waiters it holds: a message lost in a reconnect loses no job.

Idempotency-Key claims live here too (see ``proxy.holding.keyed``), so a client's retry
on any replica finds its job. This module is the one place where Redis errors become
:class:`BusUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from proxy.answers import encode
from proxy.bodies import decode_json
from proxy.dialects.dialect import Dialect, UnreadableJob
from proxy.errors import BusUnavailable, IdempotencyConflict
from proxy.holding.keyed import Claim
from proxy.jobs import Job
from proxy.waiting.deliveries import Delivery
from proxy.waiting.tokens import replica_of, token_is_genuine
from proxy.waiting.waiters import Result, WaiterRegistry, log_late

logger = logging.getLogger(__name__)

PREFIX = "jobproxy:"
REDIS_TIMEOUT = 2.0
HEALTH_CHECK_INTERVAL = 5
REREAD_BATCH = 500
RECONNECT_BASE = 0.1
RECONNECT_CAP = 2.0
# A claim's value is "<token> <digest> <ref or ->"; only the owner of that token may
# release it, checked and deleted in one step on the server.
RELEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, #ARGV[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def connect(url: str) -> Redis:
    """A client whose every call fails fast instead of hanging when Redis is away."""
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        decode_responses=True,
    )


REPLICAS_KEY = f"{PREFIX}replicas"  # hash: replica id -> "<token key, hex> <alive until>"
REPLICAS_CHANNEL = f"{PREFIX}replicas"  # arrivals and departures, heard at once
JOBS_CHANNEL = f"{PREFIX}jobs"  # the events of tracked jobs (proxy.shared_jobs)
HEARTBEAT_INTERVAL = 2.0
REPLICA_TTL = 6.0  # seconds without a heartbeat after which a replica is gone


def error_words(exc: BaseException) -> str:
    """An error's words for a log line that goes on after them: redis-py's end in a full
    stop ("... Connection refused.")."""
    return str(exc).rstrip(". ") or type(exc).__name__


def channel_of(replica: str) -> str:
    return f"{PREFIX}replica:{replica}"


@dataclass(frozen=True, slots=True)
class Peer:
    """A live replica as this one knows it: its token key and until when it is alive."""

    key: bytes
    until: float  # unix time

    @classmethod
    def parse(cls, entry: str) -> Peer | None:
        try:
            key, until = entry.split(" ")
            return cls(bytes.fromhex(key), float(until))
        except ValueError:
            return None

    def entry(self) -> str:
        return f"{self.key.hex()} {self.until:.3f}"


def _result_key(token: str) -> str:
    return f"{PREFIX}result:{token}"


def _claim_key(key: str) -> str:
    return f"{PREFIX}idem:{key}"


def _job_key(key: str) -> str:
    return f"{PREFIX}idem-job:{key}"


@contextlib.contextmanager
def _bus_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"Redis is unavailable ({action}): {exc}") from exc


class RedisBus:
    """Results, claims and callback routing through Redis, for one replica."""

    def __init__(self, redis: Redis, waiters: WaiterRegistry, ttl: float, dialect: Dialect) -> None:
        self._redis = redis
        self._dialect = dialect
        self._waiters = waiters
        self._ttl = max(1, round(ttl))
        self._release = redis.register_script(RELEASE_SCRIPT)
        self.replica_id = waiters.replica_id
        self.subscribed = asyncio.Event()
        self._peers: dict[str, Peer] = {}
        #: Hears the events of tracked jobs that other replicas publish.
        self.on_job_event: Callable[[str], None] | None = None

    @property
    def redis(self) -> Redis:
        return self._redis

    # -- replicas --------------------------------------------------------------------

    def live_replicas(self) -> list[str]:
        now = time.time()
        return sorted(replica for replica, peer in self._peers.items() if peer.until > now)

    def issued_by_live_replica(self, token: str) -> bool:
        """Whether a replica alive now issued ``token``: a lookup and one HMAC."""
        peer = self._peers.get(replica_of(token))
        return peer is not None and peer.until > time.time() and token_is_genuine(token, peer.key)

    async def keep_alive(self) -> None:
        """Register this replica and refresh the view of the others until cancelled."""
        announced = False
        while True:
            try:
                await self._heartbeat(announce=not announced)
                announced = True
            except (RedisError, OSError, TimeoutError) as exc:
                logger.debug("replica heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _heartbeat(self, *, announce: bool) -> None:
        me = Peer(self._waiters.token_key, time.time() + REPLICA_TTL).entry()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(REPLICAS_KEY, self.replica_id, me)
            pipe.hgetall(REPLICAS_KEY)
            _, entries = await pipe.execute()
        if announce:
            await self._redis.publish(REPLICAS_CHANNEL, f"{self.replica_id} {me}")
        now = time.time()
        peers = {replica: Peer.parse(entry) for replica, entry in entries.items()}
        self._peers = {r: p for r, p in peers.items() if p is not None and p.until > now}
        if gone := [replica for replica in peers if replica not in self._peers]:
            await self._redis.hdel(REPLICAS_KEY, *gone)

    async def leave(self) -> None:
        """Tell the other replicas at once that this one is gone (best effort)."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._redis.hdel(REPLICAS_KEY, self.replica_id)
            await self._redis.publish(REPLICAS_CHANNEL, f"{self.replica_id} -")

    def _peer_changed(self, data: str) -> None:
        replica, _, entry = data.partition(" ")
        peer = Peer.parse(entry)
        if peer is None:
            self._peers.pop(replica, None)
        else:
            self._peers[replica] = peer

    # -- callbacks -------------------------------------------------------------------

    def is_foreign(self, token: str) -> bool:
        return replica_of(token) != self.replica_id

    async def forward(self, token: str, job: Job) -> Delivery:
        """Store a result for another replica's waiter, then tell that replica; a token
        that no live replica issued is ``UNKNOWN`` and nothing is written."""
        if not self.issued_by_live_replica(token):
            return Delivery.UNKNOWN
        if not await self.put_result(token, job):
            return Delivery.DUPLICATE
        message = encode({"token": token, "job": job})
        with _bus_errors("publish"):
            receivers = await self._redis.publish(channel_of(replica_of(token)), message)
        return Delivery.OK if receivers else Delivery.STORED

    async def listen(self) -> None:
        """Receive results for this replica's waiters until cancelled, reconnecting."""
        delay = RECONNECT_BASE
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    channels = (channel_of(self.replica_id), REPLICAS_CHANNEL, JOBS_CHANNEL)
                    await pubsub.subscribe(*channels)
                    # Re-read only once Redis has confirmed the subscription (a refusal
                    # comes back as a reply, not from subscribe()): a result published
                    # before that moment is then surely stored and found here.
                    await self._confirmed(pubsub, len(channels))
                    recovered = await self._reread()
                    self.subscribed.set()
                    delay = RECONNECT_BASE
                    logger.info(
                        "subscribed to %s; %d results recovered from Redis",
                        channel_of(self.replica_id),
                        recovered,
                    )
                    async for message in pubsub.listen():
                        self._dispatch(message)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.subscribed.is_set():
                    words = error_words(exc)
                    logger.warning("lost the Redis subscription (%s); reconnecting", words)
                self.subscribed.clear()
                await asyncio.sleep(delay)
                delay = min(RECONNECT_CAP, delay * 2)

    async def _confirmed(self, pubsub: PubSub, channels: int) -> None:
        """Wait for Redis to confirm ``channels`` subscriptions; raise if it refuses."""
        confirmed = 0
        async with asyncio.timeout(REDIS_TIMEOUT):
            while confirmed < channels:
                message = await pubsub.get_message(timeout=REDIS_TIMEOUT)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    confirmed += 1
                else:
                    self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = message.get("channel")
        if channel == REPLICAS_CHANNEL:
            self._peer_changed(message["data"])
        elif channel == JOBS_CHANNEL:
            if self.on_job_event is not None:
                self.on_job_event(message["data"])
        else:
            self._deliver(message["data"])

    def _deliver(self, data: str) -> None:
        try:
            message = decode_json(data)
            token, job = message["token"], message["job"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %s", channel_of(self.replica_id))
            return
        self._resolve(token, job)

    def _resolve(self, token: str, job: Job) -> bool:
        """Hand a result from Redis to its waiter, answering it soon; True if it counted."""
        try:
            job_id, state = self._dialect.read(job)
        except UnreadableJob as exc:
            logger.warning("ignored a result for token %s that is not a job: %s", token, exc)
            return False
        assert state is not None  # read() requires one
        delivery = self._waiters.resolve(token, Result(job_id, state, encode(job)))
        if delivery is Delivery.OK:
            waiter = self._waiters.get(token)
            if waiter is not None:
                self._waiters.respond_soon(waiter)
        elif delivery is Delivery.LATE:
            log_late(job_id)
        elif delivery is not Delivery.EARLY:
            logger.debug("dropped the result of job %s: %s", job_id, delivery.value)
        return delivery is Delivery.OK

    async def _reread(self) -> int:
        """Resolve held waiters whose results were stored while we were not listening."""
        tokens = [waiter.token for waiter in self._waiters if not waiter.settled]
        recovered = 0
        for start in range(0, len(tokens), REREAD_BATCH):
            batch = tokens[start : start + REREAD_BATCH]
            values = await self._redis.mget([_result_key(token) for token in batch])
            for token, value in zip(batch, values, strict=True):
                try:
                    job = None if value is None else decode_json(value)
                except ValueError:
                    logger.warning("ignored a malformed stored result for token %s", token)
                    continue
                if isinstance(job, dict):
                    recovered += self._resolve(token, job)
        return recovered

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    # -- the ResultStore protocol (proxy.idempotency) --------------------------------

    async def claim(self, key: str, digest: str, token: str, ref: str | None) -> Claim:
        value = f"{token} {digest} {ref or '-'}"
        with _bus_errors("claim"):
            for _ in range(3):  # the key may expire between SET NX and GET
                if await self._redis.set(_claim_key(key), value, nx=True, ex=self._ttl):
                    return Claim(owner=True, token=token, ref=ref)
                existing = await self._redis.get(_claim_key(key))
                if existing is None:
                    continue
                their_token, their_digest, their_ref = [*str(existing).split(" "), "-"][:3]
                if their_digest != digest:
                    raise IdempotencyConflict("this Idempotency-Key was used with another body")
                job_id = await self._redis.get(_job_key(key))
                return Claim(
                    False,
                    their_token,
                    str(job_id) if job_id else None,
                    None if their_ref == "-" else their_ref,
                )
        raise BusUnavailable("the Idempotency-Key kept expiring while being claimed")

    async def bind_job(self, key: str, job_id: str) -> None:
        with _bus_errors("bind job"):
            await self._redis.set(_job_key(key), job_id, ex=self._ttl)

    async def release(self, key: str, token: str) -> None:
        with _bus_errors("release claim"):
            await self._release(keys=[_claim_key(key)], args=[f"{token} "])

    async def job_id_for(self, key: str) -> str | None:
        with _bus_errors("read job id"):
            job_id = await self._redis.get(_job_key(key))
        return str(job_id) if job_id else None

    async def put_result(self, token: str, job: Job) -> bool:
        data = encode(job)
        with _bus_errors("store result"):
            return bool(await self._redis.set(_result_key(token), data, nx=True, ex=self._ttl))

    async def get_result(self, token: str) -> Job | None:
        with _bus_errors("read result"):
            value = await self._redis.get(_result_key(token))
        try:
            result: Any = None if value is None else decode_json(value)
        except ValueError:
            return None
        return result if isinstance(result, dict) else None
