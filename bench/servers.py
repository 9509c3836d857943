"""The servers under test, each started afresh through the console script a user runs.

``--port 0`` lets the kernel pick a port; :func:`bench.harness.run_server` waits for
the ready line that names it, and stops the server when the block ends.

Every proxy gets its settings as ``JOBPROXY_*`` environment variables: the bench's own,
then those given with ``--proxy-setting`` (which win), so that a setting can be swept
without editing code.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from bench.harness import ServerProcess, run_server
from bench.http import fetch
from bench.options import BenchOptions, Transport
from bench.outcomes import FAILURES

HOST = "127.0.0.1"
# The proxy must never refuse the bench's own load with 503: leave room above the run.
MIN_MAX_PENDING = 20_000
DRAIN_TIMEOUT = 1.0
HEALTHZ_TIMEOUT = 5.0
PROXY_ENV_PREFIX = "JOBPROXY_"
# What the bench decides for every proxy it starts; --proxy-setting may not change these.
BENCH_PROXY_SETTINGS = frozenset(
    {"host", "port", "upstream_url", "public_url", "upstream_transport", "upstream_dialect"}
)


@contextlib.asynccontextmanager
async def job_server(
    options: BenchOptions, latency: float = 0.0, flags: Sequence[str] = ()
) -> AsyncIterator[ServerProcess]:
    """A job server; ``latency`` (s, one way) puts it across a simulated network, and
    ``flags`` give it more settings (they win over the bench's)."""
    argv = ["jobserver", "--host", HOST, "--port", "0"]
    argv += ["--job-duration", str(options.job_duration)]
    argv += ["--job-duration-spread", str(options.job_spread), "--seed", str(options.seed)]
    argv += ["--dialect", options.dialect]
    if latency > 0:
        argv += ["--latency", str(latency)]
    async with run_server([*argv, *flags], echo=options.echo) as server:
        yield server


async def read_health(server: ServerProcess) -> dict[str, int]:
    """A server's ``/healthz`` counts, by name; empty when it cannot say."""
    try:
        answer = await fetch(f"{server.url}/healthz", HEALTHZ_TIMEOUT)
        document = json.loads(answer.body)
    except (*FAILURES, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {name: value for name, value in document.items() if isinstance(value, int)}


async def read_start_queue_peak(jobserver: ServerProcess) -> int | None:
    """The job server's ``start_queue_peak`` (``/healthz``); None when it cannot say.

    The most ``/start`` requests of one account on their way or waiting at once since
    the server started: near the run's jobs per account when the proxy lets an account's
    starts overlap, 1 when it sends them one after another.
    """
    return (await read_health(jobserver)).get("start_queue_peak")


@contextlib.asynccontextmanager
async def floor_server(hold: int, options: BenchOptions) -> AsyncIterator[ServerProcess]:
    """The serving stack alone (:mod:`bench.floor`): ``POST /hold`` held in batches of ``hold``."""
    # The harness runs a name found next to the running interpreter: this interpreter.
    argv = [Path(sys.executable).name, "-m", "bench.floor", "--host", HOST, "--port", "0"]
    argv += ["--hold", str(hold), "--hold-timeout", str(options.request_timeout)]
    async with run_server(argv, echo=options.echo) as server:
        yield server


def proxy_environment(options: BenchOptions, transport: Transport) -> dict[str, str]:
    """The proxy's settings as ``JOBPROXY_*`` variables: the bench's, then ``--proxy-setting``."""
    settings = {
        "max_pending": str(max(MIN_MAX_PENDING, 2 * max(options.sizes, default=0))),
        "job_deadline": str(options.request_timeout),
        # Every run has ended (answered or given up) when the proxy is stopped: no drain.
        "drain_timeout": str(DRAIN_TIMEOUT),
        **dict(options.proxy_settings),
        "upstream_transport": transport,
        "upstream_dialect": options.dialect,
    }
    return {PROXY_ENV_PREFIX + name.upper(): value for name, value in settings.items()}


@contextlib.asynccontextmanager
async def proxy_server(
    upstream_url: str, transport: Transport, options: BenchOptions
) -> AsyncIterator[ServerProcess]:
    argv = ["jobproxy", "--host", HOST, "--port", "0", "--upstream-url", upstream_url]
    env = proxy_environment(options, transport)
    async with run_server(argv, env=env, echo=options.echo) as server:
        yield server
