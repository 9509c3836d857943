"""Reading request bodies within a size limit, and the job request they must hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope

from proxy.errors import BadRequest, BodyTooLarge, ClientGone

MAX_ACCOUNT_LENGTH = 256


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body of an ASGI request, refused with 413 as soon as it is known to
    exceed ``limit`` (by its Content-Length, or while reading)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BadRequest("Content-Length is not a number")
            if int(value) > limit:
                raise BodyTooLarge(f"the body is {int(value)} bytes; the limit is {limit}")
            break
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            return body


async def read_body(request: Request, limit: int) -> bytes:
    """:func:`receive_body` for a Starlette request."""
    return await receive_body(request.scope, request.receive, limit)


def decode_json(data: bytes | str) -> Any:
    """Strict JSON, or ValueError: valid UTF-8, no ``NaN`` or ``Infinity`` (which no JSON
    answer could carry on), no lone surrogates, no nesting deeper than 1,024."""
    return orjson.loads(data)


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        value = decode_json(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body is not a JSON object")
    return value


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return False


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a client asks for: ``POST /proxy {"account", "wait", "callback"}``."""

    account: str
    wait: bool
    callback: str | None

    @classmethod
    def parse(cls, body: bytes) -> JobRequest:
        fields = parse_object(body)
        account = fields.get("account")
        if not isinstance(account, str) or not account:
            raise BadRequest("account: a non-empty string is required")
        if len(account) > MAX_ACCOUNT_LENGTH:
            raise BadRequest(f"account: at most {MAX_ACCOUNT_LENGTH} characters")
        wait = fields.get("wait", False)
        if not isinstance(wait, bool):
            raise BadRequest("wait: must be true or false")
        callback = fields.get("callback")
        if callback is not None and not (isinstance(callback, str) and _is_http_url(callback)):
            raise BadRequest("callback: must be an absolute http(s) URL")
        return cls(account, wait, callback)

    def upstream_body(self, callback: str | None) -> dict[str, Any]:
        """The body sent to the job server's ``/start``: never waiting there."""
        body: dict[str, Any] = {"account": self.account, "wait": False}
        if callback is not None:
            body["callback"] = callback
        return body
