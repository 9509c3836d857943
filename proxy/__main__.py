"""``jobproxy``: the command line. Options map one-to-one onto :class:`Settings`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.config import ConfigError, Settings, load_settings
from proxy.server import serve

logger = logging.getLogger("jobproxy")

STARTUP_FAILURE = 3

FLAGS: dict[str, str] = {
    "--host": "host",
    "--port": "port",
    "--upstream-url": "upstream_url",
    "--public-url": "public_url",
    "--redis-url": "redis_url",
    "--replica-id": "replica_id",
    "--callback-secret": "callback_secret",
    "--job-deadline": "job_deadline",
    "--max-pending": "max_pending",
    "--drain-timeout": "drain_timeout",
    "--log-level": "log_level",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobproxy",
        description="Hold blocking job requests open while the job server works via callbacks.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (see config/proxy.toml)")
    for flag, name in FLAGS.items():
        parser.add_argument(flag, dest=name, metavar=name.upper(), help=f"setting {name}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {name: getattr(args, name) for name in FLAGS.values()}
    warnings: list[str] = []
    try:
        settings: Settings = load_settings(
            config_path=args.config, env=os.environ, overrides=overrides, warn=warnings.append
        )
    except ConfigError as exc:
        print(f"jobproxy: bad configuration: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for warning in warnings:
        logger.warning("%s", warning)
    # httpx logs every outbound request at INFO: one line per job is noise, and CPU.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    try:
        started = serve(settings)
    except OSError as exc:
        print(f"jobproxy: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    return 0 if started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
