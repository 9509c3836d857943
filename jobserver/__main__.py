"""The ``jobserver`` command: serve the simulated job server, or check a proof bundle.

::

    jobserver [--host 127.0.0.1] [--port 8001] [--config PATH] [--<setting> VALUE ...]
    jobserver [--config PATH] [--secret S] verify PROOF --account NAME   # PROOF, or -

Every setting of :class:`jobserver.config.Settings` is a flag (``--callback-drop-rate``)
and an environment variable (``JOBSERVER_CALLBACK_DROP_RATE``); ``JOBSERVER_CONFIG``
names the TOML file when ``--config`` is not given.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvicorn

from infra.head import bounded_head_protocol
from infra.serving import (
    OrderlyServer,
    bind_socket,
    changed_settings,
    configure_logging,
    listening_url,
    tune_gc,
)
from jobserver.app import begin_drain, create_app
from jobserver.config import Settings
from jobserver.proofs import InvalidBundle, check_bundle, decode_bundle

# Not __name__: that is "__main__" under `python -m jobserver`, and the ready line should
# come from the same logger however the server is started.
logger = logging.getLogger("jobserver")

EXIT_OK = 0
PROOF_INVALID = 1
USAGE_ERROR = 2  # argparse's own exit code
STARTUP_FAILURE = 3  # as uvicorn's

USAGE = """\
jobserver [--host 127.0.0.1] [--port 8001] [--config PATH] [--<setting> VALUE ...]
       jobserver [--config PATH] [--secret SECRET] verify PROOF --account NAME"""


def build_parser() -> argparse.ArgumentParser:
    """``--config``, the verify command and one flag per setting (only those given count)."""
    parser = argparse.ArgumentParser(
        prog="jobserver",
        usage=USAGE,
        description="Simulated job server (serves), or proof bundle checker (verify).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML settings file (env {Settings.config_variable})",
    )
    parser.add_argument(
        "command",
        nargs="*",
        default=[],
        metavar="verify PROOF",
        help="check a jobclient proof bundle (- reads it from stdin); exit 0 when valid",
    )
    parser.add_argument(
        "--account",
        metavar="NAME",
        help="verify: the account of the bundle's jobs (the bundle does not name it)",
    )
    Settings.add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``jobserver`` console script; returns the exit code."""
    parser = build_parser()
    options = parser.parse_intermixed_args(argv)
    command: list[str] = getattr(options, "command", [])
    account: str | None = getattr(options, "account", None)
    if command and command[0] != "verify":
        parser.error(f"unknown command {command[0]!r}; the only command is: verify PROOF")
    if command and len(command) != 2:
        parser.error("verify takes one PROOF (the bundle text, or - to read it from stdin)")
    if command and not account:
        parser.error("verify needs --account NAME: a proof bundle does not name its account")
    if account is not None and not command:
        parser.error("--account belongs to the verify command")
    loaded = Settings.from_command_line(
        options, os.environ if environ is None else environ, "jobserver"
    )
    if loaded is None:
        return STARTUP_FAILURE
    settings, warnings = loaded
    if command and account:
        return verify(settings, command[1], account)
    return serve(settings, warnings)


def verify(settings: Settings, proof: str, account: str) -> int:
    """Print whether the bundle is valid (exit 0) or, per job, why it is not (exit 1)."""
    text = sys.stdin.read() if proof == "-" else proof
    try:
        check = check_bundle(settings.secret.encode(), decode_bundle(text), account)
    except InvalidBundle as exc:
        return say([f"INVALID: {exc}"], PROOF_INVALID)
    if check.valid:
        return say([f"VALID: {check.describe()}"], EXIT_OK)
    lines = [f"INVALID: {check.describe()}"]
    lines += [f"  job {failure.id}: {failure.reason}" for failure in check.failures]
    return say(lines, PROOF_INVALID)


def say(lines: Sequence[str], code: int) -> int:
    """Print ``lines`` on stdout and return ``code``; a reader that stopped reading (``|
    head -1``) is no error: the rest goes nowhere, and the verdict stays the exit code."""
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout once more at exit: point it at /dev/null first, so that
        # flush finds nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def serve(settings: Settings, warnings: Sequence[str] = ()) -> int:
    """Run the server until SIGTERM or SIGINT; exit 0 then."""
    configure_logging(settings.log_level)
    for warning in warnings:
        logger.warning("%s", warning)
    tune_gc()
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        print(
            f"jobserver: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return STARTUP_FAILURE
    url = listening_url(sock)
    logger.info("settings: %s", changed_settings(settings))
    config = uvicorn.Config(
        create_app(settings),
        loop="uvloop",
        http=bounded_head_protocol(settings.max_head_size, settings.max_headers),
        ws="none",
        lifespan="on",
        log_config=None,  # keep the logging configured above
        log_level=settings.log_level,
        access_log=settings.access_log,
        backlog=settings.backlog,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        server_header=False,
    )
    server = JobServerProcess(config, url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    # uvicorn returns quietly when the lifespan's startup fails: that is a failed start.
    return EXIT_OK if server.started else STARTUP_FAILURE


class JobServerProcess(OrderlyServer):
    """uvicorn's server with the job server's ready line and drain, stopped in order
    (``infra.serving``): held requests are answered before uvicorn's own shutdown.
    """

    name = "jobserver"

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            logger.info("jobserver listening on %s", self.url)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # 1. Held wait: true requests answer 503 now, so uvicorn's wait for the
        #    connections ends as soon as those answers are sent.
        begin_drain(self.lifespan.state)
        # 2. Then uvicorn's own shutdown, each of its steps once.
        await super().shutdown(sockets=sockets)


if __name__ == "__main__":
    sys.exit(main())
