"""Servers for the job server's tests: the app in-process, and a real callback receiver.

``jobserver_client`` runs :func:`jobserver.app.create_app` inside its lifespan behind
``httpx.ASGITransport``. ``callback_receiver`` serves a tiny Starlette app with
:func:`tests.conftest.run_server`, so callbacks travel over real sockets; each delivery
is queued for the test to await with a deadline. ``raw_receiver`` answers
callbacks with bytes the test scripts, and tells which connections they came on;
``sender_over`` sends callbacks to them through a real connection pool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobserver.app import create_app
from jobserver.callbacks import CallbackSender
from jobserver.config import Settings
from jobserver.connections import IDLE_EXPIRY, ConnectionPool
from jobserver.faults import FaultInjector, RandomStreams
from jobserver.starts import AppState
from tests.conftest import app_lifespan, loopback_socket, run_server

FAST_JOBS: dict[str, Any] = {"job_duration": 0.05, "job_duration_spread": 0.0}
DELIVERY_TIMEOUT = 10.0
SENDER_CLOSE_TIMEOUT = 5.0
# Printed by the original jobclient after a PASSED run against the original job server
# (README of github.com/brpandey/sample_proxy, 2017): 50 jobs of this account, their
# proofs made with that server's secret, so they cannot check against ours.
ORIGINAL_BUNDLE = Path(__file__).with_name("original_proof_bundle.txt").read_text().strip()
ORIGINAL_ACCOUNT = "fozzie@muppets.com"


def fast_settings(**overrides: Any) -> Settings:
    """Settings with short, fixed-length jobs, plus ``overrides``."""
    return Settings(**{**FAST_JOBS, **overrides})


@contextlib.asynccontextmanager
async def jobserver_client(
    callback_transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking in-process to a job server built from ``overrides``
    (its callbacks through ``callback_transport`` when one is given)."""
    async with jobserver_inside(callback_transport, **overrides) as (client, _):
        yield client


@contextlib.asynccontextmanager
async def jobserver_inside(
    callback_transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    """As :func:`jobserver_client`, with the app's lifespan state, for tests that wait
    on its parts (the callback sender's drain)."""
    app = create_app(fast_settings(**overrides), callback_transport)
    async with (
        app_lifespan(app) as (served, state),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(served), base_url="http://jobserver"
        ) as client,
    ):
        yield client, cast(AppState, state)


class HeldReceiver:
    """A callback receiver (an ASGI app, for a ``callback_transport``) that holds every
    answer until :meth:`release`; ``arrived`` gets each callback's job as it comes."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.jobs: list[dict[str, Any]] = []
        self._released = asyncio.Event()

    def transport(self) -> httpx.ASGITransport:
        async def hook(request: Request) -> Response:
            job = json.loads(await request.body())
            self.jobs.append(job)
            self.arrived.put_nowait(job)
            await self._released.wait()
            return Response()

        return httpx.ASGITransport(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))

    async def next(self, timeout: float = DELIVERY_TIMEOUT) -> dict[str, Any]:
        """The next callback's job, waiting at most ``timeout`` seconds."""
        return await asyncio.wait_for(self.arrived.get(), timeout)

    def release(self) -> None:
        """Answer every held callback, and the later ones at once."""
        self._released.set()


@dataclass(frozen=True)
class Delivery:
    """One callback request as the receiver saw it."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    received_at: float


@dataclass
class CallbackReceiver:
    """Where callbacks land; ``answers`` are the statuses to give, in order, then 200."""

    url: str
    answers: deque[int] = field(default_factory=deque)
    deliveries: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)

    async def next(self, timeout: float = DELIVERY_TIMEOUT) -> Delivery:
        """The next delivery, waiting at most ``timeout`` seconds."""
        return await asyncio.wait_for(self.deliveries.get(), timeout)

    def app(self) -> Starlette:
        """The receiving app: it records every POST and answers with the next status."""

        async def receive(request: Request) -> Response:
            body = await request.body()
            self.deliveries.put_nowait(
                Delivery(request.url.path, dict(request.headers), body, time.monotonic())
            )
            status = self.answers.popleft() if self.answers else 200
            return Response(status_code=status)

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])


@contextlib.asynccontextmanager
async def callback_receiver(answers: Iterable[int] = ()) -> AsyncIterator[CallbackReceiver]:
    """A real HTTP server on 127.0.0.1 that records every POST it receives."""
    receiver = CallbackReceiver("", deque(answers))
    async with run_server(receiver.app()) as url:
        receiver.url = url
        yield receiver


def expected_signature(secret: str, headers: Mapping[str, str], body: bytes) -> str:
    """Standard Webhooks signature computed independently of jobserver.callbacks."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else None
    key = key if key is not None else secret.encode()
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode()
    signed += b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


OK_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


@dataclass(frozen=True)
class RawRequest:
    """One request as the raw receiver saw it, and the connection (0, 1, ...) it came on."""

    connection: int
    path: str
    headers: Mapping[str, str]
    body: bytes


