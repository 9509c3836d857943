"""``python -m bench.floor``: the floor of the serving stack, to see the proxy's own share.

A raw ASGI app (no Starlette, no routing, no JSON parsing) served the way the proxy is
served, by ``proxy.serving.server``'s own configuration: uvicorn with uvloop and httptools, no
log config, no access log, no server or date header, the proxy's default backlog and its
garbage-collector settings; lifespan off, as the app has nothing to set up. Whatever the
proxy spends above this app is the proxy's own.

How it measures both figures in one run: every ``POST /hold`` is held until ``--hold``
of them are held at once, then all of them are answered (and the next batch begins).
At that moment every request of the run is open, as in the proxy's scale run, so the
peak RSS above the baseline, shared out over the requests, is what a held connection
costs; and every request has gone through the whole life of a held request (accepted,
parsed, body read, waited on, answered, closed) with nothing on top, so the CPU time per
request is the stack's own. Answering at once would understate the memory (only a few
requests would be open at any moment); holding each for a fixed time would hold an
unknown share of them at once on a busy machine.

Any other request is answered at once (the warm-up). Each answer is a completed job's
JSON, about the size of the proxy's, so the load generator counts it as a success; a
batch still incomplete after ``--hold-timeout`` is answered ``503`` instead, so a lost
request ends the run with errors rather than hanging it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import uvicorn

from infra.serving import bind_socket, listening_url, tune_gc
from proxy.config import Settings
from proxy.serving.server import uvicorn_config

STARTUP_FAILURE = 3
HOLD_PATH = "/hold"
JOB_ID = "f100f100f100f100"
PROOF = "F100" * 10
TIMED_OUT = b'{"error":"hold_timeout","detail":"the batch did not fill in time"}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HeldBatches:
    """Holds requests until ``size`` are held, then lets the whole batch go at once.

    One future and one timer per batch, whatever its size: the floor adds nothing per
    held request beyond the waiting coroutine itself.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._held = 0
        self._release: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def hold(self) -> bool:
        """Wait for the batch to fill; False when ``timeout`` passed first."""
        if self.size <= 1:
            return True
        if self._release is None:
            loop = asyncio.get_running_loop()
            self._release = loop.create_future()
            self._timer = loop.call_later(self.timeout, self._end_batch, False)
        release = self._release
        self._held += 1
        if self._held >= self.size:
            self._end_batch(True)
        return await release

    def _end_batch(self, filled: bool) -> None:
        if self._release is not None and not self._release.done():
            self._release.set_result(filled)
        if self._timer is not None:
            self._timer.cancel()
        self._release, self._timer, self._held = None, None, 0


def _job_body() -> bytes:
    now = time.time()
    started_at = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1_000):03d}Z"
    )
    job = {"id": JOB_ID, "state": "completed", "startedAt": started_at, "proof": PROOF}
    return json.dumps(job, separators=(",", ":")).encode()


class FloorApp:
    """The raw ASGI app: read the body, hold ``POST /hold`` in batches, answer a job."""

    def __init__(self, batches: HeldBatches) -> None:
        self.batches = batches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more_body = message.get("more_body", False)
        held = scope["method"] == "POST" and scope["path"] == HOLD_PATH
        if held and not await self.batches.hold():
            status, body = 503, TIMED_OUT
        else:
            status, body = 200, _job_body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class FloorServer(uvicorn.Server):
    """uvicorn's server with the ready line the bench's harness waits for."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # As the proxy does: start-up objects stay out of every collection.
        gc.freeze()
        if self.started and sockets:
            print(f"floor listening on {listening_url(sockets[0])}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description="A raw ASGI app under the proxy's uvicorn configuration: the stack's floor.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument(
        "--hold", type=int, default=1, help="answer POST /hold in batches of this many (default 1)"
    )
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=60.0,
        help="answer 503 to a batch not filled within this many seconds (default 60)",
    )
    args = parser.parse_args(argv)
    if args.hold < 1 or args.hold_timeout <= 0:
        parser.error("--hold must be at least 1, --hold-timeout above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_gc()
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"floor: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    config = uvicorn_config(
        FloorApp(HeldBatches(args.hold, args.hold_timeout)),
        lifespan="off",
        access_log=False,
        backlog=Settings.model_fields["backlog"].default,
    )
    server = FloorServer(config)
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
