"""``jobproxy``: the command line. Options map one-to-one onto :class:`Settings`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from infra.serving import configure_logging
from proxy.config import Settings
from proxy.serving.server import serve

logger = logging.getLogger("jobproxy")

STARTUP_FAILURE = 3

USAGE = """\
jobproxy [--host 127.0.0.1] [--port 8000] [--config PATH] [--upstream-url URL]
                [--public-url URL] [--redis-url URL] [--<setting> VALUE ...]"""


def build_parser() -> argparse.ArgumentParser:
    """``--config`` and one flag per setting; only the flags given reach the settings."""
    parser = argparse.ArgumentParser(
        prog="jobproxy",
        usage=USAGE,
        description="Hold blocking job requests open while the job server works via callbacks.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="TOML settings file (see config/proxy.toml); default: $JOBPROXY_CONFIG",
    )
    Settings.add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``jobproxy`` console script; returns the exit code."""
    options = build_parser().parse_args(argv)
    loaded = Settings.from_command_line(
        options, os.environ if environ is None else environ, "jobproxy"
    )
    if loaded is None:
        return STARTUP_FAILURE
    settings, warnings = loaded
    configure_logging(settings.log_level)
    for warning in warnings:
        logger.warning("%s", warning)
    try:
        started = serve(settings)
    except OSError as exc:
        print(f"jobproxy: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    return 0 if started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
