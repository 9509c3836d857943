"""The predictions dialect's API (``dialect = "predictions"``), in-process: creating,
reading and canceling predictions, their JSON, the rules of requests, the OpenAPI
document. How a create shares the start machinery of ``/start`` (gate, faults, latency,
webhooks) is in ``test_predictions_starts.py``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from typing import Any

import pytest

from jobserver.bodies import preferred_wait
from jobserver.faults import RandomStreams
from jobserver.predictions import draw_prediction_id
from jobserver.proofs import CompletedJob, check_bundle, encode_bundle
from tests.jobserver.servers import (
    PREDICTIONS_TOKEN,
    HeldReceiver,
    bearer,
    create_prediction,
    jobserver_client,
    predictions_inside,
)

SECRET = "test-secret"
WAIT = 10.0
TOKEN = PREDICTIONS_TOKEN
HOOK = "http://receiver.test/hook"
PREDICTION_ID = re.compile(r"^[a-z2-7]{26}$")
MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = [
    "id",
    "status",
    "input",
    "output",
    "error",
    "created_at",
    "started_at",
    "completed_at",
    "urls",
]
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# What a prediction shows as created, whatever became of it since.
CREATED = {"status": "starting", "output": None, "started_at": None, "completed_at": None}


def independent_proof(prediction_id: str, account: str, started_at: str) -> str:
    message = f"{prediction_id}:{account}:{started_at}".encode()
    return hmac.new(SECRET.encode(), message, hashlib.sha1).hexdigest().upper()


async def test_a_prediction_is_created_201_starting_in_the_documented_shape() -> None:
    """Without Prefer, 201 at once: the prediction starting, its input, nulls, and its URLs."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        response = await create_prediction(
            client, input={"prompt": "ünïcode", "deep": [{"a": None}]}
        )
    prediction = response.json()
    assert response.status_code == 201
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    assert list(prediction) == FIELDS
    assert PREDICTION_ID.match(prediction["id"])
    assert prediction["status"] == "starting"
    assert prediction["input"] == {"prompt": "ünïcode", "deep": [{"a": None}]}
    assert MOMENT.match(prediction["created_at"])
    assert [prediction[key] for key in ("output", "error", "started_at", "completed_at")] == [
        None
    ] * 4
    url = f"http://jobserver/v1/predictions/{prediction['id']}"
    assert prediction["urls"] == {"get": url, "cancel": f"{url}/cancel"}


async def test_prefer_wait_answers_the_succeeded_prediction_with_a_proof_that_checks() -> None:
    """Prefer: wait holds until the prediction ends: succeeded, its proof the HMAC of
    id:token:started_at, which jobserver.proofs and /verify check."""
    async with predictions_inside(secret=SECRET) as (client, _):
        response = await create_prediction(client, prefer="wait")
        prediction = response.json()
        bundle = encode_bundle(
            [
                CompletedJob(
                    prediction["id"], prediction["started_at"], prediction["output"]["proof"]
                )
            ]
        )
        verified = await client.post("/verify", json={"proof": bundle})
    assert response.status_code == 201
    assert (prediction["status"], prediction["error"]) == ("succeeded", None)
    assert MOMENT.match(prediction["started_at"]) and MOMENT.match(prediction["completed_at"])
    proof = prediction["output"]["proof"]
    assert proof == independent_proof(prediction["id"], TOKEN, prediction["started_at"])
    decoded = [CompletedJob(prediction["id"], prediction["started_at"], proof)]
    assert check_bundle(SECRET.encode(), decoded, TOKEN).valid
    assert verified.json() == {"valid": True, "account": TOKEN, "jobs": 1}


