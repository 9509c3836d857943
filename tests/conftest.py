"""Fixtures shared by every test tier.

End-to-end tests start the real console scripts (``jobserver``, ``jobproxy``) on
127.0.0.1 with ``--port 0`` through :func:`run_program`, the same command lines the demo,
the benchmarks and the Docker image use; the process is stopped when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter
from starlette.types import ASGIApp, Receive, Scope, Send

from bench import harness
from bench.harness import ServerProcess

LIFESPAN_TIMEOUT = 10.0


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
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    running = asyncio.create_task(app(scope, inbox.get, outbox.put))

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


FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured figure; it is printed in the summary at the end of the run."""
    figures = request.config.stash.setdefault(FIGURES, [])
    return figures.append


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("measured figures")
        for line in figures:
            terminalreporter.write_line(line)
