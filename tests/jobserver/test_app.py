"""The job server's HTTP API, in-process (ASGITransport inside the app's lifespan)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jobserver.proofs import PROOF_MISMATCH, CompletedJob, encode_bundle, make_proof
from tests.jobserver.servers import (
    ORIGINAL_ACCOUNT,
    ORIGINAL_BUNDLE,
    HeldReceiver,
    callback_receiver,
    jobserver_client,
    jobserver_inside,
)

SECRET = "test-secret"
WAIT = 10.0
STARTED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
# As the real server's: 13 to 16 lowercase hex digits, no leading zero.
JOB_ID = re.compile(r"^[1-9a-f][0-9a-f]{12,15}$")


def independent_proof(job_id: str, account: str, started_at: str) -> str:
    message = f"{job_id}:{account}:{started_at}".encode()
    return hmac.new(SECRET.encode(), message, hashlib.sha1).hexdigest().upper()


async def start(client: httpx.AsyncClient, account: str, **fields: Any) -> httpx.Response:
    return await client.post("/start", json={"account": account, **fields})


async def test_wait_true_returns_the_completed_job_with_a_valid_proof() -> None:
    """wait: true holds the request until the job ends and answers id, state, startedAt, proof."""
    async with jobserver_client(secret=SECRET) as client:
        response = await start(client, "acme", wait=True)
    assert response.status_code == 200
    job = response.json()
    assert set(job) == {"id", "state", "startedAt", "proof"}
    assert job["state"] == "completed"
    assert JOB_ID.match(job["id"])
    assert STARTED_AT.match(job["startedAt"])
    assert job["proof"] == independent_proof(job["id"], "acme", job["startedAt"])


async def test_wait_false_answers_running_at_once_and_status_shows_the_job() -> None:
    """wait: false answers {state: running, id} before the job ends; /status shows it."""
    async with jobserver_client(job_duration=5.0) as client:
        began = time.monotonic()
        response = await start(client, "acme")
        assert time.monotonic() - began < 1.0
        assert response.status_code == 200
        assert response.json() == {"state": "running", "id": response.json()["id"]}
        status = await client.get(f"/status/{response.json()['id']}")
    assert status.status_code == 200
    assert status.json()["state"] == "running"
    assert status.json()["id"] == response.json()["id"]


async def test_status_of_a_finished_job_is_the_job_json() -> None:
    """After the job ends, /status answers the same JSON wait: true answered."""
    async with jobserver_client() as client:
        job = (await start(client, "acme", wait=True)).json()
        status = await client.get(f"/status/{job['id']}")
    assert status.status_code == 200
    assert status.json() == job


async def test_finished_jobs_are_evicted_after_the_ttl() -> None:
    """With status_ttl 0 a finished job is gone at once: /status answers 404 JSON."""
    async with jobserver_client(status_ttl=0) as client:
        job = (await start(client, "acme", wait=True)).json()
        status = await client.get(f"/status/{job['id']}")
    assert status.status_code == 404
    assert status.json()["error"] == "not_found"


async def test_unknown_job_is_404_json() -> None:
    """/status of an id never issued answers 404 with the error schema."""
    async with jobserver_client() as client:
        response = await client.get("/status/0123456789abcdef")
    assert response.status_code == 404
    assert set(response.json()) == {"error", "detail"}


async def test_one_account_is_served_one_request_at_a_time() -> None:
    """Four wait: true jobs of one account take at least four job durations."""
    duration = 0.2
    async with jobserver_client(job_duration=duration) as client:
        began = time.monotonic()
        responses = await asyncio.gather(*(start(client, "acme", wait=True) for _ in range(4)))
        elapsed = time.monotonic() - began
    assert all(r.json()["state"] == "completed" for r in responses)
    assert elapsed >= 4 * duration - 0.01
    started = sorted(r.json()["startedAt"] for r in responses)
    assert len(set(started)) == 4


async def test_different_accounts_do_not_block_each_other() -> None:
    """Four wait: true jobs of four accounts take about one job duration."""
    duration = 0.2
    async with jobserver_client(job_duration=duration) as client:
        began = time.monotonic()
        responses = await asyncio.gather(*(start(client, f"a{i}", wait=True) for i in range(4)))
        elapsed = time.monotonic() - began
    assert all(r.json()["state"] == "completed" for r in responses)
    assert elapsed < 3 * duration


async def test_wait_false_requests_of_one_account_are_not_held_by_the_job() -> None:
    """The gate is held only while /start is handled: wait: false jobs overlap."""
    async with jobserver_client(job_duration=5.0) as client:
        began = time.monotonic()
        responses = await asyncio.gather(*(start(client, "acme") for _ in range(10)))
        elapsed = time.monotonic() - began
    assert all(r.status_code == 200 for r in responses)
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'"acme"', "object"),
        (b"{}", "account"),
        (b'{"account": ""}', "account"),
        (b'{"account": 42}', "account"),
        (b'{"account": null}', "account"),
        (json.dumps({"account": "x" * 257}).encode(), "account"),
        (b'{"account": "acme", "wait": "yes"}', "wait"),
        (b'{"account": "acme", "wait": 1}', "wait"),
        (b'{"account": "acme", "wait": null}', "wait"),
        (b'{"account": "acme", "callback": "/relative"}', "callback"),
        (b'{"account": "acme", "callback": "ftp://host/x"}', "callback"),
        (b'{"account": "acme", "callback": "http://"}', "callback"),
        (b'{"account": "acme", "callback": 7}', "callback"),
        (b'{"account": "acme", "callback": "http://h:99999/"}', "callback"),
        (b'{"account": "acme", "callback": "http://user:pw@h/"}', "callback"),
        (b'{"account": "acme", "callback": "http://h/a b"}', "callback"),
        (b'{"account": "acme", "callback": null}', "callback"),
        (b'{"account": "acme", "callback": "host:99999/x"}', "callback"),
        (b'{"account": "acme", "callback": "user:pw@host/x"}', "callback"),
        (b'{"account": "acme", "callback": ":8000/x"}', "callback"),
        (b'{"account": "acme", "callback": "host/a b"}', "callback"),
        (b'{"account": "acme", "callback": "mailto:someone@host"}', "callback"),
        (b'{"account": "acme", "callback": "8000/x"}', "callback"),
        (b"\xff\xfe", "JSON"),
        (b'{"account": "me", "wait": true, "account": "you"}', "account: the key appears"),
        (b'{"account": "acme", "wait": NaN}', "JSON"),
    ],
)
async def test_bad_start_bodies_are_400_naming_the_field(body: bytes, field: str) -> None:
    """Each malformed /start body is answered 400 bad_request with a detail naming the field."""
    async with jobserver_client() as client:
        response = await client.post("/start", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert field in response.json()["detail"]


async def test_account_of_256_characters_is_accepted() -> None:
    """The account length bound is inclusive: 256 characters start a job."""
    async with jobserver_client() as client:
        response = await start(client, "x" * 256)
    assert response.status_code == 200


async def test_oversized_body_is_413_json() -> None:
    """A body over max_body_size is refused with 413 JSON."""
    async with jobserver_client(max_body_size=100) as client:
        response = await start(client, "a" * 200)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


async def test_oversized_chunked_body_is_413_json() -> None:
    """A body without Content-Length is counted as it arrives and refused past the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 50

    async with jobserver_client(max_body_size=100) as client:
        response = await client.post("/start", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


async def test_unknown_route_and_wrong_method_are_json() -> None:
    """404 and 405 from the router use the error schema too."""
    async with jobserver_client() as client:
        missing = await client.get("/nowhere")
        wrong_method = await client.get("/start")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "Not Found"}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]