async def test_prefer_wait_n_answers_the_prediction_as_it_stands_after_n_seconds() -> None:
    """Prefer: wait=1 on a long prediction answers it processing, after a second."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        began = time.monotonic()
        response = await create_prediction(client, prefer="wait=1")
        elapsed = time.monotonic() - began
    assert response.status_code == 201
    assert response.json()["status"] == "processing"
    assert MOMENT.match(response.json()["started_at"])
    assert response.json()["completed_at"] is None
    assert elapsed >= 1.0


async def test_a_prefer_wait_that_is_not_understood_is_ignored() -> None:
    """Prefer: wait=soon is not a number of seconds: the 201 comes at once, starting."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        response = await asyncio.wait_for(create_prediction(client, prefer="wait=soon"), WAIT)
    assert (response.status_code, response.json()["status"]) == (201, "starting")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([], None),
        (["wait"], 60),
        (["wait=5"], 5),
        (["Wait = 7"], 7),
        (['wait="3"'], 3),
        (["wait=0"], 0),
        (["wait=61"], 60),
        (["wait=" + "9" * 5000], 60),
        (["wait=" + "0" * 30 + "4"], 4),
        (["respond-async, wait=8"], 8),
        (["wait=2; foo=bar"], 2),
        (["handling=lenient", "wait=9"], 9),
        (["wait=2, wait=9"], 2),
        (["wait=-1"], None),
        (["wait=1.5"], None),
        (["wait=²"], None),
        (["waiting=5"], None),
        (["respond-async"], None),
    ],
)
def test_prefer_wait_is_read_as_rfc_7240_says(headers: list[str], seconds: int | None) -> None:
    """Prefer: wait[=N], among other preferences, the first counting; at most 60 s."""
    assert preferred_wait(headers) == seconds


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWNtZTpzZWNyZXQ=",
        "Token r8_acme",
        "Bearer " + "x" * 257,
    ],
)
async def test_a_missing_or_malformed_token_is_401_detail(authorization: str | None) -> None:
    """No Authorization: Bearer <token of 1..256 characters>: 401 {"detail"}, before the body
    is read, with WWW-Authenticate: Bearer."""
    headers = {} if authorization is None else {"Authorization": authorization}
    async with predictions_inside() as (client, _):
        response = await client.post("/v1/predictions", content=b"not json", headers=headers)
    assert response.status_code == 401
    assert list(response.json()) == ["detail"]
    assert "Bearer <token>" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == JSON_CONTENT_TYPE


@pytest.mark.parametrize("token", ["x", "x" * 256, "fozzie muppet@example.com"])
async def test_any_token_of_1_to_256_characters_is_an_account(token: str) -> None:
    """The token is the account: 1 and 256 characters, spaces included, are accepted."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        response = await create_prediction(client, token)
    assert response.status_code == 201


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b'{"input": {"x": NaN}}', "JSON"),
        (b'{"input": {}, "input": {}}', "repeats the key 'input'"),
        (b'{"input": {"x": 1, "x": 2}}', "repeats the key 'x'"),
        (b"[1, 2]", "object"),
        (b"{}", "input"),
        (b'{"input": null}', "input"),
        (b'{"input": [1]}', "input"),
        (b'{"input": "hi"}', "input"),
        (json.dumps({"input": nested(65)}).encode(), "input"),
        (b'{"input": {"x": "\\ud800"}}', "input"),
        (b'{"input": {}, "webhook": null}', "webhook"),
        (b'{"input": {}, "webhook": 7}', "webhook"),
        (b'{"input": {}, "webhook": "/relative"}', "webhook"),
        (b'{"input": {}, "webhook": "ftp://host/x"}', "webhook"),
        (b'{"input": {}, "webhook": "receiver.test:8000/hook"}', "webhook"),
        (b'{"input": {}, "webhook": "http://user:pw@h/"}', "webhook"),
        (json.dumps({"input": {}, "webhook": "http://h/" + "a" * 2040}).encode(), "webhook"),
        (b'{"input": {}, "webhook_events_filter": null}', "webhook_events_filter"),
        (b'{"input": {}, "webhook_events_filter": "completed"}', "webhook_events_filter"),
        (b'{"input": {}, "webhook_events_filter": ["done"]}', "webhook_events_filter"),
        (b'{"input": {}, "webhook_events_filter": [["start"]]}', "webhook_events_filter"),
    ],
)
async def test_invalid_bodies_are_422_detail_naming_the_field(body: bytes, field: str) -> None:
    """Each invalid body (repeated keys included) is 422 {"detail": "<naming the field>"}."""
    async with predictions_inside() as (client, _):
        response = await client.post("/v1/predictions", content=body, headers=bearer())
    assert response.status_code == 422
    assert list(response.json()) == ["detail"]
    assert field in response.json()["detail"]
    assert response.headers["content-type"] == JSON_CONTENT_TYPE


async def test_other_fields_are_ignored_and_an_input_64_levels_deep_is_accepted() -> None:
    """Fields besides input, webhook and webhook_events_filter are ignored; 64 levels of
    input nesting are within the bound."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        response = await create_prediction(client, input=nested(64), version="abc", stream=True)
    assert response.status_code == 201
    assert response.json()["input"] == nested(64)


