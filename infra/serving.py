"""Serving with uvicorn, the same way for both servers: a pre-bound socket, the ready
URL, the settings worth logging, the log format, the collector's tuning, and signals
that always stop in order.

:class:`OrderlyServer` handles its signals on the event loop. SIGTERM or SIGINT begins
the server's orderly stop (its :meth:`uvicorn.Server.shutdown`, which a server
overrides to drain first); a second one cuts the drain short (:meth:`OrderlyServer.hurry`)
but never skips a step of the stop, so the lifespan's shutdown always runs and the
process exits 0. uvicorn's own handling would re-raise the signal once stopped (the
process dies of it) and, on a second SIGINT, skip the lifespan's shutdown. SIGHUP,
SIGUSR1 and SIGUSR2 would kill the process outright: they are logged and ignored, since
these servers reload nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Generator
from types import FrameType

import uvicorn
from pydantic import BaseModel

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
GC_THRESHOLD = 7_000


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (a setting: ``info``), one format for both servers."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # httpx logs every outbound request at INFO: one line per job or callback is noise,
    # and CPU, and would swamp a benchmark.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))


def tune_gc() -> None:
    """The collector's settings for a process that holds thousands of requests."""
    # Each held request allocates a few dozen objects; with thousands in flight the
    # default young-generation threshold (700) runs a collection every few requests.
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so that ``--port 0`` resolves to a real port up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listening_url(sock: socket.socket) -> str:
    """The URL a bound socket answers on, for the ready line."""
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def changed_settings(settings: BaseModel) -> str:
    """The settings that differ from their defaults, secrets masked, for the start-up log."""
    changed = []
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if value != field.get_default(call_default_factory=True):
            shown = "***" if "secret" in name else repr(value)
            changed.append(f"{name}={shown}")
    return ", ".join(changed) or "all defaults"


class OrderlyServer(uvicorn.Server):
    """uvicorn's server whose signals always stop it in order (see the module docstring)."""

    name = "server"  # for the log lines

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        for sig in IGNORED_SIGNALS:
            loop.add_signal_handler(sig, self._ignore, sig)
        try:
            yield
        finally:
            for sig in (*STOP_SIGNALS, *IGNORED_SIGNALS):
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            logger.info(
                "%s: %s again: cutting the drain short", self.name, signal.Signals(sig).name
            )
            self.hurry()
            return
        logger.info("%s: %s: stopping in order", self.name, signal.Signals(sig).name)
        super().handle_exit(sig, frame)

    def hurry(self) -> None:
        """A second stop signal came: finish the stop without waiting (no-op by default)."""

    def _ignore(self, sig: int) -> None:
        logger.warning(
            "%s: %s ignored: nothing is reloaded; SIGTERM or SIGINT stops the server",
            self.name,
            signal.Signals(sig).name,
        )
