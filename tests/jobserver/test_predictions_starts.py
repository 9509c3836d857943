"""A prediction's start shares the machinery of ``/start``: the account's gate,
callback_before_answer, capacity, start faults, latency, disconnects and the drain; its
webhooks are callbacks (events filter, faults, signing, order). In-process, and once
with the real ``jobserver --dialect predictions`` process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from jobserver.app import begin_drain, create_app
from jobserver.predictions import DIALECT
from jobserver.proofs import make_proof
from tests.conftest import app_lifespan, run_program
from tests.jobserver.servers import (
    PREDICTIONS_TOKEN,
    HeldReceiver,
    bearer,
    callback_receiver,
    create_prediction,
    expected_signature,
    fast_settings,
    predictions_inside,
)

SECRET = "test-secret"
WAIT = 10.0
TOKEN = PREDICTIONS_TOKEN
HOOK = "http://receiver.test/hook"
CREATED = {"status": "starting", "output": None, "started_at": None, "completed_at": None}


async def test_predictions_of_one_token_are_served_one_at_a_time() -> None:
    """While a create holds its token's gate (its webhook called back before the answer),
    the token's next create waits; another token's is served."""
    receiver = HeldReceiver()
    async with predictions_inside(receiver, job_duration=0.0, callback_before_answer=30.0) as (
        client,
        state,
    ):
        holding = asyncio.create_task(
            create_prediction(client, webhook=HOOK, webhook_events_filter=["completed"])
        )
        assert (await receiver.next())["status"] == "succeeded"
        other = await asyncio.wait_for(create_prediction(client, "other"), WAIT)
        queued = asyncio.create_task(create_prediction(client))
        assert other.status_code == 201
        receiver.release()
        first, second = await asyncio.wait_for(asyncio.gather(holding, queued), WAIT)
        assert await state["callbacks"].drain(WAIT) == 0
    assert state["gate"].peak == 2
    assert (first.status_code, second.status_code) == (201, 201)


async def test_callback_before_answer_delivers_the_completed_webhook_before_the_201() -> None:
    """With callback_before_answer, the ended prediction's webhook comes first; the 201 that
    follows still shows the prediction as created, starting."""
    receiver = HeldReceiver()
    events: list[str] = []

    async def create_and_note() -> httpx.Response:
        response = await create_prediction(
            client, webhook=HOOK, webhook_events_filter=["completed"]
        )
        events.append("answered")
        return response

    async with predictions_inside(receiver, job_duration=0.0, callback_before_answer=30.0) as (
        client,
        state,
    ):
        answering = asyncio.create_task(create_and_note())
        webhook = await receiver.next()
        events.append("called back")
        receiver.release()
        response = await asyncio.wait_for(answering, WAIT)
        assert await state["callbacks"].drain(WAIT) == 0
    assert events == ["called back", "answered"]
    assert webhook["status"] == "succeeded"
    assert response.json() == {**webhook, **CREATED}


async def test_at_capacity_a_create_is_503_with_retry_after() -> None:
    """max_running 1 and queue_size 0: a second concurrent prediction is refused 503 busy."""
    async with predictions_inside(job_duration=60.0, max_running=1, queue_size=0) as (client, _):
        first = await create_prediction(client, "a")
        second = await create_prediction(client, "b")
    assert first.status_code == 201
    assert second.status_code == 503
    assert second.json()["error"] == "busy"
    assert int(second.headers["retry-after"]) >= 1


async def test_start_faults_refuse_creates_without_a_prediction() -> None:
    """start_error_count 1: the first create is 503 start_failed, the next one is created."""
    async with predictions_inside(job_duration=60.0, start_error_count=1) as (client, state):
        refused = await create_prediction(client)
        created = await create_prediction(client)
    assert (refused.status_code, refused.json()["error"]) == (503, "start_failed")
    assert refused.headers["retry-after"] == "1"
    assert created.status_code == 201
    assert state["runner"].started == 1


@pytest.mark.parametrize(("setting", "trips"), [("start_latency", 1), ("latency", 2)])
async def test_start_latency_and_network_latency_delay_a_create(setting: str, trips: int) -> None:
    """start_latency is spent once in the gate; latency on the way in (to the gate, where
    the create path is counted) and on the way out."""
    seconds = 0.2
    latency: dict[str, Any] = {setting: seconds}
    async with predictions_inside(job_duration=60.0, **latency) as (client, _):
        began = time.monotonic()
        response = await create_prediction(client)
        elapsed = time.monotonic() - began
    assert response.status_code == 201
    assert elapsed >= trips * seconds
    assert DIALECT.start_path == "/v1/predictions"


@pytest.mark.parametrize(
    ("events", "statuses"),
    [
        (None, ["processing", "succeeded"]),
        (["start", "output", "logs", "completed"], ["processing", "succeeded"]),
        (["completed"], ["succeeded"]),
        (["start"], ["processing"]),
        (["output", "logs"], []),
        ([], []),
    ],
)
async def test_the_webhook_is_sent_on_the_events_of_its_filter(
    events: list[str] | None, statuses: list[str]
) -> None:
    """start: the prediction processing, once it runs; completed: once it ends; both by
    default; output and logs are accepted and never sent."""
    receiver = HeldReceiver()
    receiver.release()
    fields: dict[str, Any] = {"webhook": HOOK}
    if events is not None:
        fields["webhook_events_filter"] = events
    async with predictions_inside(receiver) as (client, state):
        final = (await create_prediction(client, prefer="wait", **fields)).json()
        assert await state["callbacks"].drain(WAIT) == 0
    by_status = {webhook["status"]: webhook for webhook in receiver.jobs}
    assert sorted(by_status) == sorted(statuses) and len(receiver.jobs) == len(statuses)
    if "processing" in by_status:
        started = by_status["processing"]
        assert (started["started_at"], started["completed_at"]) == (final["started_at"], None)
        assert started["output"] is None
    if "succeeded" in by_status:
        assert by_status["succeeded"] == final


@pytest.mark.parametrize(
    ("fault", "copies"), [("callback_drop_rate", 0), ("callback_duplicate_rate", 2)]
)
async def test_webhook_faults_drop_and_duplicate(fault: str, copies: int) -> None:
    """callback_drop_rate 1 sends no webhook; callback_duplicate_rate 1 sends each twice."""
    receiver = HeldReceiver()
    receiver.release()
    async with predictions_inside(receiver, **{fault: 1.0}) as (client, state):
        response = await create_prediction(
            client, prefer="wait", webhook=HOOK, webhook_events_filter=["completed"]
        )
        assert await state["callbacks"].drain(WAIT) == 0
    assert receiver.jobs == [response.json()] * copies


async def test_webhooks_are_signed_and_shuffled_ones_each_arrive_once() -> None:
    """With a callback secret and callback_order shuffled, a burst's webhooks each arrive
    once, signed with the Standard Webhooks scheme."""
    secret = "whsec_" + "a2V5LWtleS1rZXkta2V5LWtleQ=="
    async with (
        callback_receiver() as receiver,
        predictions_inside(
            callback_secret=secret, callback_order="shuffled", seed=3, job_duration=0.0
        ) as (
            client,
            state,
        ),
    ):
        created = await asyncio.gather(
            *(
                create_prediction(
                    client, f"t{index}", webhook=receiver.url, webhook_events_filter=["completed"]
                )
                for index in range(20)
            )
        )
        deliveries = [await receiver.next() for _ in range(20)]
        assert await state["callbacks"].drain(WAIT) == 0
        assert receiver.deliveries.empty()
    ids = sorted(json.loads(delivery.body)["id"] for delivery in deliveries)
    assert ids == sorted(response.json()["id"] for response in created)
    for delivery in deliveries:
        assert delivery.headers["webhook-signature"] == expected_signature(
            secret, delivery.headers, delivery.body
        )


async def test_a_held_prefer_wait_answers_as_it_stands_when_the_server_stops() -> None:
    """When shutdown begins, a create held by Prefer: wait answers 201, processing."""
    receiver = HeldReceiver()
    receiver.release()
    async with predictions_inside(receiver, job_duration=60.0) as (client, state):
        held = asyncio.create_task(create_prediction(client, prefer="wait", webhook=HOOK))
        await receiver.next()  # the prediction is running
        begin_drain(state)
        response = await asyncio.wait_for(held, WAIT)
        refused = await create_prediction(client)
    assert (response.status_code, response.json()["status"]) == (201, "processing")
    assert (refused.status_code, refused.json()["error"]) == (503, "shutting_down")


async def test_a_create_whose_client_leaves_at_the_gate_starts_nothing() -> None:
    """honour_disconnects: a create waiting at its token's gate when its client leaves
    starts no prediction and is counted in starts_abandoned."""
    receiver = HeldReceiver()
    settings = fast_settings(
        dialect="predictions",
        job_duration=0.0,
        callback_before_answer=30.0,
        honour_disconnects=True,
    )
    async with (
        app_lifespan(create_app(settings, receiver.transport())) as (app, _),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://jobserver"
        ) as client,
    ):
        holding = asyncio.create_task(
            create_prediction(client, webhook=HOOK, webhook_events_filter=["completed"])
        )
        await receiver.next()  # the first create holds the gate
        leaving = await leave_at_the_gate(app)
        receiver.release()
        assert (await asyncio.wait_for(holding, WAIT)).status_code == 201
        health = (await client.get("/healthz")).json()
    assert leaving == 499
    assert (health["starts_abandoned"], health["jobs_started"]) == (1, 1)


async def leave_at_the_gate(app: ASGIApp) -> int:
    """Send a create to ``app``, disconnect once it waits for the gate; the answer's status."""
    body = json.dumps({"input": {}}).encode()
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})
    watching = asyncio.Event()
    statuses: list[int] = []

    async def receive() -> Message:
        if inbox.empty():
            watching.set()  # the body is read: the app now watches for a disconnect
        return await inbox.get()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predictions",
        "raw_path": b"/v1/predictions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"jobserver"), (b"authorization", f"Bearer {TOKEN}".encode())],
        "server": ("jobserver", 80),
        "client": ("127.0.0.1", 1),
    }

    async def serve() -> None:
        await app(scope, receive, send)

    served = asyncio.create_task(serve())
    await asyncio.wait_for(watching.wait(), WAIT)
    inbox.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(served, WAIT)
    return statuses[0]