async def test_queue_full_is_503_with_retry_after() -> None:
    """With max_running 1 and queue_size 1, a third concurrent job is refused 503 + Retry-After."""
    async with jobserver_client(job_duration=5.0, max_running=1, queue_size=1) as client:
        first = await start(client, "a")
        second = await start(client, "b")
        third = await start(client, "c")
    assert first.status_code == second.status_code == 200
    assert third.status_code == 503
    assert third.json()["error"] == "busy"
    assert set(third.json()) == {"error", "detail"}
    assert int(third.headers["retry-after"]) >= 1


async def test_queued_jobs_run_when_a_slot_frees() -> None:
    """With max_running 1, two jobs of two accounts run one after the other."""
    duration = 0.15
    async with jobserver_client(job_duration=duration, max_running=1, queue_size=5) as client:
        began = time.monotonic()
        responses = await asyncio.gather(
            start(client, "a", wait=True), start(client, "b", wait=True)
        )
        elapsed = time.monotonic() - began
    assert [r.json()["state"] for r in responses] == ["completed", "completed"]
    assert elapsed >= 2 * duration - 0.01


async def test_request_timeout_answers_504() -> None:
    """A /start that outlasts request_timeout (here: waiting for a long job) is 504 JSON."""
    async with jobserver_client(job_duration=5.0, request_timeout=0.1) as client:
        response = await start(client, "acme", wait=True)
    assert response.status_code == 504
    assert response.json()["error"] == "timeout"


