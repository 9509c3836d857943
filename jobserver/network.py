"""Simulated network latency: the job server behaves as if it sat across a network.

With ``latency`` set (seconds, one way), every request reaches the server that much
later and every answer leaves that much later after its handler is done, so a client
pays a round trip per request while the server's own handling stays as fast as on
loopback. Callbacks travel as long on their way to their receiver
(``jobserver.callbacks``).

A ``/start`` spends its way in inside its account's gate accounting
(:meth:`jobserver.jobs.AccountGate.hold`): it reaches the gate ``latency`` after it was
sent, its answer leaves ``latency`` after the gate is released, and the gate can count
how many of an account's requests are on their way or waiting at once (its ``peak``).

Connecting is not delayed: the kernel accepts on loopback at once, as it would on a
warm keep-alive connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class NetworkLatency:
    """ASGI middleware: each HTTP request arrives, and its answer leaves, ``seconds`` late.

    Requests to ``gated_paths`` are not delayed on their way in here: their handler
    spends that delay itself, where it can be counted per account.
    """

    def __init__(self, app: ASGIApp, seconds: float, gated_paths: Collection[str] = ()) -> None:
        self.app = app
        self.seconds = seconds
        self.gated_paths = frozenset(gated_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        if scope["path"] not in self.gated_paths:
            await asyncio.sleep(self.seconds)  # the request on its way in
        seconds = self.seconds

        async def send_late(message: Message) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(seconds)  # the answer on its way out
            await send(message)

        await self.app(scope, receive, send_late)
