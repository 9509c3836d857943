"""The proxy and the job server as real processes, and what reads them from outside.

For the tests whose point is a process (signals, exit codes, the console scripts,
shared mode across replicas): :func:`system` starts both servers, :func:`run_jobclient`
runs the ``jobclient`` script, and :func:`metric` / :func:`wait_for_metric` read the
proxy's ``/metrics`` across the process line, where no event can be awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx

from bench.harness import ServerProcess, script_path
from tests.conftest import eventually, run_program
from tests.proxy.conftest import sample


@contextlib.asynccontextmanager
async def system(
    jobserver_flags: Sequence[str] = (),
    proxy_flags: Sequence[str] = (),
    proxy_env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """A job server and a proxy in front of it, both real processes."""
    async with (
        run_program("jobserver", *jobserver_flags) as jobserver,
        run_program(
            "jobproxy", "--upstream-url", jobserver.url, *proxy_flags, env=proxy_env
        ) as proxy,
    ):
        yield jobserver, proxy


async def run_jobclient(url: str, *flags: str) -> tuple[int, dict[str, Any]]:
    """Run the jobclient console script with --json; its exit code and report."""
    argv = ["--url", url, "--account", "e2e", "--json", *flags]
    client = await asyncio.create_subprocess_exec(
        script_path("jobclient"), *argv, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        stdout, _ = await client.communicate()
    assert client.returncode is not None
    return client.returncode, json.loads(stdout)


async def metric(proxy_url: str, name: str) -> float:
    """The value of the sample ``name`` on the proxy's ``/metrics`` (0 when absent)."""
    async with httpx.AsyncClient() as client:
        return sample((await client.get(f"{proxy_url}/metrics")).text, name)


async def wait_for_metric(
    proxy_url: str, name: str, reached: Callable[[float], bool], timeout: float = 10
) -> float:
    """Poll another process's metric until ``reached``: no event crosses the process line.
    Returns the value that reached it."""
    value = 0.0

    async def is_reached() -> bool:
        nonlocal value
        value = await metric(proxy_url, name)
        return reached(value)

    await eventually(is_reached, timeout=timeout, interval=0.02)
    return value