CALLBACK_SHAPES = [
    "http://127.0.0.1:8000/callback/abc",
    "https://proxy.example.com/cb?token=x&y=1",
    "HTTP://localhost:1/",
    "127.0.0.1:8000/callback/abc",
    "proxy.example.com/cb?token=x",
    "localhost:8000",
]
NOT_CALLBACKS = ["/relative", "ftp://host/x", "http://", "host:99999/x", "user:pw@h/", "8000/x"]


async def test_callback_urls_of_the_documented_shapes_are_accepted() -> None:
    """Host names, IPv4 addresses, ports, query strings, with or without a scheme, are valid."""
    async with jobserver_client(job_duration=5.0) as client:
        responses = [await start(client, "acme", callback=url) for url in CALLBACK_SHAPES]
    assert [r.status_code for r in responses] == [200] * len(CALLBACK_SHAPES)


async def test_callback_without_a_scheme_is_called_over_http() -> None:
    """A callback given as host:port/path is POSTed to over http, as the real server did."""
    async with callback_receiver() as receiver, jobserver_client() as client:
        callback = receiver.url.removeprefix("http://") + "/cb?x=1"
        started = await start(client, "acme", callback=callback)
        delivery = await receiver.next()
    assert started.status_code == 200
    assert delivery.path == "/cb"
    assert json.loads(delivery.body)["id"] == started.json()["id"]


async def test_openapi_callback_pattern_agrees_with_the_server() -> None:
    """The documented callback pattern accepts exactly the callbacks /start accepts."""
    async with jobserver_client(job_duration=5.0) as client:
        document = (await client.get("/openapi.json")).json()
        callback = document["components"]["schemas"]["StartRequest"]["properties"]["callback"]
        pattern = re.compile(callback["pattern"])
        for url in CALLBACK_SHAPES + NOT_CALLBACKS:
            accepted = (await start(client, "acme", callback=url)).status_code == 200
            assert accepted == (pattern.search(url) is not None), url
            assert accepted == (url in CALLBACK_SHAPES), url


async def test_healthz_counts_jobs() -> None:
    """/healthz answers status ok with counts of jobs started, running and queued."""
    async with jobserver_client(job_duration=5.0, max_running=1) as client:
        await start(client, "a")
        await start(client, "b")
        response = await client.get("/healthz")
    health = response.json()
    assert response.status_code == 200
    assert (health["status"], health["jobs_started"], health["callbacks_pending"]) == ("ok", 2, 0)
    # Whether the first job has taken its slot yet depends on scheduling; the sum does not.
    assert health["jobs_running"] + health["jobs_queued"] == 2
    assert health["jobs_running"] <= 1


