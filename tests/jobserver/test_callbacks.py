"""Callback delivery: signing, retries, final answers, and real deliveries over sockets.

What travels on the wire (keep-alive, malformed answers, the pool's bounds) is tested
in test_connections.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobserver.callbacks import CallbackSender, webhook_signature
from jobserver.config import Settings
from jobserver.connections import ConnectionPool, ExchangeFailed, Origin
from jobserver.faults import FaultInjector, RandomStreams
from tests.jobserver.servers import (
    CallbackReceiver,
    Delivery,
    HeldReceiver,
    callback_receiver,
    expected_signature,
    jobserver_client,
    jobserver_inside,
    raw_receiver,
    sender_over,
)

WAIT = 5.0
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
PAYLOAD = {"id": "0123456789abcdef", "state": "completed"}
RECEIVER = httpx.URL("http://receiver/cb")
HELD_URL = httpx.URL("http://receiver.test/hook")

Answer = Callable[[httpx.Request], httpx.Response]


class ScriptedPool(ConnectionPool):
    """A pool that hands each request's bytes to ``answer`` instead of a receiver."""

    def __init__(self, answer: Answer, requests: list[httpx.Request]) -> None:
        super().__init__(max_connections=1)
        self.answer = answer
        self.requests = requests

    async def post(self, origin: Origin, request: Callable[[], bytes], timeout: float) -> int:
        sent = as_request(origin, request())
        self.requests.append(sent)
        return self.answer(sent).status_code


def as_request(origin: Origin, data: bytes) -> httpx.Request:
    """The request that ``data`` spells, checked to be one whole HTTP/1.1 POST."""
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *lines = head.decode("ascii").split("\r\n")
    method, target, version = request_line.split(" ")
    assert (method, version) == ("POST", "HTTP/1.1")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon, line
        headers.append((name.strip(), value.strip()))
    url = f"{origin.scheme}://{origin.host}:{origin.port}{target}"
    # httpx keeps the content-length given (it only fills in missing headers).
    request = httpx.Request(method, url, headers=headers, content=body)
    assert int(request.headers["content-length"]) == len(body)
    return request


SenderWith = Callable[..., AbstractAsyncContextManager[tuple[CallbackSender, list[httpx.Request]]]]


def answered_through_a_client(answer: Answer, requests: list[httpx.Request]) -> httpx.AsyncClient:
    """An httpx client whose every request ``answer`` answers; a failed exchange
    (ExchangeFailed) becomes the transport error an httpx transport would raise."""

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        try:
            return answer(request)
        except ExchangeFailed as exc:
            raise httpx.ConnectError(str(exc), request=request) from None

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@pytest.fixture(params=["connections", "client"])
def sender_with(request: pytest.FixtureRequest) -> SenderWith:
    """A CallbackSender answered by ``answer``, on its own connections (a scripted pool)
    or through an httpx client (an app's callback_transport): both behave alike."""

    @asynccontextmanager
    async def build(
        answer: Answer, **overrides: Any
    ) -> AsyncIterator[tuple[CallbackSender, list[httpx.Request]]]:
        """Yields the sender and the requests its receiver got."""
        settings = Settings(**{"callback_backoff": 0.001, "seed": 1, **overrides})
        streams = RandomStreams(settings.seed)
        requests: list[httpx.Request] = []
        carrier: ConnectionPool | httpx.AsyncClient
        if request.param == "connections":
            carrier = ScriptedPool(answer, requests)
        else:
            carrier = answered_through_a_client(answer, requests)
        sender = CallbackSender(carrier, settings, FaultInjector(settings, streams), streams)
        try:
            yield sender, requests
        finally:
            await sender.close(WAIT)
            if isinstance(carrier, httpx.AsyncClient):
                await carrier.aclose()

    return build


def answers(*statuses: int | Exception) -> Answer:
    """Answer with each status (or raise each exception) in turn, then 200."""
    pending = list(statuses)

    def answer(request: httpx.Request) -> httpx.Response:
        outcome = pending.pop(0) if pending else 200
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome)

    return answer


