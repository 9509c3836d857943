"""The HTTP client the proxy calls the job server with, and the one place where httpx
errors become the proxy's (:func:`job_server_errors`). Connections are kept alive for
reuse."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

from proxy.config import Settings
from proxy.errors import (
    UpstreamBadResponse,
    UpstreamTimedOut,
    UpstreamUnavailable,
)
from proxy.upstream.transport import UpstreamTransport

KEEPALIVE_EXPIRY = 4.0


def native_transport(settings: Settings) -> UpstreamTransport | None:
    """The project's own transport (``proxy.upstream.transport``) when the settings choose it: a
    keep-alive pool to the job server's origin, with idle connections given up before
    uvicorn's own keep-alive timeout (5 s) would close them under a request."""
    if settings.upstream_transport != "native":
        return None
    return UpstreamTransport(
        settings.upstream_url,
        max_connections=settings.upstream_max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )


def build_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one outbound client of the proxy, on ``transport``: the project's own
    (:func:`native_transport`), or a test's fake; None: httpx's own pool."""
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
    )
    # The pool wait is bounded by each call's own timeout, never by a fixed pool timeout.
    timeout = httpx.Timeout(settings.start_timeout, pool=None)
    return httpx.AsyncClient(transport=transport, limits=limits, timeout=timeout)


def nothing_was_sent(exc: httpx.TransportError) -> bool:
    """True when the request cannot have reached the job server (so a retry is safe)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _reason(exc: BaseException) -> str:
    """An exception in words: its kind, and its message when it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def job_server_errors(url: httpx.URL) -> Iterator[None]:
    """The one place where httpx's errors become the proxy's, as httpx itself maps
    httpcore's: a request that cannot have left is UpstreamUnavailable (safe to retry),
    any other failure UpstreamBadResponse (a job may have been started)."""
    try:
        yield
    except httpx.TransportError as exc:
        if nothing_was_sent(exc):
            raise UpstreamUnavailable(
                f"cannot reach the job server at {url} ({_reason(exc)})"
            ) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise UpstreamTimedOut(
                f"the job server did not answer in time ({_reason(exc)})"
            ) from exc
        raise UpstreamBadResponse(
            f"the connection to the job server failed ({_reason(exc)})"
        ) from exc
