"""Request bodies: read within a size limit, and checked against the rules of each field.

The rules (the account's length, the callback URL's syntax and length) are defined here
once: the checks below apply them and :mod:`jobserver.openapi` states them, so the
document and the server agree on what is valid. A body that breaks one is a
:class:`~jobserver.errors.BadRequest` naming the field; one over the limit is a
:class:`~jobserver.errors.BodyTooLarge`.

The predictions dialect's rules are here too (:func:`parse_prediction_request`,
:func:`bearer_token`, :func:`preferred_wait`): there the account is the API token of an
``Authorization: Bearer`` header, missing or malformed is
:class:`~jobserver.errors.Unauthenticated` (401), and a body that breaks a rule is
:class:`~jobserver.errors.InvalidPrediction` (422), as Replicate answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request

from jobserver.errors import BadRequest, BodyTooLarge, InvalidPrediction, Unauthenticated

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
_HTTP_SCHEME = r"[Hh][Tt][Tt][Pp][Ss]?://"
_HOST_PORT_REST = (
    rf"(?:(?:{_LABEL}\.)*{_LAST_LABEL}|{_OCTET}(?:\.{_OCTET}){{3}})"
    rf"(?::{_PORT})?(?:[/?#][!-~]*)?"
)
CALLBACK_URL = rf"(?:{_HTTP_SCHEME})?{_HOST_PORT_REST}"
CALLBACK_PATTERN = f"^{CALLBACK_URL}$"
CALLBACK_URL_SYNTAX = re.compile(CALLBACK_URL)

# The predictions dialect. The token is the account, so it has the account's length.
TOKEN_MIN_LENGTH = ACCOUNT_MIN_LENGTH
TOKEN_MAX_LENGTH = ACCOUNT_MAX_LENGTH
# A webhook is a callback URL with its scheme: absolute, http or https.
WEBHOOK_URL = f"{_HTTP_SCHEME}{_HOST_PORT_REST}"
WEBHOOK_PATTERN = f"^{WEBHOOK_URL}$"
WEBHOOK_URL_SYNTAX = re.compile(WEBHOOK_URL)
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
# The input is answered back as it came: nesting is bounded so that encoding it never
# meets the interpreter's recursion limit, whatever the stack depth it is encoded at.
INPUT_MAX_DEPTH = 64
# Prefer: wait without a value, and the most seconds a wait=N holds.
PREFER_WAIT_MAX = 60


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
        document = _strict_json(body)
    except _DuplicateKey as repeated:
        raise BadRequest(f"{repeated.key}: the key appears more than once in one object") from None
    except (ValueError, RecursionError):
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


@dataclass(frozen=True, slots=True)
class PredictionRequest:
    """A ``POST /v1/predictions`` body, checked (the account comes from its header)."""

    input: dict[str, Any]
    webhook: httpx.URL | None
    events: frozenset[str]


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header: the account."""
    if authorization is None:
        raise Unauthenticated("an Authorization: Bearer <token> header is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not TOKEN_MIN_LENGTH <= len(token) <= TOKEN_MAX_LENGTH:
        raise Unauthenticated(
            f"the Authorization header must be Bearer <token>, the token "
            f"{TOKEN_MIN_LENGTH} to {TOKEN_MAX_LENGTH} characters long"
        )
    return token


def preferred_wait(prefer: Iterable[str]) -> int | None:
    """Seconds to hold for the prediction under ``Prefer: wait`` or ``Prefer: wait=N``
    (RFC 7240: the first ``wait`` counts), at most :data:`PREFER_WAIT_MAX`; None when
    no wait is asked for, or its value is not a number of seconds (then it is ignored,
    as RFC 7240 asks of preferences a server does not understand)."""
    for header in prefer:
        for preference in header.split(","):
            token = preference.partition(";")[0]
            name, given, value = token.partition("=")
            if name.strip().lower() != "wait":
                continue
            if not given:
                return PREFER_WAIT_MAX
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if not (value.isascii() and value.isdigit()):
                return None
            digits = value.lstrip("0")
            return PREFER_WAIT_MAX if len(digits) > 3 else min(int(digits or "0"), PREFER_WAIT_MAX)
    return None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _strict_json(body: bytes) -> Any:
    """Strict JSON: no key twice in one object (:class:`_DuplicateKey` names it), no NaN
    or Infinity."""
    return json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _strict_json_object(body: bytes) -> dict[str, object]:
    """The body as a JSON object: no repeated keys, no NaN or Infinity."""
    try:
        document = _strict_json(body)
    except _DuplicateKey as repeated:
        raise InvalidPrediction(
            f"the body is not valid JSON: an object repeats the key {repeated.key!r}"
        ) from None
    except (ValueError, RecursionError):
        raise InvalidPrediction("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidPrediction("the body must be a JSON object")
    return document


def _nesting_depth(value: dict[str, Any], limit: int) -> int:
    """How deep ``value`` nests (each object or list is a level), counted up to ``limit + 1``."""
    deepest = 0
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while pending and deepest <= limit:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _checked_input(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPrediction("input must be a JSON object")
    if _nesting_depth(value, INPUT_MAX_DEPTH) > INPUT_MAX_DEPTH:
        raise InvalidPrediction(f"input must not nest deeper than {INPUT_MAX_DEPTH} levels")
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidPrediction(
            "input must be valid Unicode text: it holds a lone surrogate"
        ) from None
    return value


def _webhook(value: object) -> httpx.URL:
    url = None
    if isinstance(value, str) and WEBHOOK_URL_SYNTAX.fullmatch(value) is not None:
        url = _http_url(value)
    if url is None:
        raise InvalidPrediction("webhook must be an absolute http or https URL")
    if len(str(value)) > CALLBACK_MAX_LENGTH:
        raise InvalidPrediction(f"webhook must be at most {CALLBACK_MAX_LENGTH} characters long")
    return url


def _events(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(event in WEBHOOK_EVENTS for event in value):
        *others, last = (f'"{event}"' for event in WEBHOOK_EVENTS)
        raise InvalidPrediction(
            f"webhook_events_filter must be a list of {', '.join(others)} or {last}"
        )
    return frozenset(value)


def parse_prediction_request(body: bytes) -> PredictionRequest:
    """Check a ``POST /v1/predictions`` body; :class:`InvalidPrediction` names the first
    field that is wrong. Other fields are ignored."""
    document = _strict_json_object(body)
    if "input" not in document:
        raise InvalidPrediction("input is required")
    prediction_input = _checked_input(document["input"])
    webhook = _webhook(document["webhook"]) if "webhook" in document else None
    events = frozenset(WEBHOOK_EVENTS)
    if "webhook_events_filter" in document:
        events = _events(document["webhook_events_filter"])
    return PredictionRequest(prediction_input, webhook, events)