class RawReceiver:
    """Answers each request with the next of ``answers`` (``None``: never), then OK_ANSWER."""

    def __init__(self, answers: Iterable[bytes | None]) -> None:
        self.url = ""
        self.answers = deque(answers)
        self.requests: asyncio.Queue[RawRequest] = asyncio.Queue()
        self.connections: list[_RawConnection] = []
        self.most_open = 0

    @property
    def open_now(self) -> int:
        return sum(not c.lost.is_set() for c in self.connections)

    async def next(self, timeout: float = DELIVERY_TIMEOUT) -> RawRequest:
        """The next request, waiting at most ``timeout`` seconds."""
        return await asyncio.wait_for(self.requests.get(), timeout)

    async def lost(self, connection: int, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Wait (at most ``timeout``) until connection number ``connection`` is closed."""
        await asyncio.wait_for(self.connections[connection].lost.wait(), timeout)

    def end_connections_now(self) -> None:
        """Send the end of every connection at once, before the event loop runs again."""
        for connection in self.connections:
            fd = connection.transport.get_extra_info("socket").fileno()
            # Through a duplicate: uvloop's transport sockets refuse shutdown().
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as duplicate:
                duplicate.shutdown(socket.SHUT_WR)

    async def close_connections(self) -> None:
        """Close every open connection from this side, and wait until they are closed."""
        for connection in self.connections:
            connection.transport.close()
        for index in range(len(self.connections)):
            await self.lost(index)


class _RawConnection(asyncio.Protocol):
    def __init__(self, receiver: RawReceiver) -> None:
        self.receiver = receiver
        self.index = len(receiver.connections)
        self.lost = asyncio.Event()
        self.parser = httptools.HttpRequestParser(self)
        self.path = ""
        self.headers: dict[str, str] = {}
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.receiver.connections.append(self)
        self.receiver.most_open = max(self.receiver.most_open, self.receiver.open_now)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def on_url(self, url: bytes) -> None:
        self.path = url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        request = RawRequest(self.index, self.path, self.headers, self.body)
        self.headers, self.body = {}, b""
        self.receiver.requests.put_nowait(request)
        answer = self.receiver.answers.popleft() if self.receiver.answers else OK_ANSWER
        if answer is not None:
            self.transport.write(answer)


@contextlib.asynccontextmanager
async def raw_receiver(
    answers: Iterable[bytes | None] = (), *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawReceiver]:
    """A receiver on 127.0.0.1 speaking raw HTTP/1.1 (over TLS with ``tls``)."""
    receiver = RawReceiver(answers)
    loop = asyncio.get_running_loop()
    sock = loopback_socket()
    server = await loop.create_server(lambda: _RawConnection(receiver), sock=sock, ssl=tls)
    port = sock.getsockname()[1]
    receiver.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.close()
        for connection in receiver.connections:
            connection.transport.abort()
        for index in range(len(receiver.connections)):
            await receiver.lost(index)


@contextlib.asynccontextmanager
async def sender_over(
    *,
    idle_expiry: float = IDLE_EXPIRY,
    ssl_context: ssl.SSLContext | None = None,
    **overrides: Any,
) -> AsyncIterator[CallbackSender]:
    """A CallbackSender on a real ConnectionPool, with ``overrides`` of the settings."""
    settings = Settings(**{"callback_backoff": 0.001, "seed": 1, **overrides})
    streams = RandomStreams(settings.seed)
    async with ConnectionPool(
        settings.callback_connections, idle_expiry=idle_expiry, ssl_context=ssl_context
    ) as pool:
        sender = CallbackSender(pool, settings, FaultInjector(settings, streams), streams)
        try:
            yield sender
        finally:
            await sender.close(SENDER_CLOSE_TIMEOUT)


PREDICTIONS_TOKEN = "r8_acme"


@contextlib.asynccontextmanager
async def predictions_inside(
    receiver: HeldReceiver | None = None, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    """As :func:`jobserver_inside`, speaking the predictions dialect, its webhooks to
    ``receiver`` when one is given."""
    transport = receiver.transport() if receiver is not None else None
    async with jobserver_inside(transport, dialect="predictions", **overrides) as served:
        yield served


def bearer(token: str = PREDICTIONS_TOKEN) -> dict[str, str]:
    """The header that makes ``token`` the account of a prediction."""
    return {"Authorization": f"Bearer {token}"}


async def create_prediction(
    client: httpx.AsyncClient,
    token: str = PREDICTIONS_TOKEN,
    prefer: str | None = None,
    **fields: Any,
) -> httpx.Response:
    """``POST /v1/predictions`` of ``token`` with a small input and ``fields``."""
    headers = bearer(token) | ({"Prefer": prefer} if prefer is not None else {})
    body = {"input": {"n": 1}, **fields}
    return await client.post("/v1/predictions", json=body, headers=headers)
