"""Servers for the job server's tests: the app in-process, and a real callback receiver.

``jobserver_client`` runs :func:`jobserver.app.create_app` inside its lifespan behind
``httpx.ASGITransport``. ``callback_receiver`` serves a tiny Starlette app under a real
uvicorn on 127.0.0.1 (ephemeral port), so callbacks travel over real sockets; each
delivery is queued for the test to await with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobserver.app import create_app
from jobserver.config import Settings

FAST_JOBS: dict[str, Any] = {"job_duration": 0.05, "job_duration_spread": 0.0}
DELIVERY_TIMEOUT = 10.0
# Printed by the original jobclient after a PASSED run against the original job server
# (README of github.com/brpandey/sample_proxy, 2017): 50 jobs of this account, their
# proofs made with that server's secret, so they cannot check against ours.
ORIGINAL_BUNDLE = Path(__file__).with_name("original_proof_bundle.txt").read_text().strip()
ORIGINAL_ACCOUNT = "fozzie@muppets.com"


def fast_settings(**overrides: Any) -> Settings:
    """Settings with short, fixed-length jobs, plus ``overrides``."""
    return Settings(**{**FAST_JOBS, **overrides})


@contextlib.asynccontextmanager
async def jobserver_client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking in-process to a job server built from ``overrides``."""
    app = create_app(fast_settings(**overrides))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(manager.app), base_url="http://jobserver"
        ) as client,
    ):
        yield client


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


class _InProcessServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals belong to pytest, not to a server that lives inside a test.
        yield


@contextlib.asynccontextmanager
async def callback_receiver(answers: Iterable[int] = ()) -> AsyncIterator[CallbackReceiver]:
    """A real HTTP server on 127.0.0.1 that records every POST it receives."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before uvicorn starts means the kernel queues early connections, so the
    # receiver is usable at once without waiting for uvicorn's startup.
    sock.listen(128)
    receiver = CallbackReceiver(f"http://127.0.0.1:{sock.getsockname()[1]}", deque(answers))

    async def receive(request: Request) -> Response:
        body = await request.body()
        receiver.deliveries.put_nowait(
            Delivery(request.url.path, dict(request.headers), body, time.monotonic())
        )
        status = receiver.answers.popleft() if receiver.answers else 200
        return Response(status_code=status)

    app = Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        http="httptools",
        timeout_graceful_shutdown=2,
    )
    server = _InProcessServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield receiver
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def expected_signature(secret: str, headers: Mapping[str, str], body: bytes) -> str:
    """Standard Webhooks signature computed independently of jobserver.callbacks."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else None
    key = key if key is not None else secret.encode()
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode()
    signed += b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