async def test_a_failed_prediction_has_its_error_and_no_output() -> None:
    """failure_rate 1: the prediction ends failed, with an error and a null output."""
    async with predictions_inside(failure_rate=1.0) as (client, _):
        prediction = (await create_prediction(client, prefer="wait")).json()
    assert prediction["status"] == "failed"
    assert prediction["output"] is None
    assert "failure_rate" in prediction["error"]
    assert MOMENT.match(prediction["completed_at"])


async def test_get_answers_the_prediction_as_it_stands_and_404_for_unknown_ids() -> None:
    """GET /v1/predictions/{id}: 200 the prediction (no token needed); 404 "Not found."."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        created = (await create_prediction(client)).json()
        found = await client.get(f"/v1/predictions/{created['id']}")
        missing = await client.get("/v1/predictions/" + "a" * 26)
    assert found.status_code == 200
    assert {**found.json(), **CREATED} == created
    assert found.json()["status"] in ("starting", "processing")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not found."}
    assert missing.headers["content-type"] == JSON_CONTENT_TYPE


async def test_ended_predictions_are_evicted_after_status_ttl() -> None:
    """With status_ttl 0 an ended prediction is gone at once: GET and cancel answer 404."""
    async with predictions_inside(status_ttl=0) as (client, _):
        prediction = (await create_prediction(client, prefer="wait")).json()
        got = await client.get(f"/v1/predictions/{prediction['id']}")
        canceled = await client.post(f"/v1/predictions/{prediction['id']}/cancel")
    assert prediction["status"] == "succeeded"
    assert (got.status_code, canceled.status_code) == (404, 404)
    assert got.json() == canceled.json() == {"detail": "Not found."}


async def test_status_error_rate_and_status_polls_apply_to_get() -> None:
    """status_error_rate 1 answers GET 500 status_failed; /healthz counts every GET."""
    async with predictions_inside(status_error_rate=1.0, job_duration=60.0) as (client, _):
        prediction_id = (await create_prediction(client)).json()["id"]
        answers = [await client.get(f"/v1/predictions/{prediction_id}") for _ in range(3)]
        health = (await client.get("/healthz")).json()
    assert [answer.status_code for answer in answers] == [500] * 3
    assert answers[0].json()["error"] == "status_failed"
    assert health["status_polls"] == 3


async def test_cancel_ends_a_running_prediction_and_sends_its_completed_webhook() -> None:
    """Cancel answers 200 canceled (no output, no error), its held Prefer: wait answers it
    too, the completed webhook carries it, and a second cancel changes nothing."""
    receiver = HeldReceiver()
    receiver.release()
    async with predictions_inside(receiver, job_duration=60.0) as (client, state):
        held = asyncio.create_task(create_prediction(client, prefer="wait", webhook=HOOK))
        started = await receiver.next()
        assert started["status"] == "processing"
        canceled = await client.post(f"/v1/predictions/{started['id']}/cancel")
        waited = await asyncio.wait_for(held, WAIT)
        again = await client.post(f"/v1/predictions/{started['id']}/cancel")
        webhook = await receiver.next()
        assert await state["callbacks"].drain(WAIT) == 0
    assert canceled.status_code == 200
    prediction = canceled.json()
    assert (prediction["status"], prediction["output"], prediction["error"]) == (
        "canceled",
        None,
        None,
    )
    assert prediction["started_at"] == started["started_at"]
    assert MOMENT.match(prediction["completed_at"])
    assert waited.json() == again.json() == webhook == prediction
    assert len(receiver.jobs) == 2


async def test_cancel_of_an_ended_prediction_returns_it_as_it_is() -> None:
    """A succeeded prediction stays succeeded when canceled; unknown ids are 404."""
    async with predictions_inside() as (client, _):
        prediction = (await create_prediction(client, prefer="wait")).json()
        canceled = await client.post(f"/v1/predictions/{prediction['id']}/cancel")
        unknown = await client.post("/v1/predictions/nope/cancel")
    assert (canceled.status_code, canceled.json()) == (200, prediction)
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not found."})


async def test_a_queued_prediction_canceled_never_starts_and_frees_its_place() -> None:
    """With max_running 1, a prediction waiting for the slot is canceled without starting,
    its place in the queue free at once; when the slot frees, the next one takes it."""
    receiver = HeldReceiver()
    receiver.release()
    async with predictions_inside(receiver, job_duration=60.0, max_running=1, queue_size=1) as (
        client,
        state,
    ):
        running = (await create_prediction(client, "a")).json()
        queued = (await create_prediction(client, "b", webhook=HOOK)).json()
        canceled = (await client.post(f"/v1/predictions/{queued['id']}/cancel")).json()
        assert await receiver.next() == canceled
        after = await create_prediction(client, "c", webhook=HOOK, webhook_events_filter=["start"])
        await client.post(f"/v1/predictions/{running['id']}/cancel")
        started = await receiver.next()
        assert await state["callbacks"].drain(WAIT) == 0
        queued_now = (await client.get(f"/v1/predictions/{queued['id']}")).json()
    assert (canceled["status"], canceled["started_at"]) == ("canceled", None)
    assert after.status_code == 201
    assert started["id"] == after.json()["id"]
    assert queued_now == canceled
    assert [webhook["status"] for webhook in receiver.jobs] == ["canceled", "processing"]


async def test_every_answer_is_labelled_json_in_utf8() -> None:
    """Answers of every kind, errors included, are application/json; charset=utf-8."""
    async with predictions_inside(
        job_duration=60.0, max_running=1, queue_size=0, max_body_size=1000
    ) as (client, _):
        created = await create_prediction(client)
        url = f"/v1/predictions/{created.json()['id']}"
        answers = [
            created,
            await client.get(url),
            await create_prediction(client),  # the one running slot is taken
            await client.post("/v1/predictions", json={"input": {}}),
            await client.post("/v1/predictions", content=b"{", headers=bearer()),
            await create_prediction(client, input={"x": "y" * 2000}),
            await client.get("/v1/predictions/ünïcode"),
            await client.get("/v1/predictions"),
            await client.get("/healthz"),
            await client.get("/openapi.json"),
            await client.post(f"{url}/cancel"),
            await create_prediction(client),  # the canceled prediction's slot is free
        ]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [201, 200, 503, 401, 422, 413, 404, 405, 200, 200, 200, 201]
    assert [a.headers["content-type"] for a in answers] == [JSON_CONTENT_TYPE] * len(answers)


async def test_each_dialect_serves_its_own_routes_only() -> None:
    """/start and /status are 404 in the predictions dialect, /v1/predictions in the work
    sample's; /healthz, /verify and /openapi.json are in both."""
    async with predictions_inside() as (client, _):
        start = await client.post("/start", json={"account": "a"})
        status = await client.get("/status/1f2e3d4c5b6a7")
        health = await client.get("/healthz")
    async with jobserver_client() as client:
        created = await create_prediction(client)
        got = await client.get("/v1/predictions/" + "a" * 26)
    assert [r.status_code for r in (start, status, created, got)] == [404] * 4
    assert health.status_code == 200