def test_signature_matches_an_independent_computation() -> None:
    """webhook_signature is v1, base64 HMAC-SHA256 over id.timestamp.body."""
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"}
    body = b'{"id":"x"}'
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    assert webhook_signature(key, "msg_1", 1700000000, body) == expected_signature(
        WHSEC, headers, body
    )


async def test_unsigned_when_no_secret(sender_with: SenderWith) -> None:
    """Without callback_secret, no webhook-* headers are sent."""
    async with sender_with(answers()) as (sender, requests):
        sender.schedule(RECEIVER, PAYLOAD, "job")
        assert await sender.drain(WAIT) == 0
    assert len(requests) == 1
    assert json.loads(requests[0].content) == PAYLOAD
    assert not any(name.startswith("webhook-") for name in requests[0].headers)


async def test_plain_secret_signs_with_its_utf8_bytes(sender_with: SenderWith) -> None:
    """A secret without the whsec_ prefix is used as UTF-8 bytes."""
    async with sender_with(answers(), callback_secret="plain secret") as (sender, requests):
        sender.schedule(RECEIVER, PAYLOAD, "job")
        await sender.drain(WAIT)
    headers = requests[0].headers
    assert headers["webhook-signature"] == expected_signature(
        "plain secret", headers, requests[0].content
    )
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


async def test_5xx_and_connection_errors_are_retried_with_the_same_message_id(
    sender_with: SenderWith,
) -> None:
    """503, a connect error and a timeout are retried; every attempt is signed, same webhook-id."""
    failing = answers(503, ExchangeFailed("cannot connect"), ExchangeFailed("no answer"))
    async with sender_with(failing, callback_secret=WHSEC) as (sender, requests):
        sender.schedule(RECEIVER, PAYLOAD, "job")
        await sender.drain(WAIT)
    assert len(requests) == 4
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for request in requests:
        assert request.headers["webhook-signature"] == expected_signature(
            WHSEC, request.headers, request.content
        )
    assert sender.delivered == 1


async def test_a_receivers_cookies_are_not_sent_back() -> None:
    """A receiver's Set-Cookie is not kept, so it never reaches the next receiver."""
    set_cookie = b"HTTP/1.1 200 OK\r\nset-cookie: session=1; Path=/\r\ncontent-length: 0\r\n\r\n"
    async with raw_receiver([set_cookie]) as receiver, sender_over() as sender:
        sender.schedule(httpx.URL(f"{receiver.url}/a"), PAYLOAD, "a")
        sender.schedule(httpx.URL(f"{receiver.url}/b"), PAYLOAD, "b")
        assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
    assert sender.delivered == 2
    assert not any("cookie" in request.headers for request in requests)


async def test_4xx_is_final(sender_with: SenderWith) -> None:
    """A 4xx answer is not retried, and is counted as rejected."""
    async with sender_with(answers(404)) as (sender, requests):
        sender.schedule(RECEIVER, PAYLOAD, "job")
        await sender.drain(WAIT)
    assert len(requests) == 1
    assert sender.rejected == 1


async def test_attempts_are_bounded_and_each_is_logged(
    caplog: pytest.LogCaptureFixture, sender_with: SenderWith
) -> None:
    """An always-failing receiver gets callback_attempts tries; each outcome is logged."""
    caplog.set_level(logging.WARNING, logger="jobserver.callbacks")
    always = answers(*([500] * 10))
    async with sender_with(always, callback_attempts=3) as (sender, requests):
        sender.schedule(RECEIVER, PAYLOAD, "job")
        await sender.drain(WAIT)
    assert len(requests) == 3
    assert sender.abandoned == 1
    messages = [record.getMessage() for record in caplog.records]
    assert sum("retrying" in m for m in messages) == 2
    assert sum("abandoned after 3 attempts" in m for m in messages) == 1


async def test_a_hanging_receiver_hits_the_attempt_timeout() -> None:
    """An attempt that gets no answer is cut at callback_timeout and retried."""
    async with raw_receiver([None]) as receiver, sender_over(callback_timeout=0.1) as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "job")
        assert await sender.drain(WAIT) == 0
    assert receiver.requests.qsize() == 2
    assert sender.delivered == 1


