"""Reading request bodies within a size limit, as strict JSON; what a client callback URL
may be (the job server's own rule, passed on)."""

from __future__ import annotations

import json
import re
from typing import Any

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
    """A JSON object as a client or a job server sent it: strict JSON, and no key twice
    in one object (which JSON parsers settle differently: BadRequest names it)."""
    try:
        value = decode_json(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body is not a JSON object")
    if (key := repeated_key(body, value)) is not None:
        raise BadRequest(f"{key}: the key appears more than once in one object")
    return value


class _Repeated(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Repeated(key)
        seen[key] = value
    return seen


def repeated_key(text: bytes, value: Any) -> str | None:
    """The first key that an object of ``text`` (which decodes to ``value``) holds twice,
    or None.

    The decoder keeps the last of a repeated key, so the text is read again, pair by
    pair, only when a key of ``value`` could be repeated: its quoted form appears in the
    text more than once (a value may equal a key's name), or the text has escapes (a key
    may be written in two ways). Most bodies are settled by a few ``bytes.count``.
    """
    if b"\\" not in text and not _may_repeat(text, value):
        return None
    try:
        json.loads(text, object_pairs_hook=_unique_pairs)
    except _Repeated as repeated:
        return repeated.key
    except RecursionError:  # nested deeper than this reader goes: as the decoder took it
        return None
    return None


def _may_repeat(text: bytes, value: Any) -> bool:
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if text.count(orjson.dumps(key)) > 1:
                    return True
                if isinstance(child, dict | list):
                    pending.append(child)
        elif isinstance(node, list):
            pending.extend(child for child in node if isinstance(child, dict | list))
    return False


# A client's own callback (wait: false), as the job server takes it: http(s):// or, as
# the original job server allowed, no scheme (then it is called over http); a host name
# (its last label starts with a letter) or a dotted IPv4 address, an optional port in
# range, then printable ASCII. The OpenAPI document uses this very pattern.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LAST_LABEL = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_PORT = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
)
CALLBACK_URL = (
    rf"(?:[Hh][Tt][Tt][Pp][Ss]?://)?"
    rf"(?:(?:{_LABEL}\.)*{_LAST_LABEL}|{_OCTET}(?:\.{_OCTET}){{3}})"
    rf"(?::{_PORT})?(?:[/?#][!-~]*)?"
)
MAX_CALLBACK_LENGTH = 2_048
_CALLBACK = re.compile(CALLBACK_URL)
