"""The servers under test, each started afresh through the console script a user runs.

``--port 0`` lets the kernel pick a port; :func:`jobserver.harness.run_server` waits for
the ready line that names it, and stops the server when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bench.options import BenchOptions, Transport
from jobserver.harness import ServerProcess, run_server

HOST = "127.0.0.1"
# The proxy must never refuse the bench's own load with 503: leave room above the run.
MIN_MAX_PENDING = 20_000
DRAIN_TIMEOUT = 1.0


@contextlib.asynccontextmanager
async def job_server(options: BenchOptions) -> AsyncIterator[ServerProcess]:
    argv = ["jobserver", "--host", HOST, "--port", "0"]
    argv += ["--job-duration", str(options.job_duration)]
    argv += ["--job-duration-spread", str(options.job_spread), "--seed", str(options.seed)]
    async with run_server(argv, echo=options.echo) as server:
        yield server


@contextlib.asynccontextmanager
async def proxy_server(
    upstream_url: str, transport: Transport, options: BenchOptions
) -> AsyncIterator[ServerProcess]:
    max_pending = max(MIN_MAX_PENDING, 2 * max(options.sizes, default=0))
    argv = ["jobproxy", "--host", HOST, "--port", "0", "--upstream-url", upstream_url]
    argv += ["--max-pending", str(max_pending), "--job-deadline", str(options.request_timeout)]
    # Every run has ended (answered or given up) when the proxy is stopped: nothing to drain.
    argv += ["--drain-timeout", str(DRAIN_TIMEOUT)]
    env = {"JOBPROXY_UPSTREAM_TRANSPORT": transport}
    async with run_server(argv, env=env, echo=options.echo) as server:
        yield server
