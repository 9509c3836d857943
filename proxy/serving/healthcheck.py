"""``python -m proxy.healthcheck``: exit 0 when the proxy on this machine answers ``/healthz``.

The image's ``HEALTHCHECK`` runs it in a process of its own, which cannot see the
server's command line: a ``--port 18000`` there escapes any check that reads the
settings alone. So the server records the URL it listens on in ``address_file`` once it
serves and removes it when it stops (:func:`record_address`, :func:`forget_address`);
the check asks that URL, and without the file the one the settings give (defaults ←
``--config`` file ← ``JOBPROXY_*``). The image sets ``JOBPROXY_ADDRESS_FILE``, so both
processes read the same value.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from proxy.config import ConfigError, Settings, reachable_url

HEALTHY = 0
UNHEALTHY = 1
TIMEOUT = 2.0

# The check speaks to this machine only: an HTTP_PROXY of the environment must not
# take its request elsewhere.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def record_address(path: str, url: str) -> None:
    """Write ``url`` to ``path`` whole or not at all: a check never reads half of it."""
    partial = Path(f"{path}.partial")
    partial.write_text(url + "\n")
    partial.replace(path)


def forget_address(path: str) -> None:
    """Remove the recorded URL, so that no later check asks a server that stopped."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def target_url(settings: Settings) -> str:
    """Where the proxy listens: the URL it recorded, else the one its settings give."""
    if settings.address_file:
        with contextlib.suppress(OSError):
            recorded = Path(settings.address_file).read_text().strip()
            if recorded:
                return recorded
    return reachable_url(settings.host, settings.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.healthcheck",
        description="Exit 0 if the proxy answers GET /healthz with 200, else 1.",
    )
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="the TOML settings file the proxy reads"
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT, help=f"seconds (default: {TIMEOUT:g})"
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m proxy.healthcheck``; returns the exit code."""
    options = build_parser().parse_args(argv)
    try:
        settings = Settings.load(
            config_path=options.config,
            env=os.environ if environ is None else environ,
            warn=lambda _: None,  # the server warns about those variables already
        )
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return UNHEALTHY
    url = f"{target_url(settings)}/healthz"
    try:
        with _DIRECT.open(url, timeout=options.timeout) as answer:
            status: int = answer.status
    except (OSError, ValueError) as exc:  # refused, timed out, an HTTP error, a bad URL
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return UNHEALTHY
    print(f"healthcheck: {url}: {status}")
    return HEALTHY if status == 200 else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