async def test_healthz_counts_every_status_poll_answered() -> None:
    """/healthz status_polls counts GET /status answers of every kind: the job, 404 and 500."""
    async with jobserver_client(job_duration=5.0) as client:
        health = (await client.get("/healthz")).json()
        assert (health["status_polls"], health["starts_abandoned"]) == (0, 0)
        job_id = (await start(client, "acme")).json()["id"]
        await client.get(f"/status/{job_id}")
        await client.get(f"/status/{job_id}")
        await client.get("/status/abc")
        assert (await client.get("/healthz")).json()["status_polls"] == 3
    async with jobserver_client(status_error_rate=1.0) as client:
        assert (await client.get("/status/abc")).status_code == 500
        assert (await client.get("/healthz")).json()["status_polls"] == 1


async def test_openapi_document_describes_every_route() -> None:
    """/openapi.json is an OpenAPI 3 document with the routes and the request constraints."""
    async with jobserver_client() as client:
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/start",
        "/status/{job_id}",
        "/verify",
        "/healthz",
        "/openapi.json",
    }
    account = document["components"]["schemas"]["StartRequest"]["properties"]["account"]
    assert (account["minLength"], account["maxLength"]) == (1, 256)
    assert "Error" in document["components"]["schemas"]


def bundle_of(*jobs: dict[str, str]) -> str:
    """The jobclient's bundle of finished jobs as the job server answered them."""
    return encode_bundle(CompletedJob(j["id"], j["startedAt"], j["proof"]) for j in jobs)


async def test_verify_accepts_a_bundle_of_real_proofs() -> None:
    """POST /verify answers valid, the account and the job count for genuine proofs."""
    async with jobserver_client(secret=SECRET) as client:
        jobs = [(await start(client, "acme", wait=True)).json() for _ in range(2)]
        response = await client.post("/verify", json={"proof": bundle_of(*jobs), "account": "acme"})
    assert response.status_code == 200
    assert response.json() == {"valid": True, "account": "acme", "jobs": 2}


async def test_verify_finds_the_account_of_jobs_it_ran() -> None:
    """Without an account, /verify takes it from its own table of the jobs it ran."""
    async with jobserver_client(secret=SECRET) as client:
        jobs = [(await start(client, "acme", wait=True)).json() for _ in range(2)]
        response = await client.post("/verify", json={"proof": bundle_of(*jobs)})
    assert response.status_code == 200
    assert response.json() == {"valid": True, "account": "acme", "jobs": 2}


async def test_verify_lists_each_forged_proof_with_422() -> None:
    """Proofs not made with the secret are 422 invalid_proof, each failing job named."""
    started_at = "2026-01-01T00:00:00.000Z"
    genuine = independent_proof("1f2e3d4c5b6a7", "acme", started_at)
    forged = make_proof(b"not-the-secret", "abcdef0123456789", "acme", started_at)
    bundle = encode_bundle(
        [
            CompletedJob("1f2e3d4c5b6a7", started_at, genuine),
            CompletedJob("abcdef0123456789", started_at, forged),
        ]
    )
    async with jobserver_client(secret=SECRET) as client:
        response = await client.post("/verify", json={"proof": bundle, "account": "acme"})
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_proof",
        "detail": "1 of 2 proofs do not check for account 'acme'",
        "valid": False,
        "account": "acme",
        "jobs": 2,
        "failures": [{"id": "abcdef0123456789", "reason": PROOF_MISMATCH}],
    }


async def test_verify_reads_the_original_clients_bundle() -> None:
    """The original client's bundle is read, and each of its 50 proofs reported as not matching."""
    async with jobserver_client(secret=SECRET) as client:
        response = await client.post(
            "/verify", json={"proof": ORIGINAL_BUNDLE, "account": ORIGINAL_ACCOUNT}
        )
    body = response.json()
    assert response.status_code == 422
    assert (body["error"], body["valid"], body["jobs"]) == ("invalid_proof", False, 50)
    assert {f["reason"] for f in body["failures"]} == {PROOF_MISMATCH}
    assert len({f["id"] for f in body["failures"]}) == 50


