"""Request bodies: read within a size limit, and checked against the rules of each field.

The rules (the account's length, the callback URL's syntax and length) are defined here
once: the checks below apply them and :mod:`jobserver.openapi` states them, so the
document and the server agree on what is valid. A body that breaks one is a
:class:`~jobserver.errors.BadRequest` naming the field; one over the limit is a
:class:`~jobserver.errors.BodyTooLarge`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request

from jobserver.errors import BadRequest, BodyTooLarge

ACCOUNT_MIN_LENGTH = 1
ACCOUNT_MAX_LENGTH = 256
CALLBACK_MAX_LENGTH = 2048
# A callback URL: http(s):// or, as the real server allowed, no scheme at all (then it
# is called over http); a host name (its last label starts with a letter) or a dotted
# IPv4 address, an optional port in range, then printable ASCII. Stricter than RFC 3986
# on purpose: every URL it accepts is one httpx can send to, so the schema and the
# server agree on what is valid. IPv6 literals and credentials are not accepted.
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
CALLBACK_PATTERN = f"^{CALLBACK_URL}$"
CALLBACK_URL_SYNTAX = re.compile(CALLBACK_URL)


@dataclass(frozen=True, slots=True)
class StartRequest:
    account: str
    wait: bool
    callback: httpx.URL | None


async def read_body(request: Request[Any], limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, object]:
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


def _http_url(value: str) -> httpx.URL | None:
    """``value`` parsed, when it is a callback URL as the OpenAPI document defines it."""
    if CALLBACK_URL_SYNTAX.fullmatch(value) is None:
        return None
    if not value.lower().startswith(("http://", "https://")):
        value = "http://" + value  # as the real server did with host:port/path
    try:
        return httpx.URL(value)
    except (httpx.InvalidURL, ValueError):  # pragma: no cover - the syntax rules these out
        return None


def parse_start_request(body: bytes) -> StartRequest:
    """Check a ``/start`` body; :class:`BadRequest` names the first field that is wrong."""
    document = _json_object(body)
    if "account" not in document:
        raise BadRequest("account is required")
    account = document["account"]
    if not isinstance(account, str):
        raise BadRequest("account must be a string")
    if not ACCOUNT_MIN_LENGTH <= len(account) <= ACCOUNT_MAX_LENGTH:
        raise BadRequest(
            f"account must be {ACCOUNT_MIN_LENGTH} to {ACCOUNT_MAX_LENGTH} characters long"
        )
    wait = document.get("wait", False)
    if not isinstance(wait, bool):
        raise BadRequest("wait must be a boolean")
    if "callback" not in document:
        return StartRequest(account, wait, None)
    callback = document["callback"]
    url = _http_url(callback) if isinstance(callback, str) else None
    if url is None:
        raise BadRequest("callback must be an http or https URL, or host:port/path")
    if len(str(callback)) > CALLBACK_MAX_LENGTH:
        raise BadRequest(f"callback must be at most {CALLBACK_MAX_LENGTH} characters long")
    return StartRequest(account, wait, url)


def parse_verify_request(body: bytes) -> tuple[str, str | None]:
    """Check a ``/verify`` body: the bundle text and the account, if one is given."""
    document = _json_object(body)
    proof = document.get("proof")
    if not isinstance(proof, str) or not proof:
        raise BadRequest("proof must be a non-empty string")
    if "account" not in document:
        return proof, None
    account = document["account"]
    if not isinstance(account, str) or not ACCOUNT_MIN_LENGTH <= len(account) <= ACCOUNT_MAX_LENGTH:
        raise BadRequest(
            f"account must be a string of {ACCOUNT_MIN_LENGTH} to {ACCOUNT_MAX_LENGTH} characters"
        )
    return proof, account
