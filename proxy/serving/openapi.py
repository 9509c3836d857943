"""The OpenAPI 3 description of the proxy's client-facing API, served at ``GET /openapi.json``.

Written by hand so that it states the limits the handlers enforce (``proxy.bodies``,
``proxy.holding.keyed``) and the errors of ``proxy.errors``; schemathesis fuzzes the proxy
against it (``tests/test_fuzz.py``).
"""

from __future__ import annotations

from typing import Any

from infra.openapi import (
    JSON,
    document,
    document_route,
    error,
    error_schema,
    json_content,
    liveness_route,
    ref,
    retry_after,
)
from proxy.bodies import CALLBACK_URL, MAX_ACCOUNT_LENGTH, MAX_CALLBACK_LENGTH
from proxy.dialects.dialect import Dialect
from proxy.holding.keyed import MAX_KEY_LENGTH

# What ``proxy.bodies`` accepts as a callback, from its own definition.
CALLBACK_PATTERN = f"^{CALLBACK_URL}$"
# Printable ASCII without surrounding spaces, which HTTP would strip.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"

_PROMETHEUS = "text/plain"
# Every 503 of the proxy has one (``proxy.errors.Unavailable``).
_RETRY_AFTER = retry_after(minimum=1, required=True)


SCHEMAS: dict[str, Any] = {
    "JobRequest": {
        "type": "object",
        "required": ["account"],
        "properties": {
            "account": {"type": "string", "minLength": 1, "maxLength": MAX_ACCOUNT_LENGTH},
            "wait": {
                "type": "boolean",
                "default": False,
                "description": "true: hold the request until the job ends (the point of the "
                "proxy); false: forward to the job server as it is",
            },
            "callback": {
                "type": "string",
                "nullable": True,  # null is the same as no callback
                "maxLength": MAX_CALLBACK_LENGTH,
                "pattern": CALLBACK_PATTERN,
                "description": "http(s) URL, or host[:port]/path (called over http); with "
                "wait false, the job server POSTs the finished job to it",
            },
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "state"],
        "description": "The job server's job: running (wait false), completed or failed",
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "state": {"type": "string", "enum": ["running", "completed", "failed"]},
            "startedAt": {"type": "string", "description": "ISO-8601 UTC, milliseconds, Z"},
            "proof": {"type": "string", "description": "40 uppercase hex digits"},
            "error": {"type": "string", "description": "why a failed job failed"},
        },
    },
    "CallbackJob": {
        "type": "object",
        "required": ["id", "state"],
        "description": "The finished job, as the job server POSTs it",
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "state": {"type": "string"},
        },
    },
    "RunningJob": {
        "type": "object",
        "required": ["ref", "id", "state"],
        "description": "A tracked job still running: come back at /jobs/{ref}",
        "properties": {
            "ref": {"type": "string", "description": "the job's ref (128 random bits)"},
            "id": {
                "type": "string",
                "nullable": True,
                "description": "the job server's id; null before it accepted the job",
            },
            "state": {"type": "string", "enum": ["running"]},
        },
    },
    "CallbackReceipt": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "stored", "early", "ignored"],
                "description": "ok: a held request got the job; stored: kept for an "
                "Idempotency-Key retry; early: kept until /start names its job; ignored: "
                "the job is not finished",
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Ready": {
        "type": "object",
        "required": ["status", "pending"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "pending": {"type": "integer", "minimum": 0},
        },
    },
    "Error": error_schema(
        job_id={
            "type": "string",
            "description": "the job server's job the error is about, when one was started",
        },
        upstream={"description": "upstream_rejected: the job server's answer, whole"},
    ),
}

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a retry with the same key and body gets the first request's job",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    },
}

_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "RFC 7240: wait=N holds at most N seconds, then 202; respond-async "
    "answers 202 once the job server accepted the job; others are ignored",
    "schema": {"type": "string"},
}
_ACCEPT = {
    "name": "Accept",
    "in": "header",
    "required": False,
    "description": "text/event-stream: the job's events (accepted, retrying, polling, then "
    "completed, failed or error) as Server-Sent Events",
    "schema": {"type": "string"},
}
_EVENT_STREAM = {
    "text/event-stream": {
        "schema": {"type": "string", "description": "Server-Sent Events with ids per job"}
    }
}
_LOCATION = {
    "Location": {
        "description": "<public_url>/jobs/{ref}, where the job can be read",
        "schema": {"type": "string"},
    },
}

_SIGNATURE_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }
    for name, description in (
        ("webhook-id", "Standard Webhooks message id"),
        ("webhook-timestamp", "seconds since the epoch, within five minutes of now"),
        ("webhook-signature", "space-separated v1,<base64 HMAC-SHA256> signatures"),
    )
]


