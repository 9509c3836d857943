"""Callback delivery: POST the finished job's JSON to its callback URL, signed, with retries.

A job is sent when it ends; one whose dialect asks for it (a prediction whose events
filter has ``start``) also when it starts running. Either is the job's JSON of its
dialect (:meth:`jobserver.jobs.Job.to_json`) at that moment.

Signing follows the Standard Webhooks scheme when ``callback_secret`` is set:
``webhook-id`` (one id per delivery, the same on every retry and on an injected
duplicate, so receivers can de-duplicate), ``webhook-timestamp`` (unix seconds of the
attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>``.

Connection errors, timeouts and 5xx answers are retried with capped exponential backoff
and jitter, up to ``callback_attempts`` attempts; any other answer is final.

In the order ``callback_order`` says: ``in_order`` (the default) sends each callback in
a task of its own as soon as its job ends; ``shuffled`` puts it in one pending pool, from
which ``callback_senders`` sender tasks each take a callback at random (a seeded stream)
and deliver it, as a job server that sends from a bounded pool does: under a burst,
callbacks come late and out of order. The pool is a list a sender swap-removes from, so
a burst of any size costs O(1) per callback.

This module decides what to send and when; each callback's request is built here as
bytes once, and :mod:`jobserver.connections` carries them to the receiver. Given an
``httpx.AsyncClient`` instead of a pool (an app built with a ``callback_transport``, as
tests build one to call back a proxy app in-process), the sender posts the same body
with the same headers through it, under the same attempts, faults and deadlines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import httpx

from infra import http1
from jobserver.config import Settings, webhook_key
from jobserver.connections import ConnectionPool, ExchangeFailed, Origin, exchange_failed
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.jobs import Job, cancel_all

logger = logging.getLogger(__name__)

USER_AGENT = b"jobserver-callbacks/0.1"
MESSAGE_ID_BYTES = 12


def webhook_signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, f"{message_id}.{timestamp}.{body}")>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def callback_origin(url: httpx.URL) -> Origin:
    """Where ``url``'s connections go; :class:`ValueError` for a scheme other than http(s)."""
    try:
        return Origin.of(url)
    except ValueError:
        raise ValueError(f"a callback URL is http or https, not {url.scheme!r}: {url}") from None