async def test_real_server_creates_a_prediction_and_calls_its_webhook() -> None:
    """jobserver --dialect predictions: a prediction with a webhook is created, the signed
    webhooks reach a real receiver, and its get URL answers it."""
    secret = "webhook-secret"
    flags = ("--dialect", "predictions", "--job-duration", "0.05", "--secret", SECRET)
    async with (
        callback_receiver() as receiver,
        run_program("jobserver", *flags, env={"JOBSERVER_CALLBACK_SECRET": secret}) as server,
        httpx.AsyncClient(timeout=WAIT) as client,
    ):
        response = await client.post(
            f"{server.url}/v1/predictions",
            json={"input": {"prompt": "hi"}, "webhook": f"{receiver.url}/hook"},
            headers=bearer(),
        )
        deliveries = [await receiver.next() for _ in range(2)]
        created = response.json()
        got = await client.get(created["urls"]["get"])
    assert response.status_code == 201
    assert created["urls"]["get"] == f"{server.url}/v1/predictions/{created['id']}"
    webhooks = {json.loads(d.body)["status"]: json.loads(d.body) for d in deliveries}
    assert set(webhooks) == {"processing", "succeeded"}
    succeeded = webhooks["succeeded"]
    assert got.json() == succeeded
    proof = make_proof(SECRET.encode(), created["id"], TOKEN, succeeded["started_at"])
    assert succeeded["output"] == {"proof": proof}
    for delivery in deliveries:
        assert delivery.path == "/hook"
        assert delivery.headers["webhook-signature"] == expected_signature(
            secret, delivery.headers, delivery.body
        )
