"""Start a server's console script as a child process and wait for its ready line.

Used by the demo, the benchmarks and the end-to-end tests, so that all three run the
very command line a user (or the Docker image) runs. Every server of this project logs
``... listening on http://HOST:PORT`` once it accepts connections; ``--port 0`` makes
the kernel pick the port and the ready line tells which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

READY_LINE = re.compile(r"listening on (http://\S+)")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


class ServerFailed(RuntimeError):
    """The child exited or stayed silent before printing its ready line."""


@dataclass
class ServerProcess:
    """A running server: its base URL, its process and the tail of its output."""

    url: str
    process: asyncio.subprocess.Process
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        return "\n".join(self.output)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit; SIGKILL after ``timeout``. Returns the code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                logger.warning(
                    "pid %d ignored signal %d for %.0f s: killing", self.pid, sig, timeout
                )
                self.process.kill()
                await self.process.wait()
        return self.process.returncode if self.process.returncode is not None else -1


def script_path(name: str) -> str:
    """The console script installed next to the running interpreter, else ``name`` on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


async def _pump(
    stream: asyncio.StreamReader, sink: deque[str], echo: bool, ready: asyncio.Future[str]
) -> None:
    """Keep the tail of the child's output (and echo it); resolve ``ready`` with its URL."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        sink.append(text)
        if echo:
            print(text, file=sys.stderr, flush=True)
        if not ready.done() and (match := READY_LINE.search(text)):
            ready.set_result(match.group(1))


@contextlib.asynccontextmanager
async def run_server(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    echo: bool = False,
    ready_timeout: float = READY_TIMEOUT,
) -> AsyncIterator[ServerProcess]:
    """Run ``argv`` (a console script and its flags) until the block ends, then SIGTERM it."""
    child_env = {**os.environ, **(env or {})}
    process = await asyncio.create_subprocess_exec(
        script_path(argv[0]),
        *argv[1:],
        env=child_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output: deque[str] = deque(maxlen=200)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    # One reader for the child's whole life: it also drains the pipe so the child never
    # blocks on a full one.
    pump = asyncio.create_task(_pump(process.stdout, output, echo, ready))
    await asyncio.wait((ready, pump), timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        if process.returncode is None:
            process.kill()
        await process.wait()
        await pump
        tail = "\n".join(output)
        raise ServerFailed(f"{argv[0]} did not become ready (exit {process.returncode}):\n{tail}")
    server = ServerProcess(ready.result(), process, output)
    try:
        yield server
    finally:
        await server.stop()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
