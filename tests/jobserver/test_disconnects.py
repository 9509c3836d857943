"""honour_disconnects: a /start whose client leaves before its job exists starts nothing.

The watch itself is tested with a scripted ASGI ``receive``; the server's behaviour over
real connections (uvicorn on 127.0.0.1), where a client that closes its socket is seen
as ``http.disconnect``. There, an account's gate is held for as long as a test wants by a
``/start`` whose callback (sent before its answer, ``callback_before_answer``) a
:class:`HeldReceiver` does not answer yet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobserver.app import create_app
from jobserver.disconnects import abandon_on_disconnect
from jobserver.errors import ClientGone
from tests.conftest import run_server
from tests.jobserver.servers import HeldReceiver, fast_settings, jobserver_client

WAIT = 10.0
NAME = "x-request-name"
HELD_HOOK = "http://receiver.test/hook"


class Watched:
    """ASGI middleware that tells when a named request's body has been read by the app,
    and what status it was answered (the name is the ``x-request-name`` header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body_read: dict[str, asyncio.Event] = {}
        self.answered: dict[str, asyncio.Future[int]] = {}

    def _expect(self, name: str) -> None:
        if name not in self.body_read:
            self.body_read[name] = asyncio.Event()
            self.answered[name] = asyncio.get_running_loop().create_future()

    async def read(self, name: str) -> None:
        """Wait until the app has read the whole body of request ``name``."""
        self._expect(name)
        await asyncio.wait_for(self.body_read[name].wait(), WAIT)

    async def status(self, name: str) -> int:
        """The status request ``name`` was answered with, waiting for it."""
        self._expect(name)
        return await asyncio.wait_for(asyncio.shield(self.answered[name]), WAIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        name = headers.get(NAME.encode(), b"").decode()
        if scope["type"] != "http" or not name:
            await self.app(scope, receive, send)
            return
        self._expect(name)

        async def receive_noted() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.body_read[name].set()
            return message

        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.answered[name].set_result(message["status"])
            await send(message)

        await self.app(scope, receive_noted, send_noted)


@asynccontextmanager
async def served(**overrides: Any) -> AsyncIterator[tuple[str, Watched, HeldReceiver]]:
    """A job server on 127.0.0.1 whose callbacks go to a HeldReceiver; yields its URL."""
    receiver = HeldReceiver()
    settings = fast_settings(job_duration=0.0, callback_before_answer=60.0, **overrides)
    watched = Watched(create_app(settings, receiver.transport()))
    try:
        async with run_server(watched) as url:
            yield url, watched, receiver
    finally:
        receiver.release()


async def start_and_leave(url: str, watched: Watched, name: str, account: str) -> None:
    """Send a /start of ``account`` over a socket of its own, and close the socket once
    the server has read the request's body."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    body = json.dumps({"account": account}).encode()
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /start HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"%s: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (host.encode(), NAME.encode(), name.encode(), len(body), body)
    )
    await writer.drain()
    await watched.read(name)
    writer.close()
    await writer.wait_closed()


async def health(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    health: dict[str, Any] = (await client.get(f"{url}/healthz")).json()
    return health


def named(name: str) -> dict[str, str]:
    return {NAME: name}


async def test_a_start_whose_client_leaves_at_the_gate_starts_no_job_and_frees_its_place() -> None:
    """honour_disconnects: a /start that waits at its account's gate when its client closes
    starts no job, is counted, and the account's next /start goes on after the holder."""
    async with (
        served(honour_disconnects=True) as (url, watched, receiver),
        httpx.AsyncClient() as client,
    ):
        holder = asyncio.create_task(
            client.post(f"{url}/start", json={"account": "acme", "callback": HELD_HOOK})
        )
        await receiver.next()  # the holder's job is done; it holds the gate for its callback
        await start_and_leave(url, watched, "leaver", "acme")
        assert await watched.status("leaver") == 499
        receiver.release()
        following = await client.post(f"{url}/start", json={"account": "acme"})
        await asyncio.wait_for(holder, WAIT)
        counts = await health(client, url)
    assert (holder.result().status_code, following.status_code) == (200, 200)
    assert (counts["jobs_started"], counts["starts_abandoned"]) == (2, 1)


async def test_a_start_whose_client_leaves_during_start_latency_starts_no_job() -> None:
    """honour_disconnects: a /start inside its gate (in start_latency) when its client closes
    starts no job."""
    async with (
        served(honour_disconnects=True, start_latency=60.0) as (url, watched, _),
        httpx.AsyncClient() as client,
    ):
        await start_and_leave(url, watched, "leaver", "acme")
        assert await watched.status("leaver") == 499
        counts = await health(client, url)
    assert (counts["jobs_started"], counts["starts_abandoned"]) == (0, 1)


async def test_without_honour_disconnects_a_closed_start_still_runs_in_its_turn() -> None:
    """By default a /start whose client closed while it waited at the gate starts its job
    when its turn comes, and is answered (to nobody)."""
    async with served() as (url, watched, receiver), httpx.AsyncClient() as client:
        holder = asyncio.create_task(
            client.post(f"{url}/start", json={"account": "acme", "callback": HELD_HOOK})
        )
        await receiver.next()
        await start_and_leave(url, watched, "leaver", "acme")
        receiver.release()
        assert await watched.status("leaver") == 200
        await asyncio.wait_for(holder, WAIT)
        counts = await health(client, url)
    assert (counts["jobs_started"], counts["starts_abandoned"]) == (2, 0)


async def test_a_start_whose_client_stays_is_served_and_leaves_no_watch_behind() -> None:
    """honour_disconnects with a client that stays: the usual answers, no watch task left."""
    async with jobserver_client(honour_disconnects=True) as client:
        running = await client.post("/start", json={"account": "acme"})
        done = await client.post("/start", json={"account": "acme", "wait": True})
        alive = [task.get_name() for task in asyncio.all_tasks() if not task.done()]
        counts = (await client.get("/healthz")).json()
    assert running.json()["state"] == "running"
    assert done.json()["state"] == "completed"
    assert "disconnect-watch" not in alive
    assert (counts["jobs_started"], counts["starts_abandoned"]) == (2, 0)


def scripted_receive(messages: asyncio.Queue[Message]) -> Receive:
    async def receive() -> Message:
        return await messages.get()

    return receive


async def test_a_disconnect_stops_the_block_with_client_gone() -> None:
    """A disconnect ends the block's wait at once and the block raises ClientGone."""
    messages: asyncio.Queue[Message] = asyncio.Queue()
    with pytest.raises(ClientGone):
        async with abandon_on_disconnect(scripted_receive(messages)):
            messages.put_nowait({"type": "http.disconnect"})
            await asyncio.Event().wait()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_cancelled_block_without_a_disconnect_stays_cancelled() -> None:
    """A cancellation from elsewhere (a deadline) is not taken for a disconnect."""
    messages: asyncio.Queue[Message] = asyncio.Queue()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01), abandon_on_disconnect(scripted_receive(messages)):
            await asyncio.Event().wait()


async def test_a_block_that_ends_leaves_no_watch_behind() -> None:
    """Once the block has ended, its watch is over: a later disconnect cannot touch the task."""
    messages: asyncio.Queue[Message] = asyncio.Queue()
    async with abandon_on_disconnect(scripted_receive(messages)):
        pass
    alive = [task.get_name() for task in asyncio.all_tasks() if not task.done()]
    assert "disconnect-watch" not in alive