async def test_backoff_grows_and_is_capped(sender_with: SenderWith) -> None:
    """Retry delays double from callback_backoff, with jitter, up to callback_backoff_max."""
    async with sender_with(answers(), callback_backoff=1.0, callback_backoff_max=4.0) as (
        sender,
        _,
    ):
        delays = [sender.retry_delay(attempt) for attempt in range(1, 7)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(2.0 <= d <= 4.0 for d in delays[2:])


async def test_close_cancels_pending_deliveries(sender_with: SenderWith) -> None:
    """close() cancels deliveries still waiting (here: in callback_delay) and counts them."""
    async with sender_with(answers(), callback_delay=60.0) as (sender, requests):
        sender.schedule(RECEIVER, PAYLOAD, "job")
        assert sender.pending == 1
        assert await sender.close(WAIT) == 1
    assert requests == []


def assert_signed_completion(delivery: Delivery, started: httpx.Response) -> None:
    """The callback of the job ``started`` named: at /hook/1, the finished job, signed."""
    job = json.loads(delivery.body)
    assert delivery.path == "/hook/1"
    assert job["id"] == started.json()["id"]
    assert job["state"] == "completed"
    assert set(job) == {"id", "state", "startedAt", "proof"}
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["user-agent"] == "jobserver-callbacks/0.1"
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["webhook-signature"] == expected_signature(
        WHSEC, delivery.headers, delivery.body
    )


async def test_callback_arrives_over_http_signed_with_the_job_json() -> None:
    """A wait: false job's callback reaches a real receiver, signed, with the finished job."""
    async with (
        callback_receiver() as receiver,
        jobserver_client(callback_secret=WHSEC) as client,
    ):
        started = await client.post(
            "/start", json={"account": "acme", "callback": f"{receiver.url}/hook/1"}
        )
        delivery = await receiver.next()
    assert_signed_completion(delivery, started)


async def test_an_app_given_a_callback_transport_calls_back_through_it() -> None:
    """A callback_transport carries the job's callback: the same body and signed headers."""
    receiver = CallbackReceiver("http://receiver.test")
    async with jobserver_client(
        httpx.ASGITransport(receiver.app()), callback_secret=WHSEC
    ) as client:
        started = await client.post(
            "/start", json={"account": "acme", "callback": f"{receiver.url}/hook/1"}
        )
        delivery = await receiver.next()
    assert_signed_completion(delivery, started)


async def test_through_a_client_an_unanswered_attempt_ends_at_callback_timeout() -> None:
    """Through an httpx client too, an unanswered attempt is cut at callback_timeout, retried."""
    attempts = 0

    async def hook(request: Request) -> Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.Event().wait()  # the first attempt is never answered
        return Response()

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    settings = Settings(callback_backoff=0.001, callback_timeout=0.1, seed=1)
    streams = RandomStreams(settings.seed)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app)) as client:
        sender = CallbackSender(client, settings, FaultInjector(settings, streams), streams)
        sender.schedule(httpx.URL("http://receiver.test/hook"), PAYLOAD, "job")
        assert await sender.drain(WAIT) == 0
    assert attempts == 2
    assert sender.delivered == 1


async def test_receiver_5xx_is_retried_over_http() -> None:
    """A receiver answering 503 then 500 gets the callback a third time, same webhook-id."""
    async with (
        callback_receiver(answers=[503, 500]) as receiver,
        jobserver_client(callback_secret=WHSEC, callback_backoff=0.01) as client,
    ):
        await client.post("/start", json={"account": "acme", "callback": receiver.url})
        deliveries = [await receiver.next() for _ in range(3)]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert len({d.body for d in deliveries}) == 1


async def test_many_concurrent_callbacks_are_delivered() -> None:
    """100 callbacks at once all reach a real receiver."""
    async with callback_receiver() as receiver, sender_over() as sender:
        for index in range(100):
            sender.schedule(httpx.URL(f"{receiver.url}/{index}"), PAYLOAD, str(index))
        paths = {(await receiver.next()).path for _ in range(100)}
        assert await sender.drain(WAIT) == 0
    assert len(paths) == 100


