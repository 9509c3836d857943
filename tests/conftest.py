"""Fixtures shared by every test tier, and the one way to run each kind of server.

- :func:`app_lifespan` runs an app's lifespan around a block, for in-process tests that
  call the app through ``httpx.ASGITransport`` (which skips the lifespan).
- :func:`run_server` serves an ASGI app with uvicorn in the test's event loop, on
  127.0.0.1 and a port the kernel picked, for tests that need real sockets.
- :func:`run_program` starts a real console script (``jobserver``, ``jobproxy``) with
  ``--port 0``, the same command lines the demo, the benchmarks and the Docker image
  use; the process is stopped when the block ends.
- :func:`loopback_socket` and :func:`closed_port` are the one way to get a port.
- :func:`eventually` is the one way to wait for a condition that no event announces.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import pytest
import uvicorn
from _pytest.terminal import TerminalReporter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bench import harness
from bench.harness import ServerProcess

LIFESPAN_TIMEOUT = 10.0
SERVER_START_TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"


def loopback_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a port the kernel picked; not listening yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    return sock


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections for the block: bound, not listening,
    so that nothing else takes it meanwhile. Free again once the block ends."""
    with loopback_socket() as sock:
        port: int = sock.getsockname()[1]
        yield port


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
) -> None:
    """Return once ``condition()`` (a plain or async predicate) holds; TimeoutError when
    it still does not after ``timeout`` seconds. For what no event announces, such as
    another process's counters; where an event exists, wait on it instead."""
    async with asyncio.timeout(timeout):
        while True:
            holds = condition()
            if inspect.isawaitable(holds):
                holds = await holds
            if holds:
                return
            await asyncio.sleep(interval)


class _ServerInTest(uvicorn.Server):
    """uvicorn's server inside a test: signals stay with pytest; start-up is an event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.asynccontextmanager
async def run_server(
    app: ASGIApp, sock: socket.socket | None = None, **config: Any
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 for the block; yields its base URL.

    The socket is bound before uvicorn starts (``--port 0`` without the wait for a ready
    line; ``sock``, from :func:`loopback_socket`, when the app must know its port before
    it is served), and the block begins once the app's lifespan has started. ``config``
    sets ``uvicorn.Config`` options; logging is left to pytest.
    """
    sock = sock or loopback_socket()
    options: dict[str, Any] = {
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "ws": "none",
        "timeout_graceful_shutdown": 2,
    }
    server = _ServerInTest(uvicorn.Config(app, **(options | config)))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.ensure_future(server.ready.wait())
    try:
        await asyncio.wait(
            (ready, serving), timeout=SERVER_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if not server.ready.is_set():
            raise RuntimeError(f"uvicorn did not start within {SERVER_START_TIMEOUT:g} s")
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    finally:
        ready.cancel()
        # Shut down, then cancel the serve task, as uvicorn's own tests do.
        if server.started:
            await server.shutdown(sockets=[sock])
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        sock.close()


@contextlib.asynccontextmanager
async def run_program(
    script: str, *flags: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Run ``script --host 127.0.0.1 --port 0 *flags`` for the duration of the block."""
    argv: Sequence[str] = [script, "--host", "127.0.0.1", "--port", "0", *flags]
    async with harness.run_server(argv, env=env) as server:
        yield server


@contextlib.asynccontextmanager
async def app_lifespan(app: ASGIApp) -> AsyncIterator[tuple[ASGIApp, dict[str, Any]]]:
    """Run ``app``'s lifespan around the block, as a server would.

    Yields the app to call (every request's scope gets a copy of the lifespan's state,
    as uvicorn gives it) and that state itself, for tests that look inside.
    """
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}

    async def run_lifespan() -> None:
        await app(scope, inbox.get, outbox.put)

    running = asyncio.create_task(run_lifespan())

    async def step(message: str) -> None:
        await inbox.put({"type": f"lifespan.{message}"})
        async with asyncio.timeout(LIFESPAN_TIMEOUT):
            reply = await outbox.get()
        if reply["type"] != f"lifespan.{message}.complete":
            raise RuntimeError(f"lifespan {message} failed: {reply.get('message')}")

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = state.copy()
        await app(scope, receive, send)

    try:
        await step("startup")
        yield with_state, state
        await step("shutdown")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured figure; it is printed in the summary at the end of the run.

    The figure travels in the test's report, so it reaches the summary also when the
    test ran in another process (pytest-xdist).
    """

    def record(line: str) -> None:
        request.node.user_properties.append(("figure", line))

    return record


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    # Every test's teardown report carries what it recorded, whichever process ran it.
    figures = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "teardown"
        for name, value in report.user_properties
        if name == "figure"
    ]
    if figures:
        terminalreporter.section("measured figures")
        for line in figures:
            terminalreporter.write_line(line)
