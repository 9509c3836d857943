"""The second job server's basics: the protocol's (a start waited for or called back,
status, bad bodies), the predictions dialect's, and its job ids. Each option, in either
dialect, is in ``test_aioserver_options.py``."""

from __future__ import annotations

import pytest

from tests.upstreams.conftest import (
    JOB_ID,
    PREDICTIONS,
    PROOF,
    QUICK,
    STARTED_AT,
    Receiver,
    Speaker,
    bearer,
    proof_of,
    serve,
)


async def test_wait_true_answers_the_completed_job_with_its_proof() -> None:
    """wait:true holds until the job ends, then answers its id, startedAt and proof."""
    async with serve(job_duration=QUICK) as (_, client):
        response = await client.post("/start", json={"account": "acme", "wait": True})
    job = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert set(job) == {"id", "state", "startedAt", "proof"}
    assert job["state"] == "completed"
    assert JOB_ID.fullmatch(job["id"])
    assert STARTED_AT.fullmatch(job["startedAt"])
    assert PROOF.fullmatch(job["proof"])
    assert job["proof"] == proof_of(job["id"], "acme", job["startedAt"])


async def test_wait_false_answers_running_then_posts_the_job(receiver: Receiver) -> None:
    """wait:false answers {"state":"running","id"}, then POSTs the ended job to the callback."""
    async with serve(job_duration=QUICK) as (server, client):
        response = await client.post("/start", json={"account": "acme", "callback": receiver.url})
        assert response.json() == {"state": "running", "id": response.json()["id"]}
        called_back = await receiver.next()
        await server.idle()
        status = (await client.get(f"/status/{called_back['id']}")).json()
    assert called_back == status
    assert called_back["id"] == response.json()["id"]
    assert called_back["state"] == "completed"
    assert called_back["proof"] == proof_of(called_back["id"], "acme", called_back["startedAt"])
    assert (server.callbacks_sent, server.callbacks_owed) == (1, 0)


async def test_status_answers_a_running_job_and_404s_an_unknown_id() -> None:
    """/status answers a job still running; an unknown id is a 404 in JSON."""
    async with serve(job_duration=30) as (server, client):
        job = (await client.post("/start", json={"account": "acme"})).json()
        running = (await client.get(f"/status/{job['id']}")).json()
        unknown = await client.get("/status/123456789abcdef")
    assert running == {"id": job["id"], "state": "running", "startedAt": running["startedAt"]}
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_job"
    assert unknown.headers["content-type"] == "application/json; charset=utf-8"
    assert server.status_polls == 2


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_json"),
        (b"{}", "invalid_account"),
        (b'{"account": ""}', "invalid_account"),
        (b'{"account": "' + b"a" * 257 + b'"}', "invalid_account"),
        (b'{"account": 7}', "invalid_account"),
        (b'{"account": "acme", "wait": "yes"}', "invalid_wait"),
        (b'{"account": "acme", "callback": "/relative"}', "invalid_callback"),
        (b'{"account": "acme", "callback": "ftp://host/cb"}', "invalid_callback"),
        (b'{"account": "acme", "callback": 3}', "invalid_callback"),
    ],
)
async def test_an_invalid_body_is_a_400_naming_the_field(body: bytes, error: str) -> None:
    """A bad /start body is answered 400 {"error","detail"} naming the field; no job starts."""
    async with serve() as (server, client):
        response = await client.post("/start", content=body)
    assert response.status_code == 400
    assert response.json() == {"error": error, "detail": response.json()["detail"]}
    assert server.jobs_started == 0


async def test_a_prediction_is_created_starting_then_posted_to_its_webhook(
    receiver: Receiver,
) -> None:
    """POST /v1/predictions answers 201 with the prediction "starting"; when it ends, the
    whole prediction, "succeeded" with its proof, is POSTed to the webhook, as GET reads it."""
    async with PREDICTIONS.serve(job_duration=QUICK) as (server, client):
        response = await client.post(**PREDICTIONS.start("tok", receiver.url))
        created = response.json()
        called_back = await receiver.next()
        await server.idle()
        status = (await client.get(f"/v1/predictions/{created['id']}")).json()
    url = f"{server.url}/v1/predictions/{created['id']}"
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert JOB_ID.fullmatch(created["id"])
    assert STARTED_AT.fullmatch(created["created_at"])
    assert created == {
        "id": created["id"],
        "status": "starting",
        "input": {"prompt": "tok"},
        "output": None,
        "error": None,
        "created_at": created["created_at"],
        "started_at": None,
        "completed_at": None,
        "urls": {"get": url, "cancel": f"{url}/cancel"},
    }
    proof = proof_of(created["id"], "tok", created["created_at"])
    assert called_back == status
    assert called_back == created | {
        "status": "succeeded",
        "output": {"proof": proof},
        "started_at": called_back["started_at"],
        "completed_at": called_back["completed_at"],
    }
    times = [called_back[at] for at in ("created_at", "started_at", "completed_at")]
    assert all(STARTED_AT.fullmatch(time) for time in times)
    assert times == sorted(times)
    assert (server.jobs_started, server.callbacks_sent, server.callbacks_owed) == (1, 1, 0)
    assert server.status_polls == 1


