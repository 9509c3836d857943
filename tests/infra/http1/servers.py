"""Servers for the HTTP/1.1 client's tests: a Starlette app that echoes what it got,
and raw asyncio servers that answer byte for byte what a test scripts."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from infra.http1 import Origin
from tests.conftest import loopback_socket

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class EchoApp:
    """A Starlette app that says what it received and from which client port."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.app = Starlette(
            routes=[
                Route("/echo", self.echo, methods=["GET", "POST"]),
                Route("/api/echo", self.echo, methods=["POST"]),
                Route("/chunked", self.chunked),
                Route("/close", self.close),
            ]
        )

    def _seen(self, request: Request) -> None:
        assert request.client is not None
        self.ports.append(request.client.port)

    async def echo(self, request: Request) -> Response:
        self._seen(request)
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "content_type": request.headers.get("content-type"),
                "trace": request.headers.get("x-trace"),
                "body": (await request.body()).decode(),
            }
        )

    async def chunked(self, request: Request) -> Response:
        self._seen(request)

        async def parts() -> AsyncIterator[bytes]:
            for part in (b"one,", b"two,", b"three"):
                yield part

        return StreamingResponse(parts())

    async def close(self, request: Request) -> Response:
        self._seen(request)
        return Response(b"bye", headers={"connection": "close"})


class RawServer:
    """An asyncio server that misbehaves on purpose: ``handle`` runs for each connection."""

    def __init__(self, handle: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.ssl_context = ssl_context
        self.connections = 0
        self.closed = 0  # connections whose client went away or that the handler ended
        self.changed = asyncio.Condition()
        self.url = ""
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def origin(self) -> Origin:
        return Origin.of(self.url)

    async def __aenter__(self) -> RawServer:
        sock = loopback_socket()
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=self.ssl_context)
        port = sock.getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        await self._count("connections")
        try:
            await self.handle(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            # Stopped by __aexit__, or a client that went away: either ends the
            # connection quietly (asyncio would log the handler's exception).
            pass
        finally:
            writer.close()
        await self._count("closed")

    async def _count(self, name: str) -> None:
        async with self.changed:
            setattr(self, name, getattr(self, name) + 1)
            self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(predicate)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's bytes (head and Content-Length body); b"" at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """A handler that answers each request with the next of ``answers``, kept alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            if not await read_request(reader):
                return
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client goes

    return handle


class HeldAnswers:
    """A handler that answers every request (kept alive) only once the test releases it."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()
        self.server = RawServer(self.handle)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            async with self.server.changed:
                self.arrived += 1
                self.server.changed.notify_all()
            await self.release.wait()
            writer.write(OK)
            await writer.drain()


def reset_on_close(sock: Any) -> None:
    """Make closing ``sock`` (a socket, or a transport's) send a TCP reset, not an orderly end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


OPENSSL_SELF_SIGNED = (
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
    " -nodes -days 1 -subj /CN=127.0.0.1"
)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made in ``directory``
    (the test is skipped without the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *OPENSSL_SELF_SIGNED.split(),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server's TLS context with ``cert``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
