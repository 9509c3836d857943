"""The OpenAPI 3 description of the job server's API, served at ``GET /openapi.json``.

Written by hand so that it states the same limits the handlers enforce: body sizes come
from the settings, the rules of each field from :mod:`jobserver.bodies`, which checks
the bodies against them. Schemathesis fuzzes the server against it.

:func:`document` puts together the part of the dialect the server speaks (its paths and
components: the work sample's, :func:`work_sample_part`, is here; the predictions
dialect's is :func:`jobserver.predictions.openapi_part`) and the routes every dialect has.
The document's form (its frame, error answers, ``/healthz`` and ``/openapi.json``) is
:mod:`infra.openapi`'s, as the proxy's is.
"""

from __future__ import annotations

from typing import Any

import infra.openapi
from infra.openapi import JSON, error, json_content, ref
from jobserver import proofs
from jobserver.bodies import (
    ACCOUNT_MAX_LENGTH,
    ACCOUNT_MIN_LENGTH,
    CALLBACK_MAX_LENGTH,
    CALLBACK_PATTERN,
)
from jobserver.config import Settings

# What the answers look like (made by jobserver.jobs and jobserver.proofs).
JOB_ID_PATTERN = "^[1-9a-f][0-9a-f]{12,15}$"  # 13 to 16 digits, no leading zero
STARTED_AT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
PROOF_PATTERN = f"^{proofs.PROOF_PATTERN.pattern}$"

TOO_LARGE = "the body is larger than {} bytes"
#: The Retry-After of a 503 (``jobserver.errors``: at capacity, an injected fault).
RETRY_AFTER = infra.openapi.retry_after(minimum=0, required=False)

#: What a dialect adds to the document: its paths, and its components by section.
Part = tuple[dict[str, Any], dict[str, Any]]


def _work_sample_schemas() -> dict[str, Any]:
    job_id = {"type": "string", "pattern": JOB_ID_PATTERN}
    return {
        "StartRequest": {
            "type": "object",
            "required": ["account"],
            "properties": {
                "account": {
                    "type": "string",
                    "minLength": ACCOUNT_MIN_LENGTH,
                    "maxLength": ACCOUNT_MAX_LENGTH,
                },
                "wait": {"type": "boolean", "default": False},
                "callback": {
                    # No "format": "uri": the pattern is the whole rule, and stricter.
                    "type": "string",
                    "maxLength": CALLBACK_MAX_LENGTH,
                    "pattern": CALLBACK_PATTERN,
                    "description": (
                        "http(s) URL (host name or IPv4 address, printable ASCII); without "
                        "a scheme (host:port/path) it is called over http. The finished "
                        "job is POSTed to it, whatever wait is"
                    ),
                },
            },
        },
        "JobStarted": {
            "type": "object",
            "required": ["id", "state"],
            "properties": {"id": job_id, "state": {"type": "string", "enum": ["running"]}},
        },
        "FinishedJob": {
            "type": "object",
            "required": ["id", "state", "startedAt"],
            "properties": {
                "id": job_id,
                "state": {"type": "string", "enum": ["completed", "failed"]},
                "startedAt": {"type": "string", "pattern": STARTED_AT_PATTERN},
                "proof": {"type": "string", "pattern": PROOF_PATTERN},
                "error": {"type": "string"},
            },
        },
        "Job": {
            "type": "object",
            "required": ["id", "state"],
            "properties": {
                "id": job_id,
                "state": {"type": "string", "enum": ["running", "completed", "failed"]},
                "startedAt": {"type": "string", "pattern": STARTED_AT_PATTERN},
                "proof": {"type": "string", "pattern": PROOF_PATTERN},
                "error": {"type": "string"},
            },
        },
    }