async def test_verify_without_account_for_unknown_jobs_is_422() -> None:
    """Without an account, a bundle of jobs this server never ran is 422 unknown_account."""
    async with jobserver_client() as client:
        response = await client.post("/verify", json={"proof": ORIGINAL_BUNDLE})
    assert response.status_code == 422
    assert response.json()["error"] == "unknown_account"
    assert "account is required" in response.json()["detail"]


async def test_verify_without_account_for_jobs_of_two_accounts_is_422() -> None:
    """Without an account, jobs of two accounts leave the account unknown: 422."""
    async with jobserver_client(secret=SECRET) as client:
        jobs = [(await start(client, name, wait=True)).json() for name in ("a", "b")]
        response = await client.post("/verify", json={"proof": bundle_of(*jobs)})
    assert response.status_code == 422
    assert response.json()["error"] == "unknown_account"
    assert "2 accounts" in response.json()["detail"]


@pytest.mark.parametrize("proof", ["bm90IGEgYnVuZGxl", encode_bundle([])])
async def test_verify_of_what_is_not_a_bundle_is_422_bad_bundle(proof: str) -> None:
    """A proof that is not a bundle in the original's format is 422 bad_bundle, saying why."""
    async with jobserver_client() as client:
        response = await client.post("/verify", json={"proof": proof, "account": "acme"})
    assert response.status_code == 422
    assert response.json()["error"] == "bad_bundle"
    assert response.json()["detail"].startswith("not a proof bundle")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"nope", "JSON"),
        (b"{}", "proof"),
        (b'{"proof": 3}', "proof"),
        (b'{"proof": ""}', "proof"),
        (b'{"proof": "abc", "account": 3}', "account"),
        (b'{"proof": "abc", "account": ""}', "account"),
        (b'{"proof": "abc", "account": null}', "account"),
    ],
)
async def test_verify_bad_body_is_400(body: bytes, field: str) -> None:
    """A /verify body without a proof string, or with a bad account, is 400 naming the field."""
    async with jobserver_client() as client:
        response = await client.post("/verify", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert field in response.json()["detail"]


async def test_a_job_with_a_callback_is_visible_in_status_once_delivered() -> None:
    """When the callback of a wait: false job arrives, /status shows the same finished job."""
    async with callback_receiver() as receiver, jobserver_client() as client:
        started = await start(client, "acme", callback=f"{receiver.url}/cb")
        delivery = await receiver.next()
        status = await client.get(f"/status/{started.json()['id']}")
    assert json.loads(delivery.body) == status.json()
    assert status.json()["state"] == "completed"


JSON_CONTENT_TYPE = "application/json; charset=utf-8"


async def test_every_answer_is_labelled_json_in_utf8() -> None:
    """Answers of every kind, errors included, are application/json; charset=utf-8."""
    async with jobserver_client(
        secret=SECRET, max_body_size=1000, max_running=1, queue_size=0, job_duration=5.0
    ) as client:
        running = await start(client, "acme")
        answers = [
            running,
            await client.get(f"/status/{running.json()['id']}"),
            await start(client, "busy"),  # 503: the one running slot is taken
            await client.get("/status/ünïcode"),  # the detail names the id, in UTF-8
            await client.post("/start", content=b"{not json"),
            await start(client, "x" * 2000),
            await client.post("/verify", json={"proof": ORIGINAL_BUNDLE}),
            await client.post("/verify", json={"proof": "bm90"}),
            await client.get("/healthz"),
            await client.get("/openapi.json"),
            await client.get("/nowhere"),
            await client.get("/start"),
        ]
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 503, 404, 400, 413, 422, 422, 200, 200, 404, 405]
    assert [a.headers["content-type"] for a in answers] == [JSON_CONTENT_TYPE] * len(answers)
    assert "'ünïcode'" in answers[3].content.decode("utf-8")


