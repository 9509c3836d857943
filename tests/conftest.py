"""Fixtures shared by every test tier.

End-to-end tests start the real console scripts (``jobserver``, ``jobproxy``) on
127.0.0.1 with ``--port 0`` through :func:`run_server`, the same command lines the demo,
the benchmarks and the Docker image use; the process is stopped when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import pytest
from _pytest.terminal import TerminalReporter

from jobserver.harness import ServerProcess
from jobserver.harness import run_server as _run_server


@contextlib.asynccontextmanager
async def run_server(
    script: str, *flags: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Run ``script --host 127.0.0.1 --port 0 *flags`` for the duration of the block."""
    argv: Sequence[str] = [script, "--host", "127.0.0.1", "--port", "0", *flags]
    async with _run_server(argv, env=env) as server:
        yield server


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
