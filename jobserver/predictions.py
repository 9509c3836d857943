"""The predictions dialect (``dialect = "predictions"``): an API shaped like Replicate's.

::

    POST /v1/predictions              Authorization: Bearer <token>   (the token: the account)
         {"input": {...}, "webhook": URL?, "webhook_events_filter": [...]?}
         → 201 the prediction, "starting"; with Prefer: wait[=N], once it ends or N s pass
    GET  /v1/predictions/{id}         → 200 the prediction as it stands
    POST /v1/predictions/{id}/cancel  → 200 the prediction, canceled unless it had ended

A prediction is a job (:mod:`jobserver.jobs`) shown in this dialect's JSON, with ids of
26 base32 characters as Replicate's. It starts as a ``/start`` does
(:mod:`jobserver.starts`: the account's gate, the start faults, latency, disconnects),
and its webhook is a callback (:mod:`jobserver.callbacks`: signing, retries, faults,
order), sent when it starts running and when it ends, as its events filter allows. The
request rules are in :mod:`jobserver.bodies`, the errors (``{"detail": ...}``, as
Replicate's) in :mod:`jobserver.errors`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.openapi import JSON, error, json_content, ref
from jobserver import openapi
from jobserver.bodies import (
    CALLBACK_MAX_LENGTH,
    PREFER_WAIT_MAX,
    WEBHOOK_EVENTS,
    WEBHOOK_PATTERN,
    bearer_token,
    parse_prediction_request,
    preferred_wait,
    read_body,
)
from jobserver.config import Settings
from jobserver.errors import PredictionNotFound
from jobserver.faults import RandomStreams
from jobserver.jobs import CallbackEvent, Job, JobState, utc_timestamp
from jobserver.starts import (
    AppState,
    Dialect,
    JSONAnswer,
    call_back_before_answer,
    look_up_job,
    start_in_gate,
    wait_for_job,
)

PATH = "/v1/predictions"
# base32 of 16 random bytes, without its padding: 26 characters of [a-z2-7].
PREDICTION_ID_BYTES = 16
PREDICTION_ID_LENGTH = 26
PREDICTION_ID_PATTERN = f"^[a-z2-7]{{{PREDICTION_ID_LENGTH}}}$"
_STATUS_OF_END = {
    JobState.COMPLETED: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELED: "canceled",
}
STATUSES = ("starting", "processing", *_STATUS_OF_END.values())


def draw_prediction_id(streams: RandomStreams) -> str:
    """A new prediction id: seeded and reproducible with ``seed``, else from the OS."""
    raw = streams.id_stream("prediction-ids").randbytes(PREDICTION_ID_BYTES)
    return base64.b32encode(raw).decode("ascii")[:PREDICTION_ID_LENGTH].lower()


def _now() -> str:
    return utc_timestamp(datetime.now(UTC))


@dataclass(eq=False, slots=True, kw_only=True)
class Prediction(Job):
    """A job of this dialect: its input, the events its webhook is sent on, where it is."""

    input: dict[str, Any]
    events: frozenset[str]
    #: ``<base>/v1/predictions``, the base as the creating request named the server.
    collection_url: str
    created_at: str = field(default_factory=_now)

    @property
    def status(self) -> str:
        if self.state is JobState.RUNNING:
            return "starting" if self.started_at is None else "processing"
        return _STATUS_OF_END[self.state]

    def calls_back_on(self, event: CallbackEvent) -> bool:
        return event in self.events

    def as_created(self) -> dict[str, Any]:
        """The prediction as it was created: starting, nothing else known yet."""
        url = f"{self.collection_url}/{self.id}"
        return {
            "id": self.id,
            "status": "starting",
            "input": self.input,
            "output": None,
            "error": None,
            "created_at": self.created_at,
            "started_at": None,
            "completed_at": None,
            "urls": {"get": url, "cancel": f"{url}/cancel"},
        }

    def to_json(self) -> dict[str, Any]:
        """The prediction as it stands: as GET, cancel, Prefer: wait and webhooks show it."""
        body = self.as_created()
        body["status"] = self.status
        body["output"] = None if self.proof is None else {"proof": self.proof}
        body["error"] = self.error
        body["started_at"] = self.started_at
        body["completed_at"] = self.completed_at
        return body


async def create(request: Request[AppState]) -> Response:
    """``POST /v1/predictions``: a start, in the account's gate as ``/start`` is."""
    state = request.state
    account = bearer_token(request.headers.get("authorization"))
    body = parse_prediction_request(await read_body(request, state["settings"].max_body_size))
    make = partial(
        Prediction,
        input=body.input,
        events=body.events,
        collection_url=str(request.base_url).rstrip("/") + PATH,
    )
    answer = partial(_answer, state, preferred_wait(request.headers.getlist("prefer")))
    prediction = await start_in_gate(request, account, body.webhook, answer, make)
    return JSONAnswer(prediction, status_code=201)


async def _answer(state: AppState, wait: int | None, job: Job) -> dict[str, Any]:
    """The prediction as created; or, with ``Prefer: wait``, as it stands once it has
    ended, ``wait`` seconds have passed, or the server has begun to stop."""
    assert isinstance(job, Prediction)
    if wait is None:
        window = state["settings"].callback_before_answer
        if window > 0:
            await call_back_before_answer(job, window, state["callbacks"])
        return job.as_created()
    await wait_for_job(job, state["draining"], wait)
    return job.to_json()