def _common_schemas() -> dict[str, Any]:
    return {
        "VerifyRequest": {
            "type": "object",
            "required": ["proof"],
            "properties": {
                "proof": {
                    "type": "string",
                    "minLength": 1,
                    "description": (
                        "a jobclient proof bundle: base64(gzip(JSON list of "
                        "[id, startedAt, proof], one per job))"
                    ),
                },
                "account": {
                    "type": "string",
                    "minLength": ACCOUNT_MIN_LENGTH,
                    "maxLength": ACCOUNT_MAX_LENGTH,
                    "description": (
                        "the account of the bundle's jobs; optional when this server still "
                        "knows them (it ran them, less than status_ttl ago)"
                    ),
                },
            },
        },
        "VerifyResult": {
            "type": "object",
            "required": ["valid", "account", "jobs"],
            "properties": {
                "valid": {"type": "boolean", "enum": [True]},
                "account": {"type": "string"},
                "jobs": {"type": "integer", "minimum": 1},
            },
        },
        "VerifyFailure": {
            "type": "object",
            "required": ["error", "detail"],
            "description": (
                "error invalid_proof: the bundle was read and the listed jobs do not check; "
                "bad_bundle: it is not a bundle; unknown_account: no account was given and "
                "this server does not know the jobs"
            ),
            "properties": {
                "error": {
                    "type": "string",
                    "enum": ["invalid_proof", "bad_bundle", "unknown_account"],
                },
                "detail": {"type": "string"},
                "valid": {"type": "boolean", "enum": [False]},
                "account": {"type": "string"},
                "jobs": {"type": "integer", "minimum": 1},
                "failures": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "reason"],
                        "properties": {"id": {"type": "string"}, "reason": {"type": "string"}},
                    },
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "jobs_started": {"type": "integer", "minimum": 0},
                "jobs_running": {"type": "integer", "minimum": 0},
                "jobs_queued": {"type": "integer", "minimum": 0},
                "callbacks_pending": {"type": "integer", "minimum": 0},
                "start_queue_peak": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Most /start requests of one account at its gate at once.",
                },
                "status_polls": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "GET /status requests answered, whatever the answer.",
                },
                "starts_abandoned": {
                    "type": "integer",
                    "minimum": 0,
                    "description": (
                        "/start requests whose client left before their job was created "
                        "(honour_disconnects)."
                    ),
                },
            },
        },
        "Error": infra.openapi.error_schema(),
    }


def signature_headers() -> list[dict[str, Any]]:
    """The Standard Webhooks headers of a signed callback, as parameters."""
    return [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    ]


def _callbacks() -> dict[str, Any]:
    return {
        "jobFinished": {
            "{$request.body#/callback}": {
                "post": {
                    "summary": "The finished job, signed when a callback secret is configured",
                    "parameters": signature_headers(),
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": ref("FinishedJob")}},
                    },
                    "responses": {"2XX": {"description": "received"}},
                }
            }
        }
    }


def work_sample_part(settings: Settings) -> Part:
    """The work sample's paths (``/start``, ``/status/{job_id}``) and schemas."""
    # Lets a stateful fuzzer follow a started job to its status.
    links = {"GetStatus": {"operationId": "status", "parameters": {"job_id": "$response.body#/id"}}}
    start_responses = {
        "200": json_content(
            {"oneOf": [ref("JobStarted"), ref("FinishedJob")]},
            "wait false: the job is running; wait true: the finished job",
            links=links,
        ),
        "400": error("the body is not a valid start request; the detail names the field"),
        "413": error(TOO_LARGE.format(settings.max_body_size)),
        "500": error("an injected fault, or a bug"),
        "503": error(
            "at capacity (max_running + queue_size), or an injected fault",
            retry_after=RETRY_AFTER,
        ),
        "504": error("the request did not end within request_timeout"),
    }
    paths = {
        "/start": {
            "post": {
                "summary": "Start a job; requests of one account are served one at a time",
                "operationId": "start",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": ref("StartRequest")}},
                },
                "responses": start_responses,
                "callbacks": _callbacks(),
            }
        },
        "/status/{job_id}": {
            "get": {
                "summary": "A job as it stands; finished jobs are kept for status_ttl seconds",
                "operationId": "status",
                "parameters": [
                    {
                        "name": "job_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": json_content(ref("Job"), "the job"),
                    "404": error("no such job, or it expired"),
                    "500": error("an injected fault (status_error_rate), or a bug"),
                },
            }
        },
    }
    return paths, {"schemas": _work_sample_schemas()}


def _common_paths(settings: Settings) -> dict[str, Any]:
    return {
        "/verify": {
            "post": {
                "summary": "Check a jobclient proof bundle against this server's secret",
                "operationId": "verify",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": ref("VerifyRequest")}},
                },
                "responses": {
                    "200": json_content(ref("VerifyResult"), "every proof in the bundle is valid"),
                    "400": error("the body is not a valid verify request"),
                    "413": error(TOO_LARGE.format(settings.max_proof_size)),
                    "422": json_content(
                        ref("VerifyFailure"),
                        "the bundle cannot be read, its account is unknown, or proofs "
                        "do not check (each such job listed with the reason)",
                    ),
                },
            }
        },
        "/healthz": infra.openapi.liveness_route("the server is up"),
        "/openapi.json": infra.openapi.document_route(),
    }


def document(
    settings: Settings, paths: dict[str, Any], components: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of this server's API: a dialect's ``paths`` and
    ``components`` (:data:`Part`), and the routes every dialect has."""
    return infra.openapi.document(
        "jobserver",
        "A simulated job server: one request at a time per account, jobs that run for a "
        "while, proofs of completion and signed callbacks.",
        paths=paths | _common_paths(settings),
        components={
            **components,
            "schemas": components.get("schemas", {}) | _common_schemas(),
        },
    )
