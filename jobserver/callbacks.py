"""Callback delivery: POST the finished job's JSON to its callback URL, signed, with retries.

Signing follows the Standard Webhooks scheme when ``callback_secret`` is set:
``webhook-id`` (one id per delivery, the same on every retry and on an injected
duplicate, so receivers can de-duplicate), ``webhook-timestamp`` (unix seconds of the
attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>``.

Connection errors, timeouts and 5xx answers are retried with capped exponential backoff
and jitter, up to ``callback_attempts`` attempts; any other answer is final.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from jobserver.config import Settings, webhook_key
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


class CookielessClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies.

    A callback receiver has no business setting cookies for the next receiver, and the
    prebuilt requests would never send them anyway; yet httpx parses every answer for
    them, a tenth of a delivery's CPU.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("the callback client keeps no cookies")


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


def build_callback_client(settings: Settings) -> httpx.AsyncClient:
    """The pooled client of all deliveries; the app's lifespan owns and closes it.

    Pool limits are generous because a benchmark may finish 10,000 jobs at once, and the
    simulator must not be what limits it. The aiohttp transport is the default: httpx's
    own pool collapses at that concurrency (DESIGN §1).
    """
    limits = httpx.Limits(
        max_connections=settings.callback_connections,
        max_keepalive_connections=settings.callback_connections,
    )
    transport: httpx.AsyncBaseTransport
    if settings.callback_transport == "aiohttp":
        # Built now, as the transport would: loading the CA certificates takes milliseconds.
        ssl_context = httpx.create_ssl_context(trust_env=False)
        transport = AiohttpTransport(
            limits=limits,
            trust_env=False,
            # The session needs the running loop, so the transport makes it on first use.
            client=lambda: _aiohttp_session(limits, ssl_context),
        )
    else:
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    return CookielessClient(
        transport=transport,
        # The sender's own slots keep requests within the pool, so none waits for a connection.
        timeout=httpx.Timeout(settings.callback_timeout, pool=None),
        # Callback URLs are sent as given: no proxies from the environment, no redirects.
        trust_env=False,
        follow_redirects=False,
    )


def _aiohttp_session(limits: httpx.Limits, ssl_context: ssl.SSLContext) -> aiohttp.ClientSession:
    """The session the aiohttp transport would make, without a cookie jar (see above)."""
    connector = aiohttp.TCPConnector(
        limit=limits.max_connections or 0,
        keepalive_timeout=limits.keepalive_expiry,
        ssl=ssl_context,
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Literal["delivered", "rejected", "retry"]
    outcome: str


class CallbackSender:
    """Delivers callbacks in tasks it owns; :meth:`close` cancels what is left."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        faults: FaultInjector,
        streams: RandomStreams,
    ) -> None:
        self._client = client
        self._key = webhook_key(settings.callback_secret) if settings.callback_secret else None
        self._attempts = settings.callback_attempts
        self._timeout = settings.callback_timeout
        self._request_timeout = httpx.Timeout(settings.callback_timeout).as_dict()
        self._backoff = settings.callback_backoff
        self._backoff_max = settings.callback_backoff_max
        self._faults = faults
        self._streams = streams
        self._latency = settings.latency
        # json.dumps with any option builds a new encoder per call.
        self._encode_json = json.JSONEncoder(separators=(",", ":")).encode
        # One slot per pooled connection: an attempt's deadline starts once it has a
        # connection, so a burst of callbacks queues here instead of timing out.
        self._slots = asyncio.Semaphore(settings.callback_connections)
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.rejected = 0
        self.abandoned = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def job_finished(self, job: Job) -> None:
        """Send the finished job to its callback URL, if it has one."""
        if job.callback is not None:
            self.schedule(job.callback, job.to_json(), job.id)

    def schedule(self, url: httpx.URL | str, payload: dict[str, str], job_id: str) -> None:
        """Start delivering ``payload`` to ``url`` (zero, one or two times, per the faults)."""
        copies = self._faults.callback_copies()
        if copies == 0:
            logger.debug("job %s: callback to %s dropped (injected fault)", job_id, url)
            return
        target = url if isinstance(url, httpx.URL) else httpx.URL(url)
        body = self._encode_json(payload).encode()
        message_id = "msg_" + self._streams.token_hex("message-ids", MESSAGE_ID_BYTES)
        for _ in range(copies):
            task = asyncio.create_task(
                self._deliver(target, body, message_id, job_id), name=f"callback-{job_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> int:
        """Wait (at most ``timeout``) for the deliveries under way; return how many are left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        return len(self._tasks)

    async def close(self, timeout: float) -> int:
        """Cancel every unfinished delivery and wait (at most ``timeout``); return the count."""
        return await cancel_all(self._tasks, timeout)

    def headers(self, url: httpx.URL, message_id: str, body: bytes) -> list[tuple[bytes, bytes]]:
        """The request headers of one attempt, signed when a callback secret is set."""
        headers = [
            (b"host", url.netloc),
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT),
        ]
        if self._key is not None:
            timestamp = int(time.time())
            signature = webhook_signature(self._key, message_id, timestamp, body)
            headers += [
                (b"webhook-id", message_id.encode()),
                (b"webhook-timestamp", b"%d" % timestamp),
                (b"webhook-signature", signature.encode()),
            ]
        return headers

    async def _deliver(self, url: httpx.URL, body: bytes, message_id: str, job_id: str) -> None:
        delay = self._faults.callback_delay
        if delay > 0:
            await asyncio.sleep(delay)
        for attempt in range(1, self._attempts + 1):
            if self._latency > 0:
                await asyncio.sleep(self._latency)  # on its way to the receiver
            result = await self._attempt(url, body, message_id)
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

    async def _attempt(self, url: httpx.URL, body: bytes, message_id: str) -> _Attempt:
        try:
            # The transport's own timeouts do not bound the whole exchange; this does.
            async with self._slots, asyncio.timeout(self._timeout):
                # Sent as built, with every header given: the client's per-call merging of
                # URLs, headers and cookies, and httpx's own filling in of Host and
                # Content-Length, would be a third of each delivery's CPU.
                request = httpx.Request(
                    "POST",
                    url,
                    headers=self.headers(url, message_id, body),
                    stream=httpx.ByteStream(body),
                    extensions={"timeout": self._request_timeout},
                )
                request.read()  # so transports see bytes, not a stream to send chunked
                response = await self._client.send(request)
        except TimeoutError:
            return _Attempt("retry", f"no answer within {self._timeout:g} s")
        except (httpx.HTTPError, aiohttp.ClientError, OSError) as exc:
            # aiohttp errors the transport does not translate (a malformed answer) land here;
            # a translated error names its aiohttp cause, which says more.
            cause = exc.__cause__ or exc
            return _Attempt("retry", f"{type(cause).__name__}: {cause}")
        status = f"HTTP {response.status_code}"
        if response.status_code >= 500:
            return _Attempt("retry", status)
        if response.status_code >= 400:
            return _Attempt("rejected", status)
        return _Attempt("delivered", status)

    def retry_delay(self, attempt: int) -> float:
        """Capped exponential backoff with "equal jitter": between half and all of the step."""
        step = min(self._backoff_max, self._backoff * 2.0 ** (attempt - 1))
        return step / 2 + self._streams.stream("backoff").uniform(0, step / 2)