async def test_finished_jobs_are_labelled_json_in_utf8() -> None:
    """A wait: true answer (the finished job) is application/json; charset=utf-8 too."""
    async with jobserver_client() as client:
        response = await start(client, "acme", wait=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_CONTENT_TYPE


HELD_HOOK = "http://receiver.test/hook"


async def test_a_quick_job_is_called_back_before_its_start_is_answered() -> None:
    """callback_before_answer: a done job is called back before its /start answers running."""
    receiver = HeldReceiver()
    events: list[str] = []

    async def start_and_note() -> httpx.Response:
        response = await start(client, "acme", callback=HELD_HOOK)
        events.append("answered")
        return response

    async with jobserver_inside(
        receiver.transport(), job_duration=0.0, callback_before_answer=30.0
    ) as (client, state):
        answering = asyncio.create_task(start_and_note())
        job = await receiver.next()
        events.append("called back")
        receiver.release()
        response = await asyncio.wait_for(answering, WAIT)
        assert await state["callbacks"].drain(WAIT) == 0
    assert events == ["called back", "answered"]
    assert response.status_code == 200
    assert response.json() == {"state": "running", "id": job["id"]}
    assert job["state"] == "completed"
    assert receiver.jobs == [job]


async def test_every_quick_job_is_called_back_before_its_start_is_answered() -> None:
    """With jobs shorter than the window, each /start answer comes after its job's callback."""
    receiver = HeldReceiver()
    receiver.release()
    async with jobserver_inside(
        receiver.transport(), job_duration=0.0, callback_before_answer=30.0
    ) as (client, state):
        for _ in range(10):
            job_id = (await start(client, "acme", callback=HELD_HOOK)).json()["id"]
            assert [job["id"] for job in receiver.jobs][-1] == job_id
        assert await state["callbacks"].drain(WAIT) == 0
    assert len({job["id"] for job in receiver.jobs}) == len(receiver.jobs) == 10


async def test_a_job_still_running_after_the_window_is_called_back_when_it_ends() -> None:
    """A job that outlasts callback_before_answer: /start answers at the window, the callback
    comes once, when the job ends."""
    receiver = HeldReceiver()
    async with jobserver_inside(
        receiver.transport(), job_duration=0.5, callback_before_answer=0.05
    ) as (client, state):
        # The receiver holds its answers: a /start that waited for the callback would hang.
        response = await asyncio.wait_for(start(client, "acme", callback=HELD_HOOK), WAIT)
        job = await receiver.next()
        receiver.release()
        assert await state["callbacks"].drain(WAIT) == 0
    assert response.json() == {"state": "running", "id": job["id"]}
    assert receiver.jobs == [job]


async def test_the_duplicate_fault_sends_a_callback_twice_before_the_answer_and_no_more() -> None:
    """callback_before_answer with callback_duplicate_rate 1: both copies come before the
    answer, and no third."""
    receiver = HeldReceiver()
    receiver.release()
    async with jobserver_inside(
        receiver.transport(),
        job_duration=0.0,
        callback_before_answer=30.0,
        callback_duplicate_rate=1.0,
    ) as (client, state):
        job_id = (await start(client, "acme", callback=HELD_HOOK)).json()["id"]
        assert [job["id"] for job in receiver.jobs] == [job_id, job_id]
        assert await state["callbacks"].drain(WAIT) == 0
    assert len(receiver.jobs) == 2


async def test_the_window_holds_the_account_gate() -> None:
    """While a /start holds for its callback, the account's next /start waits; others do not."""
    receiver = HeldReceiver()
    async with jobserver_inside(
        receiver.transport(), job_duration=0.0, callback_before_answer=30.0
    ) as (client, state):
        holding = asyncio.create_task(start(client, "acme", callback=HELD_HOOK))
        await receiver.next()
        other = await asyncio.wait_for(start(client, "other"), WAIT)
        queued = asyncio.create_task(start(client, "acme"))
        assert other.status_code == 200
        receiver.release()
        await asyncio.wait_for(asyncio.gather(holding, queued), WAIT)
        assert await state["callbacks"].drain(WAIT) == 0
    # The account's second start came to the gate while the first still held it.
    assert state["gate"].peak == 2