async def test_openapi_describes_the_dialects_paths_and_its_rules() -> None:
    """/openapi.json lists the dialect's paths; its webhook pattern and id pattern agree
    with the server."""
    async with predictions_inside(job_duration=60.0) as (client, _):
        document = (await client.get("/openapi.json")).json()
        schemas = document["components"]["schemas"]
        webhook = re.compile(schemas["PredictionRequest"]["properties"]["webhook"]["pattern"])
        for url in ("http://h.test/x", "HTTPS://10.0.0.1:8000/?a=b", "h.test/x", "ftp://h/x"):
            accepted = (await create_prediction(client, webhook=url)).status_code == 201
            assert accepted == (webhook.search(url) is not None), url
        prediction_id = (await create_prediction(client)).json()["id"]
    assert set(document["paths"]) == {
        "/v1/predictions",
        "/v1/predictions/{prediction_id}",
        "/v1/predictions/{prediction_id}/cancel",
        "/verify",
        "/healthz",
        "/openapi.json",
    }
    assert re.search(schemas["Prediction"]["properties"]["id"]["pattern"], prediction_id)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_prediction_ids_are_26_base32_characters_reproducible_under_a_seed() -> None:
    """Ids are 26 characters of [a-z2-7]; the same seed draws the same ones."""
    seeded = [draw_prediction_id(RandomStreams(7)) for _ in range(2)]
    unseeded = {draw_prediction_id(RandomStreams(None)) for _ in range(100)}
    assert seeded[0] == seeded[1]
    assert all(PREDICTION_ID.match(i) for i in [*seeded, *unseeded])
    assert len(unseeded) == 100
