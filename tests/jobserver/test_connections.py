"""Callbacks on the wire: keep-alive, closed and expired connections, bad answers, bounds.

Each test sends callbacks through a CallbackSender on a real ConnectionPool (or the
pool alone) to a raw receiver whose answers it scripts byte for byte; the last ones
check how a failed exchange is worded.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import http1
from jobserver.connections import ConnectionPool, ExchangeFailed, Origin, exchange_failed
from tests.conftest import closed_port
from tests.infra.http1.servers import RawServer, answering
from tests.jobserver.servers import OK_ANSWER, raw_receiver, sender_over

WAIT = 5.0
PAYLOAD = {"id": "0123456789abcdef", "state": "completed"}
TLS = Path(__file__).with_name("tls")
CLOSE_ANSWER = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
GARBAGE_ANSWER = b"garbage\r\n\r\n"
OVERSIZED_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n" + b"x" * 70_000
LARGE_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 60000\r\n\r\n" + b"x" * 60_000
CHUNKED_ANSWER = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
INTERIM_ANSWER = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_ANSWER


async def test_sequential_callbacks_share_one_connection() -> None:
    """Callbacks to one receiver, one after another, all travel on one kept-alive connection."""
    async with raw_receiver() as receiver, sender_over() as sender:
        for index in range(3):
            sender.schedule(httpx.URL(f"{receiver.url}/{index}"), PAYLOAD, str(index))
            assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(3)]
    assert [r.path for r in requests] == ["/0", "/1", "/2"]
    assert {r.connection for r in requests} == {0}
    assert sender.delivered == 3


async def test_a_connection_the_receiver_closed_is_not_an_attempt() -> None:
    """After the receiver closes an idle connection, the next callback goes out on a new one.

    With a single attempt allowed, the closed connection must not cost the callback it.
    """
    async with raw_receiver() as receiver, sender_over(callback_attempts=1) as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "first")
        assert await sender.drain(WAIT) == 0
        await receiver.close_connections()
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "second")
        assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
    assert [r.connection for r in requests] == [0, 1]
    assert (sender.delivered, sender.abandoned) == (2, 0)


async def test_a_pooled_connection_found_closed_is_replaced_before_writing() -> None:
    """A connection whose close has arrived but not yet been handled is not written to.

    The receiver ends the connection and the request goes out before the event loop has
    seen that end: the pool must notice it on the socket and open another connection.
    """
    async with raw_receiver() as receiver, ConnectionPool(2) as pool:
        origin = Origin("http", "127.0.0.1", int(receiver.url.rsplit(":", 1)[1]))
        request = b"POST / HTTP/1.1\r\nhost: receiver\r\ncontent-length: 0\r\n\r\n"
        assert await pool.post(origin, lambda: request, WAIT) == 200
        receiver.end_connections_now()
        assert await pool.post(origin, lambda: request, WAIT) == 200
        requests = [await receiver.next() for _ in range(2)]
    assert [r.connection for r in requests] == [0, 1]


async def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    """A connection on which the receiver sent more than its answer is not used again."""
    async with raw_receiver([OK_ANSWER + b"stray"]) as receiver, sender_over() as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "first")
        assert await sender.drain(WAIT) == 0
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "second")
        assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
    assert [r.connection for r in requests] == [0, 1]
    assert sender.delivered == 2


async def test_connection_close_is_honoured() -> None:
    """After an answer with Connection: close the sender closes it; the next callback opens one."""
    async with (
        raw_receiver([CLOSE_ANSWER]) as receiver,
        sender_over(idle_expiry=60.0) as sender,
    ):
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "first")
        assert await sender.drain(WAIT) == 0
        await receiver.lost(0)  # the receiver never closes: the sender did
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "second")
        assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
    assert [r.connection for r in requests] == [0, 1]
    assert sender.delivered == 2


async def test_idle_connections_expire() -> None:
    """A connection left idle for the pool's idle expiry is closed by the sender."""
    async with raw_receiver() as receiver, sender_over(idle_expiry=0.05) as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "job")
        assert await sender.drain(WAIT) == 0
        await receiver.lost(0)
    assert sender.delivered == 1


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [(GARBAGE_ANSWER, "malformed answer"), (OVERSIZED_ANSWER, "answer body over 64 KiB")],
    ids=["garbage", "oversized-body"],
)
async def test_an_unreadable_answer_fails_the_attempt(
    answer: bytes, outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, or a body over 64 KiB, is a failed attempt: retried on a new connection."""
    caplog.set_level(logging.WARNING, logger="jobserver.callbacks")
    async with raw_receiver([answer]) as receiver, sender_over() as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "job")
        assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
        await receiver.lost(0)
    assert [r.connection for r in requests] == [0, 1]
    assert sender.delivered == 1
    assert any(outcome in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "answer",
    [LARGE_ANSWER, CHUNKED_ANSWER, INTERIM_ANSWER],
    ids=["60-KiB", "chunked", "after-100-continue"],
)
async def test_a_body_within_the_bound_is_read_and_the_connection_kept(answer: bytes) -> None:
    """An answer's body (up to 64 KiB, with a length or chunked) is read and skipped.

    An interim 100 Continue before the answer is skipped as well.
    """
    async with raw_receiver([answer]) as receiver, sender_over() as sender:
        for name in ("first", "second"):
            sender.schedule(httpx.URL(receiver.url), PAYLOAD, name)
            assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
    assert [r.connection for r in requests] == [0, 0]
    assert sender.delivered == 2


async def test_a_receiver_that_never_answers_is_abandoned_after_its_attempts() -> None:
    """Each attempt ends at callback_timeout; after callback_attempts the callback is abandoned."""
    settings: dict[str, Any] = {"callback_attempts": 3, "callback_timeout": 0.05}
    async with raw_receiver([None] * 3) as receiver, sender_over(**settings) as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "job")
        assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(3)]
    assert [r.connection for r in requests] == [0, 1, 2]
    assert (sender.delivered, sender.abandoned) == (0, 1)


async def test_a_refused_connection_is_retried_then_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver that refuses connections gets callback_attempts tries, each logged."""
    caplog.set_level(logging.WARNING, logger="jobserver.callbacks")
    with closed_port() as port:
        url = httpx.URL(f"http://127.0.0.1:{port}/hook")
        async with sender_over(callback_attempts=2) as sender:
            sender.schedule(url, PAYLOAD, "job")
            assert await sender.drain(WAIT) == 0
    assert sender.abandoned == 1
    assert sum("cannot connect" in record.getMessage() for record in caplog.records) == 2


async def test_connections_stay_within_callback_connections() -> None:
    """With callback_connections = 2, 20 callbacks at once never hold more than 2 connections."""
    async with raw_receiver() as receiver, sender_over(callback_connections=2) as sender:
        for index in range(20):
            sender.schedule(httpx.URL(f"{receiver.url}/{index}"), PAYLOAD, str(index))
        assert await sender.drain(WAIT) == 0
    assert sender.delivered == 20
    assert receiver.most_open == 2
    assert len(receiver.connections) == 2


async def test_close_cancels_a_delivery_waiting_for_its_answer() -> None:
    """close() cancels a delivery whose answer has not come, and its connection is closed."""
    async with raw_receiver([None]) as receiver, sender_over() as sender:
        sender.schedule(httpx.URL(receiver.url), PAYLOAD, "job")
        await receiver.next()
        assert await sender.close(WAIT) == 1
        await receiver.lost(0)
    assert (sender.delivered, sender.abandoned) == (0, 0)


async def test_https_callbacks_are_delivered_over_tls() -> None:
    """An https callback is sent over TLS, with the host as SNI, on a kept-alive connection."""
    server_names: list[str | None] = []
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(TLS / "receiver.pem")
    server_tls.sni_callback = lambda sock, name, context: server_names.append(name)
    client_tls = ssl.create_default_context(cafile=TLS / "ca.pem")
    async with (
        raw_receiver(tls=server_tls) as receiver,
        sender_over(ssl_context=client_tls) as sender,
    ):
        url = receiver.url.replace("127.0.0.1", "localhost")
        for name in ("first", "second"):
            sender.schedule(httpx.URL(f"{url}/{name}"), PAYLOAD, name)
            assert await sender.drain(WAIT) == 0
        requests = [await receiver.next() for _ in range(2)]
    assert [r.connection for r in requests] == [0, 0]
    assert requests[0].headers["host"] == url.removeprefix("https://")
    assert server_names == ["localhost"]
    assert sender.delivered == 2


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", 200),
        (b"HTTP/1.1 503 Busy\r\ncontent-length: 10\r\n\r\nabc", 503),
        (b"HTTP/1.1 200 OK\r\ncontent-le", None),
        (b"", None),
    ],
    ids=["200-cut", "503-cut", "head-cut", "nothing"],
)
async def test_a_receiver_that_hangs_up_after_its_head_has_given_its_verdict(
    answer: bytes, verdict: int | None
) -> None:
    """A receiver that closes once its answer's head is whole is answered by its status;
    one that closes before that fails the attempt."""
    request = b"POST / HTTP/1.1\r\nhost: receiver\r\ncontent-length: 0\r\n\r\n"
    async with (
        RawServer(answering(answer, then_close=True)) as receiver,
        ConnectionPool(1) as pool,
    ):
        origin = Origin.of(receiver.url)
        if verdict is None:
            with pytest.raises(ExchangeFailed, match="connection closed before the answer"):
                await pool.post(origin, lambda: request, WAIT)
        else:
            assert await pool.post(origin, lambda: request, WAIT) == verdict


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (http1.AnswerTooLarge("x"), "answer body over 64 KiB"),
        (http1.AnswerMalformed("bad status line"), "malformed answer: bad status line"),
        (http1.AnswerIncomplete("x"), "connection closed before the answer"),
        (http1.ConnectionBroken("x"), "connection closed before the answer"),
        (httpx.ConnectTimeout("no connection within 1 s"), "cannot connect: ConnectTimeout"),
        (httpx.ReadError("x"), "ReadError: x"),
    ],
)
def test_transport_errors_become_one_line(error: httpx.TransportError, words: str) -> None:
    """Each transport error is worded once, the same through the pool or a client."""
    assert str(exchange_failed(error)).startswith(words)


def test_a_refused_connection_is_worded_by_its_cause() -> None:
    """A refused connection names the OS's error, not the client's wrapping."""
    error = httpx.ConnectError("cannot connect to http://receiver")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert str(exchange_failed(error)) == (
        "cannot connect: ConnectionRefusedError: [Errno 111] Connection refused"
    )
