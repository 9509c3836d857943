"""Serving the app with uvicorn: a pre-bound socket, a ready line, and an ordered drain.

Shutdown order on SIGTERM/SIGINT: refuse new requests with 503 (``/readyz`` too) while
still listening, so that the callbacks of held requests get in; let held requests
finish as their jobs do, up to ``drain_timeout``; answer what remains with 503; then
uvicorn's own shutdown: stop accepting, close the connections, run the lifespan's
shutdown (which closes the outbound client).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from infra.head import DEFAULT_MAX_HEAD_SIZE, DEFAULT_MAX_HEADERS, bounded_head_protocol
from infra.serving import OrderlyServer, bind_socket, changed_settings, listening_url, tune_gc
from proxy.config import Settings, reachable_url
from proxy.services import Services
from proxy.serving.app import create_app
from proxy.serving.healthcheck import forget_address, record_address

logger = logging.getLogger(__name__)

# After the drain every held request has its answer; this bounds sending them.
CLOSE_GRACE = 5


def uvicorn_config(
    app: ASGIApp,
    *,
    lifespan: Literal["on", "off"],
    access_log: bool,
    backlog: int,
    max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> uvicorn.Config:
    """How the proxy is served; the bench's floor serves its raw app the same way.

    httptools parses, with the request head bounded (``infra.head``): over its size or
    header count, a request is answered 431 before the app sees it.
    """
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=bounded_head_protocol(max_head_size, max_headers),
        lifespan=lifespan,
        log_config=None,
        access_log=access_log,
        backlog=backlog,
        timeout_graceful_shutdown=CLOSE_GRACE,
        # Per answer, these cost a header each (and a date format) or a pass over the
        # client's address: the proxy answers machines, not browsers, and trusts no
        # X-Forwarded-* header it does not use.
        server_header=False,
        date_header=False,
        proxy_headers=False,
    )


class ProxyServer(OrderlyServer):
    """uvicorn's server with the proxy's ready line and drain, stopped in order
    (``infra.serving``): a drain before uvicorn's own shutdown, reached through the
    lifespan's state, which a second stop signal cuts short.
    """

    name = "jobproxy"

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self._settings = settings
        self._hurry = asyncio.Event()

    def hurry(self) -> None:
        self._hurry.set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Modules, the app and its clients live as long as the process: keep them out
        # of every collection, which otherwise walks them again for each held request.
        gc.freeze()
        if self.started and sockets:
            # Recorded before the ready line: whoever waits for that line finds the file.
            self._record_address(sockets[0])
            logger.info("jobproxy listening on %s", listening_url(sockets[0]))

    def _record_address(self, sock: socket.socket) -> None:
        """Tell the health check where to ask (see :mod:`proxy.serving.healthcheck`)."""
        path = self._settings.address_file
        if not path:
            return
        host, port = sock.getsockname()[:2]
        try:
            record_address(path, reachable_url(host, port))
        except OSError as exc:
            # Serving matters more: the check then asks the address of the settings.
            logger.warning("cannot record the address in %s: %s", path, exc)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # 1. Drain while still listening: the callbacks of the held requests must still
        #    get in. New requests are answered 503 meanwhile, and /readyz says so.
        services: Services = self.lifespan.state["services"]
        began = time.monotonic()
        held = len(services.waiters)
        finished, failed = await services.waiters.drain(
            self._settings.drain_timeout, hurry=self._hurry
        )
        logger.info(
            "drained %d held requests in %.1f s: %d finished, %d answered 503",
            held,
            time.monotonic() - began,
            finished,
            failed,
        )
        # 2. Then uvicorn's own shutdown, each of its steps once: stop accepting, close
        #    the connections (every answer is sent by now), the lifespan's shutdown.
        await super().shutdown(sockets)
        # 3. No longer serving: the health check must not find this address any more.
        if self._settings.address_file:
            forget_address(self._settings.address_file)


def serve(settings: Settings) -> bool:
    """Run the proxy until SIGTERM or SIGINT; False if it never started."""
    tune_gc()
    logger.info("settings: %s", changed_settings(settings))
    sock = bind_socket(settings.host, settings.port)
    settings = settings.with_public_url(sock.getsockname()[1])
    config = uvicorn_config(
        create_app(settings),
        lifespan="on",
        access_log=settings.access_log,
        backlog=settings.backlog,
        max_head_size=settings.max_head_size,
        max_headers=settings.max_headers,
    )
    server = ProxyServer(config, settings)
    server.run(sockets=[sock])
    return server.started
