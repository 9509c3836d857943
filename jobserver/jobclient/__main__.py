"""``jobclient``: the command line that puts the run, the verdict and the progress together.

``jobclient --url URL --account NAME [--jobs 50] [--deadline 5] [--timeout 120] [--json]``
(DESIGN §5). The live progress line goes to stderr on a terminal, count lines elsewhere
(none with ``--json``); the report goes to stdout. Exits 0 on PASSED, 1 on FAILED, 2 on
a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import NoReturn

import httpx

from jobserver.jobclient.progress import ProgressLine, ProgressLines
from jobserver.jobclient.run import DEFAULT_TIMEOUT, RunReport, run_jobs
from jobserver.jobclient.verdict import judge, render_json, render_text

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_JOBS = 50
DEFAULT_DEADLINE = 5.0


class UsageError(Exception):
    """A bad command line; :func:`main` prints it on one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _jobs_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _endpoint(text: str) -> str:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"must be an absolute http(s) URL, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``jobclient`` command line (DESIGN §5)."""
    parser = _Parser(
        prog="jobclient",
        description="Post held job requests all at once and judge the answers.",
    )
    parser.add_argument("--url", required=True, type=_endpoint, help="full endpoint URL")
    parser.add_argument("--account", required=True, help="account name to post")
    parser.add_argument("--jobs", type=_jobs_count, default=DEFAULT_JOBS, help="default 50")
    parser.add_argument(
        "--deadline", type=_seconds, default=DEFAULT_DEADLINE, help="seconds, default 5"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT, help="per request, default 120"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jobclient``; returns the exit code (0 PASSED, 1 FAILED, 2 usage error)."""
    try:
        options = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"jobclient: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not options.account:
        print("jobclient: error: argument --account: must not be empty", file=sys.stderr)
        return EXIT_USAGE

    progress: ProgressLine | ProgressLines | None = None
    if sys.stderr.isatty():
        progress = ProgressLine(options.jobs, sys.stderr)
    elif not options.json:
        progress = ProgressLines(options.jobs, sys.stderr)

    async def run() -> RunReport:
        shown = progress.shown() if isinstance(progress, ProgressLine) else contextlib.nullcontext()
        async with shown:
            return await run_jobs(
                options.url,
                options.account,
                options.jobs,
                request_timeout=options.timeout,
                on_progress=progress,
            )

    try:
        report = asyncio.run(run())
    except KeyboardInterrupt:
        print("jobclient: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

    verdict = judge(report, options.deadline)
    if options.json:
        print(render_json(report, verdict, options.deadline))
    else:
        print(render_text(report, verdict))
    return EXIT_PASSED if verdict.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
