"""Fake job servers for the jobclient's tests.

The fakes answer ``POST /start`` the way the protocol says a job server (or a proxy in
front of one) may: valid completed jobs with real proofs, failed jobs, garbage, error
statuses, slow answers. Most tests reach them in-process (``httpx.ASGITransport`` or
``httpx.MockTransport``); those that exercise the real network serve a Starlette app
with :func:`tests.conftest.run_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobserver.proofs import check_bundle, decode_bundle, make_proof
from tests.conftest import run_server

SECRET = b"test-secret"
ACCOUNT = "acme"
STARTED_AT = "2024-01-02T03:04:05.678Z"
URL = "http://jobserver.test/start"

Answer = Callable[[int], Awaitable[Response]]


def job_body(number: int, account: str = ACCOUNT) -> dict[str, str]:
    """A completed job as the job server sends it, with a genuine proof."""
    job_id = f"{number:016x}"
    return {
        "id": job_id,
        "state": "completed",
        "startedAt": STARTED_AT,
        "proof": make_proof(SECRET, job_id, account, STARTED_AT),
    }


def proofs_check(bundle: str) -> int:
    """How many jobs the bundle holds, once every one of them is found genuine."""
    check = check_bundle(SECRET, decode_bundle(bundle), ACCOUNT)
    assert check.valid, check.failures
    return check.jobs


def fake_job_server(answer: Answer | None = None, *, delay: float = 0.0) -> Starlette:
    """A job server whose ``/start`` sleeps ``delay`` (the job) and then answers.

    ``answer`` gets the request's arrival number (from 1); by default every job completes.
    A request with another body than the jobclient's gets a 400 so that tests notice.
    """
    arrivals = itertools.count(1)

    async def start(request: Request) -> Response:
        number = next(arrivals)
        body = await request.json()
        if body != {"account": ACCOUNT, "wait": True}:
            return JSONResponse({"error": "bad_body", "detail": repr(body)}, status_code=400)
        await asyncio.sleep(delay)
        if answer is not None:
            return await answer(number)
        return JSONResponse(job_body(number))

    return Starlette(routes=[Route("/start", start, methods=["POST"])])


def asgi(app: Starlette) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=app)


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 for the block; yields its ``/start`` URL."""
    async with run_server(app) as url:
        yield f"{url}/start"