async def test_shuffled_callbacks_go_in_a_seeded_random_order(sender_with: SenderWith) -> None:
    """callback_order shuffled: each callback once, not in the order the jobs ended, in the
    same order for the same seed and in another for another seed."""

    async def order(seed: int = 3) -> list[str]:
        shuffled = {"callback_order": "shuffled", "callback_senders": 1, "seed": seed}
        async with sender_with(answers(), **shuffled) as (sender, requests):
            for index in range(50):
                sender.schedule(RECEIVER, {"id": str(index)}, str(index))
            assert await sender.drain(WAIT) == 0
        return [json.loads(request.content)["id"] for request in requests]

    first = await order()
    assert sorted(first, key=int) == [str(index) for index in range(50)]
    assert first != sorted(first, key=int)
    assert first == await order()
    assert first != await order(seed=4)


def held_client(receiver: HeldReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=receiver.transport())


async def test_shuffled_senders_bound_the_callbacks_in_flight() -> None:
    """With callback_senders 3, three callbacks are in flight and the rest wait in the pool."""
    receiver = HeldReceiver()
    settings = Settings(callback_order="shuffled", callback_senders=3, seed=1)
    streams = RandomStreams(settings.seed)
    async with held_client(receiver) as client:
        sender = CallbackSender(client, settings, FaultInjector(settings, streams), streams)
        for index in range(10):
            sender.schedule(HELD_URL, {"id": str(index)}, str(index))
        for _ in range(3):
            await receiver.next()
        # Each sender holds one callback (its receiver has not answered): 7 wait.
        assert (sender.queued, sender.pending) == (7, 10)
        receiver.release()
        assert await sender.drain(WAIT) == 0
    assert sorted(int(job["id"]) for job in receiver.jobs) == list(range(10))
    assert sender.delivered == 10


async def test_closing_cancels_the_senders_and_empties_the_pool() -> None:
    """close() counts the callbacks in flight and in the pool, and leaves no sender running."""
    receiver = HeldReceiver()
    settings = Settings(callback_order="shuffled", callback_senders=2, seed=1)
    streams = RandomStreams(settings.seed)
    async with held_client(receiver) as client:
        sender = CallbackSender(client, settings, FaultInjector(settings, streams), streams)
        for index in range(5):
            sender.schedule(HELD_URL, {"id": str(index)}, str(index))
        await receiver.next()
        await receiver.next()
        assert await sender.close(WAIT) == 5
    assert sender.pending == 0
    alive = [task.get_name() for task in asyncio.all_tasks() if not task.done()]
    assert not [name for name in alive if name.startswith("callback-sender")]


async def test_shuffled_callbacks_of_a_burst_each_arrive_once_over_http() -> None:
    """A burst of jobs called back shuffled reaches a real receiver, each job's callback once."""
    async with (
        callback_receiver() as receiver,
        jobserver_inside(
            callback_order="shuffled", callback_senders=4, seed=5, job_duration=0.0
        ) as (client, state),
    ):
        started = await asyncio.gather(
            *(
                client.post("/start", json={"account": f"a{index}", "callback": receiver.url})
                for index in range(40)
            )
        )
        ids = sorted([json.loads((await receiver.next()).body)["id"] for _ in range(40)])
        assert await state["callbacks"].drain(WAIT) == 0
        assert receiver.deliveries.empty()
    assert ids == sorted(response.json()["id"] for response in started)


async def test_healthz_counts_the_callbacks_in_the_pending_pool() -> None:
    """callbacks_pending counts the callback a sender holds and those waiting in the pool."""
    receiver = HeldReceiver()
    async with jobserver_inside(
        receiver.transport(), callback_order="shuffled", callback_senders=1
    ) as (client, state):
        # wait: true answers once the job has ended, so its callback is pending by then.
        await asyncio.gather(
            *(
                client.post(
                    "/start", json={"account": f"a{index}", "wait": True, "callback": str(HELD_URL)}
                )
                for index in range(4)
            )
        )
        assert (await client.get("/healthz")).json()["callbacks_pending"] == 4
        receiver.release()
        assert await state["callbacks"].drain(WAIT) == 0
        assert (await client.get("/healthz")).json()["callbacks_pending"] == 0
    assert len(receiver.jobs) == 4