def _start_operation(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation_id,
        "parameters": [_IDEMPOTENCY_KEY, _PREFER, _ACCEPT],
        "requestBody": {"required": True, "content": {JSON: {"schema": ref("JobRequest")}}},
        "responses": {
            "200": {
                "description": "wait true: the finished job (a failed job too, with state "
                "failed), or its events with Accept: text/event-stream; wait false: the job "
                "server's answer",
                "content": {JSON: {"schema": ref("Job")}, **_EVENT_STREAM},
            },
            "202": json_content(
                ref("RunningJob"),
                "Prefer: the job goes on; come back at Location",
                headers={
                    **_LOCATION,
                    "Retry-After": {"schema": {"type": "integer", "minimum": 1}},
                    "Preference-Applied": {"schema": {"type": "string"}},
                },
            ),
            "400": error("the body is not a valid job request; the detail names the field"),
            "413": error("the body is larger than max_body_size"),
            "422": error("this Idempotency-Key was used with another body"),
            "4XX": error("the job server refused the request (upstream_rejected)"),
            "502": error(
                "the job server is unreachable, answered something unusable, or lost the "
                "job (job_lost, with job_id)"
            ),
            "503": error(
                "at capacity, shutting down, or Redis unreachable", retry_after=_RETRY_AFTER
            ),
            "504": error("the job did not finish within job_deadline"),
        },
    }


OPENAPI: dict[str, Any] = document(
    "jobproxy",
    "Holds blocking job requests open while the job runs on a job server that allows one "
    "connection per account, and answers them when its callback arrives.",
    paths={
        "/proxy": {"post": _start_operation("proxy", "Run a job, holding the request until done")},
        "/start": {"post": _start_operation("start", "Alias of POST /proxy")},
        "/": {"post": _start_operation("root", "Alias of POST /proxy, at the bare base URL")},
        "/callback/{token}": {
            "post": {
                "summary": "The job server's callback for a held request",
                "operationId": "callback",
                "parameters": [
                    {
                        "name": "token",
                        "in": "path",
                        "required": True,
                        "description": "the callback token the proxy gave the job server",
                        "schema": {"type": "string"},
                    },
                    *_SIGNATURE_HEADERS,
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": ref("CallbackJob"),
                            "example": {
                                "id": "0123456789abcdef",
                                "state": "completed",
                                "startedAt": "2026-11-25T13:00:00.000Z",
                                "proof": "0123456789ABCDEF0123456789ABCDEF01234567",
                            },
                        }
                    },
                },
                "responses": {
                    "200": json_content(ref("CallbackReceipt"), "the callback was taken"),
                    "400": error("the body is not a job, or not the job of this token"),
                    "401": error("the signature is missing, stale or wrong (secret set)"),
                    "404": error("unknown or already answered token"),
                    "413": error("the body is larger than max_body_size"),
                    "503": error("Redis is unreachable (shared mode)", retry_after=_RETRY_AFTER),
                },
            }
        },
        "/jobs/{ref}": {
            "get": {
                "summary": "A job the client may come back to (after a 202, or a stream)",
                "operationId": "job",
                "parameters": [
                    {
                        "name": "ref",
                        "in": "path",
                        "required": True,
                        "description": "the job's ref, from Location",
                        "schema": {"type": "string"},
                    },
                    _PREFER,
                    _ACCEPT,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "a stream sends the events after this one",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the finished job, the job still running (with "
                        "Retry-After), or its events",
                        "content": {
                            JSON: {"schema": {"oneOf": [ref("Job"), ref("RunningJob")]}},
                            **_EVENT_STREAM,
                        },
                    },
                    "404": error("no job is known by this ref (never issued, or expired)"),
                    "502": error("the job ended in an upstream error"),
                    "503": error(
                        "the job ended when the proxy shut down", retry_after=_RETRY_AFTER
                    ),
                    "504": error("the job did not finish within job_deadline"),
                },
            }
        },
        "/healthz": liveness_route("the proxy is up"),
        "/readyz": {
            "get": {
                "summary": "Readiness: the job server (and Redis, if used) is reachable",
                "operationId": "readyz",
                "responses": {
                    "200": json_content(ref("Ready"), "ready; pending counts held requests"),
                    "503": error("a dependency is unreachable", retry_after=_RETRY_AFTER),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "the Prometheus text exposition format",
                        "content": {_PROMETHEUS: {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": document_route(),
    },
    components={"schemas": SCHEMAS},
)


def openapi_document(dialect: Dialect) -> dict[str, Any]:
    """The document for a proxy in front of ``dialect``'s job server: the work sample's as
    above; another dialect's start path in place of ``/start``, its body any JSON object
    the job server takes (the proxy passes it on as the dialect says)."""
    if dialect.name == "work-sample" and dialect.start_path == "/start":
        return OPENAPI
    paths = {path: item for path, item in OPENAPI["paths"].items() if path != "/start"}
    operation = _start_operation("start", f"The {dialect.name} API's own start path")
    body = {"type": "object", "description": f"a job request of the {dialect.name} API"}
    return {
        **OPENAPI,
        "paths": {**paths, dialect.start_path: {"post": operation}},
        "components": {"schemas": {**SCHEMAS, "JobRequest": body}},
    }