def request_head(url: httpx.URL, body_length: int) -> bytes:
    """The request line and the headers every attempt of a callback shares."""
    headers = (
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % body_length),
        (b"user-agent", USER_AGENT),
    )
    return http1.request_head("POST", url.raw_path, url.netloc, headers)


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback to deliver: built once, sent by every attempt and duplicate."""

    url: httpx.URL
    origin: Origin
    head: bytes
    body: bytes
    message_id: str


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Literal["delivered", "rejected", "retry"]
    outcome: str


class CallbackSender:
    """Delivers callbacks in tasks it owns; :meth:`close` cancels what is left."""

    def __init__(
        self,
        carrier: ConnectionPool | httpx.AsyncClient,
        settings: Settings,
        faults: FaultInjector,
        streams: RandomStreams,
    ) -> None:
        self._pool = carrier if isinstance(carrier, ConnectionPool) else None
        self._client = carrier if isinstance(carrier, httpx.AsyncClient) else None
        # The pool bounds the exchanges in flight itself; through a client, this does.
        self._slots = asyncio.Semaphore(settings.callback_connections)
        self._key = webhook_key(settings.callback_secret) if settings.callback_secret else None
        self._attempts = settings.callback_attempts
        self._timeout = settings.callback_timeout
        self._backoff = settings.callback_backoff
        self._backoff_max = settings.callback_backoff_max
        self._faults = faults
        self._streams = streams
        self._latency = settings.latency
        # json.dumps with any option builds a new encoder per call.
        self._encode_json = json.JSONEncoder(separators=(",", ":")).encode
        # Deliveries of their own (in_order), callbacks on their way to the pool
        # (callback_delay) and callbacks sent before a /start answers.
        self._tasks: set[asyncio.Task[None]] = set()
        # callback_order shuffled: the pending pool, a count of it to wait on, and the
        # senders (started with the first callback).
        self._shuffled = settings.callback_order == "shuffled"
        self._sender_count = settings.callback_senders
        self._queued: list[tuple[Callback, str]] = []
        self._queued_count = asyncio.Semaphore(0)
        self._senders: set[asyncio.Task[None]] = set()
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.delivered = 0
        self.rejected = 0
        self.abandoned = 0

    @property
    def pending(self) -> int:
        """Callbacks not yet delivered, rejected or abandoned: sending, waiting, or in the pool."""
        return len(self._tasks) + len(self._queued) + self._sending

    @property
    def queued(self) -> int:
        """Callbacks in the pending pool that no sender has taken yet (shuffled)."""
        return len(self._queued)

    def job_started(self, job: Job) -> None:
        """Send the job, now running, to its callback URL, if its dialect calls back then."""
        if job.callback is not None and job.calls_back_on("start"):
            self.schedule(job.callback, job.to_json(), job.id)

    def job_finished(self, job: Job) -> None:
        """Send the finished job to its callback URL, if it has one (and its /start does not)."""
        if job.callback is not None and not job.callback_inline and job.calls_back_on("completed"):
            self.schedule(job.callback, job.to_json(), job.id)

    def schedule(self, url: httpx.URL, payload: dict[str, Any], job_id: str) -> None:
        """Start delivering ``payload`` to ``url`` (zero, one or two times, per the faults),
        in the order ``callback_order`` says.

        Raises :class:`ValueError` for a URL that is not http or https.
        """
        prepared = self._prepare(url, payload, job_id)
        if prepared is None:
            return
        callback, copies = prepared
        for _ in range(copies):
            if not self._shuffled:
                self._own(self._deliver_late(callback, job_id), f"callback-{job_id}")
            elif self._faults.callback_delay > 0:
                self._own(self._queue_late(callback, job_id), f"callback-{job_id}")
            else:
                self._queue(callback, job_id)

    def send_now(self, job: Job) -> asyncio.Task[None] | None:
        """Deliver the finished job's callback at once, every copy and attempt, in one task
        (whatever ``callback_order``): a /start awaits it before it answers. None when
        there is nothing to send."""
        if job.callback is None or not job.calls_back_on("completed"):
            return None
        prepared = self._prepare(job.callback, job.to_json(), job.id)
        if prepared is None:
            return None
        callback, copies = prepared
        return self._own(self._deliver_copies(callback, job.id, copies), f"callback-{job.id}")

    async def drain(self, timeout: float) -> int:
        """Wait (at most ``timeout``) for the deliveries under way; return how many are left."""
        if self.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
        return self.pending

    async def close(self, timeout: float) -> int:
        """Cancel every unfinished delivery and wait (at most ``timeout``); return the count."""
        unfinished = self.pending
        self._queued.clear()
        self._queued_count = asyncio.Semaphore(0)
        await cancel_all(self._tasks | self._senders, timeout)
        return unfinished

    def _prepare(
        self, url: httpx.URL, payload: dict[str, Any], job_id: str
    ) -> tuple[Callback, int] | None:
        """The callback to send and how many times, or None when the drop fault takes it."""
        copies = self._faults.callback_copies()
        if copies == 0:
            logger.debug("job %s: callback to %s dropped (injected fault)", job_id, url)
            return None
        body = self._encode_json(payload).encode()
        message_id = "msg_" + self._streams.token_hex("message-ids", MESSAGE_ID_BYTES)
        callback = Callback(
            url, callback_origin(url), request_head(url, len(body)), body, message_id
        )
        return callback, copies

    def _own(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._settle()

    def _settle(self) -> None:
        if not self.pending:
            self._idle.set()

    def _queue(self, callback: Callback, job_id: str) -> None:
        """Put a callback in the pending pool, for a sender to take."""
        if not self._senders:
            for number in range(self._sender_count):
                sender = asyncio.create_task(
                    self._send_from_pool(), name=f"callback-sender-{number}"
                )
                self._senders.add(sender)
                sender.add_done_callback(self._senders.discard)
        self._queued.append((callback, job_id))
        self._idle.clear()
        self._queued_count.release()

    async def _queue_late(self, callback: Callback, job_id: str) -> None:
        await asyncio.sleep(self._faults.callback_delay)
        self._queue(callback, job_id)

    async def _send_from_pool(self) -> None:
        """One sender: take a pending callback at random, deliver it, again."""
        rng = self._streams.stream("callback-order")
        queued = self._queued
        while True:
            # One permit per callback in the pool, taken just before the callback.
            await self._queued_count.acquire()
            index = rng.randrange(len(queued))
            queued[index], queued[-1] = queued[-1], queued[index]
            callback, job_id = queued.pop()
            self._sending += 1
            try:
                await self._deliver(callback, job_id)
            except Exception:
                # A sender outlives a failed delivery: the pool keeps its size.
                logger.exception("job %s: callback to %s failed", job_id, callback.url)
            finally:
                self._sending -= 1
                self._settle()

    async def _deliver_copies(self, callback: Callback, job_id: str, copies: int) -> None:
        for _ in range(copies):
            await self._deliver_late(callback, job_id)

    async def _deliver_late(self, callback: Callback, job_id: str) -> None:
        delay = self._faults.callback_delay
        if delay > 0:
            await asyncio.sleep(delay)
        await self._deliver(callback, job_id)

    def request(self, callback: Callback) -> bytes:
        """The bytes of one attempt, signed (with the attempt's timestamp) when a secret is set."""
        if self._key is None:
            return callback.head + b"\r\n" + callback.body
        timestamp = int(time.time())
        signature = webhook_signature(self._key, callback.message_id, timestamp, callback.body)
        return b"%swebhook-id: %s\r\nwebhook-timestamp: %d\r\nwebhook-signature: %s\r\n\r\n%s" % (
            callback.head,
            callback.message_id.encode(),
            timestamp,
            signature.encode(),
            callback.body,
        )

    def headers(self, callback: Callback) -> dict[str, str]:
        """The headers of one attempt through an httpx client, as :meth:`request` writes
        them (httpx adds ``host`` and ``content-length``)."""
        headers = {"content-type": "application/json", "user-agent": USER_AGENT.decode()}
        if self._key is not None:
            timestamp = int(time.time())
            signature = webhook_signature(self._key, callback.message_id, timestamp, callback.body)
            headers["webhook-id"] = callback.message_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = signature
        return headers

    async def _deliver(self, callback: Callback, job_id: str) -> None:
        url = callback.url
        for attempt in range(1, self._attempts + 1):
            if self._latency > 0:
                await asyncio.sleep(self._latency)  # on its way to the receiver
            result = await self._attempt(callback)
            if result.verdict == "delivered":
                self.delivered += 1
                logger.debug("job %s: callback delivered to %s (%s)", job_id, url, result.outcome)
                return
            if result.verdict == "rejected":
                self.rejected += 1
                logger.warning(
                    "job %s: callback to %s rejected with %s; not retried",
                    job_id,
                    url,
                    result.outcome,
                )
                return
            if attempt == self._attempts:
                break
            pause = self.retry_delay(attempt)
            logger.warning(
                "job %s: callback to %s, attempt %d of %d: %s; retrying in %.2f s",
                job_id,
                url,
                attempt,
                self._attempts,
                result.outcome,
                pause,
            )
            await asyncio.sleep(pause)
        self.abandoned += 1
        logger.error(
            "job %s: callback to %s abandoned after %d attempts: %s",
            job_id,
            url,
            self._attempts,
            result.outcome,
        )

    async def _attempt(self, callback: Callback) -> _Attempt:
        try:
            if self._pool is not None:
                status = await self._pool.post(
                    callback.origin, partial(self.request, callback), self._timeout
                )
            else:
                status = await self._post_through_client(callback)
        except ExchangeFailed as exc:
            return _Attempt("retry", str(exc))
        if status >= 500:
            return _Attempt("retry", f"HTTP {status}")
        if status >= 400:
            return _Attempt("rejected", f"HTTP {status}")
        return _Attempt("delivered", f"HTTP {status}")

    async def _post_through_client(self, callback: Callback) -> int:
        """One attempt through the httpx client; its failures are the pool's ExchangeFailed."""
        assert self._client is not None
        async with self._slots:
            headers = self.headers(callback)
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._client.post(
                        callback.url, content=callback.body, headers=headers
                    )
            except TimeoutError:
                raise ExchangeFailed(f"no answer within {self._timeout:g} s") from None
            except httpx.TransportError as exc:
                raise exchange_failed(exc) from exc
        return response.status_code

    def retry_delay(self, attempt: int) -> float:
        """Capped exponential backoff with "equal jitter": between half and all of the step."""
        step = min(self._backoff_max, self._backoff * 2.0 ** (attempt - 1))
        return step / 2 + self._streams.stream("backoff").uniform(0, step / 2)
