"""What a held request is answered with, ready to send: status, headers and body bytes.

A held request's answer is decided by whichever comes first (its callback, a status
poll, its deadline, the drain) and sent by that same party on the held request's ASGI
``send``. The body of a job's answer is the job server's own bytes, passed on as they
came.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]

#: The type of every JSON answer: the job server's own (its answers are passed on as
#: they came), and the proxy's.
JSON_MEDIA_TYPE = "application/json; charset=utf-8"
JSON_TYPE = (b"content-type", JSON_MEDIA_TYPE.encode())


def json_answer(body: bytes, status: int = 200, headers: Headers | None = None) -> Answer:
    """An answer whose body is JSON already encoded."""
    return status, [JSON_TYPE, (b"content-length", b"%d" % len(body)), *(headers or ())], body


def encode(value: Any) -> bytes:
    """``value`` as JSON bytes of their own size: orjson's own result keeps the 4 KiB
    block it was written in, which a job's answer or event, kept for minutes, must not."""
    return memoryview(orjson.dumps(value)).tobytes()


async def send_answer(send: Send, answer: Answer) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def as_response(answer: Answer) -> Response:
    """The answer as a Starlette response, for the ordinary handlers."""
    status, headers, body = answer
    names = {name.decode(): value.decode() for name, value in headers if name != b"content-length"}
    return Response(body, status, headers=names)
