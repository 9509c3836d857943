"""``make demo`` (``python -m bench.demo``): interrupted with Ctrl-C, it says so."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import httpx

from tests.conftest import eventually

WAIT = 30.0


async def test_ctrl_c_during_the_demo_says_it_was_interrupted() -> None:
    """Ctrl-C (SIGINT to the whole process group) while the jobclient's jobs run: the
    client and the demo say they were interrupted, no FAILED report, exit 130."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # a process group of its own, as a terminal's job is
        env={**os.environ, "JOBSERVER_JOB_DURATION": "10"},
    )
    assert process.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(WAIT):
            while b"$ jobclient" not in seen:
                seen += await process.stdout.readline()
        found = re.search(rb"job server: (http://\S+)", seen)
        assert found is not None
        async with httpx.AsyncClient(base_url=found.group(1).decode()) as client:

            async def jobs_running() -> bool:
                started: int = (await client.get("/healthz")).json()["jobs_started"]
                return started >= 1

            await eventually(jobs_running, timeout=WAIT)
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), WAIT)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    output = (seen + rest).decode()
    assert process.returncode == 130, output
    assert "jobclient: interrupted" in output
    assert "demo: interrupted" in output
    assert "FAILED" not in output