async def test_a_prediction_is_processing_until_it_ends_and_an_unknown_one_is_404() -> None:
    """GET /v1/predictions/{id} reads a prediction "processing" once its start is answered;
    an unknown id is a 404 {"detail": "Not found."}."""
    async with PREDICTIONS.serve(job_duration=30) as (server, client):
        created = (await client.post(**PREDICTIONS.start())).json()
        processing = (await client.get(f"/v1/predictions/{created['id']}")).json()
        unknown = await client.get("/v1/predictions/123456789abcdef")
    assert processing == created | {"status": "processing", "started_at": processing["started_at"]}
    assert STARTED_AT.fullmatch(processing["started_at"])
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Not found."}
    assert unknown.headers["content-type"] == "application/json; charset=utf-8"
    assert server.status_polls == 2


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": ""}, {"authorization": "Bearer"}, {"authorization": "Basic dG9r"}],
    ids=["missing", "empty", "no-token", "basic"],
)
async def test_a_prediction_without_a_bearer_token_is_a_401(headers: dict[str, str]) -> None:
    """POST /v1/predictions without Authorization: Bearer <token> is answered 401
    {"detail"}; nothing starts."""
    async with PREDICTIONS.serve() as (server, client):
        response = await client.post("/v1/predictions", json={"input": {}}, headers=headers)
    assert response.status_code == 401
    assert set(response.json()) == {"detail"}
    assert server.jobs_started == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b"{}",
        b'{"input": "hi"}',
        b'{"input": {}, "webhook": "/relative"}',
        b'{"input": {}, "webhook": "ftp://host/hook"}',
        b'{"input": {}, "webhook_events_filter": "completed"}',
        b'{"input": {}, "webhook_events_filter": ["done"]}',
    ],
)
async def test_a_prediction_with_a_bad_body_is_a_422(body: bytes) -> None:
    """A bad POST /v1/predictions body is answered 422 {"detail"}; nothing starts."""
    async with PREDICTIONS.serve() as (server, client):
        response = await client.post("/v1/predictions", content=body, headers=bearer("tok"))
    assert response.status_code == 422
    assert set(response.json()) == {"detail"}
    assert server.jobs_started == 0


async def test_a_failed_prediction_has_an_error_and_no_output(receiver: Receiver) -> None:
    """With failure_rate 1 a prediction's webhook says "failed", with an error, no output."""
    async with PREDICTIONS.serve(job_duration=QUICK, failure_rate=1.0) as (server, client):
        created = (await client.post(**PREDICTIONS.start(callback=receiver.url))).json()
        failed = await receiver.next()
        await server.idle()
    assert failed["id"] == created["id"]
    assert (failed["status"], failed["output"]) == ("failed", None)
    assert isinstance(failed["error"], str)
    assert failed["error"]


async def test_a_webhook_filter_without_completed_sends_no_webhook(receiver: Receiver) -> None:
    """Only the "completed" event is sent: a prediction whose filter leaves it out ends
    without a webhook, and none is owed."""
    async with PREDICTIONS.serve(job_duration=QUICK) as (server, client):
        start = PREDICTIONS.start(callback=receiver.url, webhook_events_filter=["start"])
        job_id = (await client.post(**start)).json()["id"]
        await server.until(server.jobs[job_id].ended.is_set)
        await server.idle()
        status = (await client.get(f"/v1/predictions/{job_id}")).json()
    assert status["status"] == "succeeded"
    assert receiver.bodies == []
    assert (server.callbacks_sent, server.callbacks_owed) == (0, 0)


async def test_a_cancelled_prediction_ends_canceled_and_says_so(receiver: Receiver) -> None:
    """POST /v1/predictions/{id}/cancel ends a running prediction "canceled", called back so;
    cancelling it again changes nothing; an unknown one is a 404."""
    async with PREDICTIONS.serve(job_duration=30) as (server, client):
        created = (await client.post(**PREDICTIONS.start(callback=receiver.url))).json()
        cancelled = await client.post(f"/v1/predictions/{created['id']}/cancel")
        called_back = await receiver.next()
        await server.idle()
        again = (await client.post(f"/v1/predictions/{created['id']}/cancel")).json()
        unknown = await client.post("/v1/predictions/123456789abcdef/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json() == called_back == again
    assert (called_back["status"], called_back["output"], called_back["error"]) == (
        "canceled",
        None,
        None,
    )
    assert unknown.status_code == 404
    assert server.callbacks_sent == 1


async def test_job_ids_are_13_to_16_lowercase_hex_without_leading_zeros(
    speaker: Speaker,
) -> None:
    """Job ids are distinct hex of 64-bit numbers, 13 to 16 digits, no leading zero."""
    async with speaker.serve(job_duration=QUICK) as (_, client):
        ids = [(await client.post(**speaker.start())).json()["id"] for _ in range(50)]
    assert all(JOB_ID.fullmatch(job_id) for job_id in ids)
    assert len(set(ids)) == 50