async def get(request: Request[AppState]) -> Response:
    """``GET /v1/predictions/{id}``: the prediction as it stands."""
    prediction = look_up_job(request.state, request.path_params["prediction_id"])
    if prediction is None:
        raise PredictionNotFound
    return JSONAnswer(prediction.to_json())


async def cancel(request: Request[AppState]) -> Response:
    """``POST /v1/predictions/{id}/cancel``: end it as canceled, unless it has ended."""
    prediction = request.state["store"].get(request.path_params["prediction_id"])
    if prediction is None:
        raise PredictionNotFound
    request.state["runner"].cancel(prediction)
    return JSONAnswer(prediction.to_json())


def openapi_part(settings: Settings) -> openapi.Part:
    """This dialect's paths and components of the OpenAPI document."""
    prediction_id = {
        "name": "prediction_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": (
            f"wait, or wait=N (RFC 7240): hold the answer until the prediction ends or N "
            f"seconds pass (at most {PREFER_WAIT_MAX}, the default), then answer it as it stands"
        ),
    }
    not_found = error("no such prediction, or it expired", schema="Detail")
    webhook = {
        "predictionEvent": {
            "{$request.body#/webhook}": {
                "post": {
                    "summary": (
                        "The prediction when it starts processing and when it ends, as the "
                        "events filter allows; signed when a callback secret is configured"
                    ),
                    "parameters": openapi.signature_headers(),
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": ref("Prediction")}},
                    },
                    "responses": {"2XX": {"description": "received"}},
                }
            }
        }
    }
    paths = {
        PATH: {
            "post": {
                "summary": "Create a prediction; requests of one token are served one at a time",
                "operationId": "createPrediction",
                "security": [{"bearer": []}],
                "parameters": [prefer],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": ref("PredictionRequest")}},
                },
                "responses": {
                    "201": json_content(
                        ref("Prediction"),
                        "the prediction: as created, or with Prefer: wait as it stands",
                        links={
                            "GetPrediction": {
                                "operationId": "getPrediction",
                                "parameters": {"prediction_id": "$response.body#/id"},
                            }
                        },
                    ),
                    "401": error(
                        "no Authorization: Bearer <token>, or a malformed one", schema="Detail"
                    ),
                    "413": error(openapi.TOO_LARGE.format(settings.max_body_size)),
                    "422": error(
                        "not a valid prediction request; the detail names the field",
                        schema="Detail",
                    ),
                    "500": error("an injected fault, or a bug"),
                    "503": error(
                        "at capacity (max_running + queue_size), or an injected fault",
                        retry_after=openapi.RETRY_AFTER,
                    ),
                    "504": error("the request did not end within request_timeout"),
                },
                "callbacks": webhook,
            }
        },
        PATH + "/{prediction_id}": {
            "get": {
                "summary": "A prediction as it stands; ended ones are kept for status_ttl seconds",
                "operationId": "getPrediction",
                "parameters": [prediction_id],
                "responses": {
                    "200": json_content(ref("Prediction"), "the prediction"),
                    "404": not_found,
                    "500": error("an injected fault (status_error_rate), or a bug"),
                },
            }
        },
        PATH + "/{prediction_id}/cancel": {
            "post": {
                "summary": "Cancel a prediction that has not ended",
                "operationId": "cancelPrediction",
                "parameters": [prediction_id],
                "responses": {
                    "200": json_content(
                        ref("Prediction"), "the prediction, canceled unless it had ended"
                    ),
                    "404": not_found,
                },
            }
        },
    }
    return paths, {
        "schemas": _schemas(),
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }


def _schemas() -> dict[str, Any]:
    moment = {"type": "string", "pattern": openapi.STARTED_AT_PATTERN}
    return {
        "PredictionRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "input": {"type": "object"},
                "webhook": {
                    "type": "string",
                    "maxLength": CALLBACK_MAX_LENGTH,
                    "pattern": WEBHOOK_PATTERN,
                    "description": "absolute http(s) URL the prediction is POSTed to on its events",
                },
                "webhook_events_filter": {
                    "type": "array",
                    "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
                    "description": "the events the webhook is sent on; all by default",
                },
            },
        },
        "Prediction": {
            "type": "object",
            "required": [
                "id",
                "status",
                "input",
                "output",
                "error",
                "created_at",
                "started_at",
                "completed_at",
                "urls",
            ],
            "properties": {
                "id": {"type": "string", "pattern": PREDICTION_ID_PATTERN},
                "status": {"type": "string", "enum": list(STATUSES)},
                "input": {"type": "object"},
                "output": {
                    "type": "object",
                    "nullable": True,
                    "required": ["proof"],
                    "properties": {"proof": {"type": "string", "pattern": openapi.PROOF_PATTERN}},
                },
                "error": {"type": "string", "nullable": True},
                "created_at": moment,
                "started_at": {**moment, "nullable": True},
                "completed_at": {**moment, "nullable": True},
                "urls": {
                    "type": "object",
                    "required": ["get", "cancel"],
                    "properties": {"get": {"type": "string"}, "cancel": {"type": "string"}},
                },
            },
        },
        "Detail": {
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string"}},
        },
    }


DIALECT = Dialect(
    routes=(
        Route(PATH, create, methods=["POST"]),
        Route(PATH + "/{prediction_id}", get, methods=["GET"]),
        Route(PATH + "/{prediction_id}/cancel", cancel, methods=["POST"]),
    ),
    start_path=PATH,
    draw_id=draw_prediction_id,
    openapi=openapi_part,
)
