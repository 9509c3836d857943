"""What the second job server's tests share: a callback receiver, a server to talk to,
and each dialect as the tests speak it (``speaker``: both in turn)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import run_server
from tests.upstreams.aioserver import AioServer, AioServerConfig, run_aioserver

JOB_ID = re.compile(r"[1-9a-f][0-9a-f]{12,15}")
STARTED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PROOF = re.compile(r"[0-9A-F]{40}")
QUICK = 0.02  # a job's duration where only the order of events matters
WAIT = 5.0


class Receiver:
    """Where callbacks go: records each POST, answers with the scripted statuses (then
    200), and holds its answers while :meth:`hold` is in force."""

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._released = asyncio.Event()
        self._released.set()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/callback", self._callback, methods=["POST"])])

    async def _callback(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.bodies.append(body)
        self._arrived.put_nowait(body)
        async with asyncio.timeout(WAIT * 2):
            await self._released.wait()
        return JSONResponse({}, self.statuses.pop(0) if self.statuses else 200)

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def next(self) -> dict[str, Any]:
        """The next callback to arrive, waiting at most WAIT."""
        async with asyncio.timeout(WAIT):
            return await self._arrived.get()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with run_server(receiver.app()) as url:
        receiver.url = f"{url}/callback"
        try:
            yield receiver
        finally:
            receiver.release()


Served = tuple[AioServer, httpx.AsyncClient]


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[Served]:
    async with (
        run_aioserver(AioServerConfig(**options)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        yield server, client


@dataclass(frozen=True)
class Speaker:
    """A dialect as these tests speak it: a server of it, a start, where a job's status is
    read, and a job's state in the work sample's words."""

    dialect: str

    def serve(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Served]:
        return serve(dialect=self.dialect, **options)

    def start(
        self, account: str = "acme", callback: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """``client.post``'s arguments for a start of ``account`` (the token, in
        predictions) called back at ``callback``; ``fields``: more of its body."""
        if self.dialect == "work-sample":
            called_back = {"callback": callback} if callback else {}
            return {"url": "/start", "json": {"account": account, **called_back, **fields}}
        webhook = {"webhook": callback, "webhook_events_filter": ["completed"]} if callback else {}
        body = {"input": {"prompt": account}, **webhook, **fields}
        return {"url": "/v1/predictions", "json": body, "headers": bearer(account)}

    def status(self, job_id: str) -> str:
        return f"/status/{job_id}" if self.dialect == "work-sample" else f"/v1/predictions/{job_id}"

    def state(self, job: dict[str, Any]) -> str:
        """``running``, ``completed``, ``failed`` (or ``canceled``), in either dialect."""
        if self.dialect == "work-sample":
            return str(job["state"])
        status = str(job["status"])
        return PREDICTION_STATES.get(status, status)

    @property
    def error_fields(self) -> set[str]:
        return {"error", "detail"} if self.dialect == "work-sample" else {"detail"}


PREDICTION_STATES = {"starting": "running", "processing": "running", "succeeded": "completed"}
WORK_SAMPLE = Speaker("work-sample")
PREDICTIONS = Speaker("predictions")


@pytest.fixture(params=[WORK_SAMPLE, PREDICTIONS], ids=lambda speaker: speaker.dialect)
def speaker(request: pytest.FixtureRequest) -> Speaker:
    """Each dialect in turn, for a test that means the same in both."""
    speaker: Speaker = request.param
    return speaker


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def later(client: httpx.AsyncClient, start: dict[str, Any]) -> asyncio.Task[httpx.Response]:
    """Send a start (a :meth:`Speaker.start`) in the background."""
    return asyncio.ensure_future(client.post(**start))


async def hold_gate(
    client: httpx.AsyncClient, receiver: Receiver, speaker: Speaker = WORK_SAMPLE
) -> asyncio.Task[httpx.Response]:
    """Start a job whose early callback ``receiver`` holds: the account's gate stays held
    until ``receiver.release()``. Needs ``early_callbacks`` and a quick job."""
    receiver.hold()
    holder = later(client, speaker.start(callback=receiver.url))
    await receiver.next()
    return holder


def proof_of(job_id: str, account: str, at: str, secret: str = "aioserver-secret") -> str:
    """The proof of job ``job_id`` of ``account`` started (or, a prediction, created) ``at``."""
    message = f"{job_id}:{account}:{at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest().upper()
