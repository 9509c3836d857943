"""The second job server: the protocol's basics, then each option; the predictions
dialect's basics, and the options again in it where they mean the same."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import closed_port, run_server
from tests.upstreams.aioserver import AioServer, AioServerConfig, run_aioserver

JOB_ID = re.compile(r"[1-9a-f][0-9a-f]{12,15}")
STARTED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PROOF = re.compile(r"[0-9A-F]{40}")
QUICK = 0.02  # a job's duration where only the order of events matters
WAIT = 5.0


class Receiver:
    """Where callbacks go: records each POST, answers with the scripted statuses (then
    200), and holds its answers while :meth:`hold` is in force."""

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._released = asyncio.Event()
        self._released.set()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/callback", self._callback, methods=["POST"])])

    async def _callback(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.bodies.append(body)
        self._arrived.put_nowait(body)
        async with asyncio.timeout(WAIT * 2):
            await self._released.wait()
        return JSONResponse({}, self.statuses.pop(0) if self.statuses else 200)

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def next(self) -> dict[str, Any]:
        """The next callback to arrive, waiting at most WAIT."""
        async with asyncio.timeout(WAIT):
            return await self._arrived.get()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with run_server(receiver.app()) as url:
        receiver.url = f"{url}/callback"
        try:
            yield receiver
        finally:
            receiver.release()


Served = tuple[AioServer, httpx.AsyncClient]


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[Served]:
    async with (
        run_aioserver(AioServerConfig(**options)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        yield server, client


@dataclass(frozen=True)
class Speaker:
    """A dialect as these tests speak it: a server of it, a start, where a job's status is
    read, and a job's state in the work sample's words."""

    dialect: str

    def serve(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Served]:
        return serve(dialect=self.dialect, **options)

    def start(
        self, account: str = "acme", callback: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """``client.post``'s arguments for a start of ``account`` (the token, in
        predictions) called back at ``callback``; ``fields``: more of its body."""
        if self.dialect == "work-sample":
            called_back = {"callback": callback} if callback else {}
            return {"url": "/start", "json": {"account": account, **called_back, **fields}}
        webhook = {"webhook": callback, "webhook_events_filter": ["completed"]} if callback else {}
        body = {"input": {"prompt": account}, **webhook, **fields}
        return {"url": "/v1/predictions", "json": body, "headers": bearer(account)}

    def status(self, job_id: str) -> str:
        return f"/status/{job_id}" if self.dialect == "work-sample" else f"/v1/predictions/{job_id}"

    def state(self, job: dict[str, Any]) -> str:
        """``running``, ``completed``, ``failed`` (or ``canceled``), in either dialect."""
        if self.dialect == "work-sample":
            return str(job["state"])
        status = str(job["status"])
        return PREDICTION_STATES.get(status, status)

    @property
    def error_fields(self) -> set[str]:
        return {"error", "detail"} if self.dialect == "work-sample" else {"detail"}


PREDICTION_STATES = {"starting": "running", "processing": "running", "succeeded": "completed"}
WORK_SAMPLE = Speaker("work-sample")
PREDICTIONS = Speaker("predictions")


@pytest.fixture(params=[WORK_SAMPLE, PREDICTIONS], ids=lambda speaker: speaker.dialect)
def speaker(request: pytest.FixtureRequest) -> Speaker:
    """Each dialect in turn, for a test that means the same in both."""
    speaker: Speaker = request.param
    return speaker


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def later(client: httpx.AsyncClient, start: dict[str, Any]) -> asyncio.Task[httpx.Response]:
    """Send a start (a :meth:`Speaker.start`) in the background."""
    return asyncio.ensure_future(client.post(**start))


async def hold_gate(
    client: httpx.AsyncClient, receiver: Receiver, speaker: Speaker = WORK_SAMPLE
) -> asyncio.Task[httpx.Response]:
    """Start a job whose early callback ``receiver`` holds: the account's gate stays held
    until ``receiver.release()``. Needs ``early_callbacks`` and a quick job."""
    receiver.hold()
    holder = later(client, speaker.start(callback=receiver.url))
    await receiver.next()
    return holder


def proof_of(job_id: str, account: str, at: str, secret: str = "aioserver-secret") -> str:
    """The proof of job ``job_id`` of ``account`` started (or, a prediction, created) ``at``."""
    message = f"{job_id}:{account}:{at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest().upper()


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


async def test_an_accounts_starts_wait_at_its_gate_others_do_not(
    receiver: Receiver, speaker: Speaker
) -> None:
    """While an account's (a token's) gate is held, its next start waits; another's passes."""
    async with speaker.serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver, speaker)
        queued = later(client, speaker.start())
        await server.until(lambda: server.start_queue_peak == 2)
        other = await client.post(**speaker.start("other"))
        assert speaker.state(other.json()) == "running"
        assert server.jobs_started == 2  # the holder's and the other account's
        receiver.release()
        assert speaker.state((await holder).json()) == "running"
        assert speaker.state((await queued).json()) == "running"
        assert server.jobs_started == 3


async def test_the_gate_lets_starts_through_first_come_first_served(
    receiver: Receiver, speaker: Speaker
) -> None:
    """Starts queued at one account's gate create their jobs in the order they came."""
    async with speaker.serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver, speaker)
        queued = []
        for _ in range(4):
            queued.append(later(client, speaker.start()))
            await server.until(lambda: server.start_queue_peak == 1 + len(queued))
        receiver.release()
        answered = [(await start).json()["id"] for start in [holder, *queued]]
    assert list(server.jobs) == answered


async def test_gate_time_is_spent_per_start_inside_the_gate(speaker: Speaker) -> None:
    """With gate_time, two starts of one account sent at once take twice that, one by one."""
    async with speaker.serve(gate_time=0.2) as (_, client):
        began = asyncio.get_running_loop().time()
        await asyncio.gather(*(client.post(**speaker.start()) for _ in range(2)))
        took = asyncio.get_running_loop().time() - began
    assert took >= 0.4


async def test_failed_jobs_say_so_without_a_proof() -> None:
    """With failure_rate 1 every job fails: "state":"failed" and an error, no proof."""
    async with serve(job_duration=QUICK, failure_rate=1.0) as (_, client):
        job = (await client.post("/start", json={"account": "acme", "wait": True})).json()
    assert job["state"] == "failed"
    assert job["error"]
    assert "proof" not in job


async def test_the_same_seed_fails_the_same_jobs() -> None:
    """failure_rate draws from the seed: two servers with one seed fail the same jobs."""
    runs = []
    for _ in range(2):
        async with serve(job_duration=QUICK, failure_rate=0.5, seed=7) as (_, client):
            body = {"account": "acme", "wait": True}
            runs.append(
                [(await client.post("/start", json=body)).json()["state"] for _ in range(12)]
            )
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"completed", "failed"}


async def test_an_early_callback_is_answered_before_start_answers(
    receiver: Receiver, speaker: Speaker
) -> None:
    """With early_callbacks, a job that ends within the window is called back (ended) before
    the start answers running, and only then."""
    async with speaker.serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        response = await client.post(**speaker.start(callback=receiver.url))
        assert [body["id"] for body in receiver.bodies] == [response.json()["id"]]
        assert speaker.state(receiver.bodies[0]) == "completed"
        assert speaker.state(response.json()) == "running"
        await server.idle()
    assert (server.callbacks_sent, server.early_callbacks_sent) == (1, 1)
    assert len(receiver.bodies) == 1


async def test_a_job_outlasting_the_early_window_is_called_back_after(
    receiver: Receiver, speaker: Speaker
) -> None:
    """With early_callbacks, a job still running when the window closes is answered running
    at once and called back later, as usual."""
    options = {"job_duration": QUICK, "early_callbacks": True, "early_window": 0}
    async with speaker.serve(**options) as (server, client):
        receiver.hold()  # an early callback would keep the start from answering
        response = await client.post(**speaker.start(callback=receiver.url))
        assert (await receiver.next())["id"] == response.json()["id"]
        receiver.release()
        await server.idle()
    assert (server.callbacks_sent, server.early_callbacks_sent) == (1, 0)


async def test_a_foreign_callback_comes_first_then_the_jobs_own(receiver: Receiver) -> None:
    """With foreign_early_callback, the last ended job (another account's) is POSTed to a new
    start's callback before /start answers; the start's own job is called back later."""
    async with serve(job_duration=QUICK, foreign_early_callback=True) as (server, client):
        other = (await client.post("/start", json={"account": "other", "wait": True})).json()
        response = await client.post("/start", json={"account": "acme", "callback": receiver.url})
        assert receiver.bodies[0] == other
        arrived = await receiver.next(), await receiver.next()
        await server.idle()
    assert arrived[1]["id"] == response.json()["id"]
    assert (server.callbacks_sent, server.foreign_callbacks_sent) == (2, 1)


async def test_a_foreign_callback_is_made_up_when_no_job_has_ended(
    receiver: Receiver, speaker: Speaker
) -> None:
    """Before any job has ended, the foreign callback is a completed job of another account,
    which the status read knows."""
    async with speaker.serve(job_duration=QUICK, foreign_early_callback=True) as (server, client):
        response = await client.post(**speaker.start(callback=receiver.url))
        foreign = receiver.bodies[0]
        status = (await client.get(speaker.status(foreign["id"]))).json()
        await server.idle()
    assert foreign["id"] != response.json()["id"]
    assert foreign == status
    assert speaker.state(foreign) == "completed"
    assert server.jobs_started == 1


async def test_out_of_order_senders_pick_pending_callbacks_at_random(
    receiver: Receiver, speaker: Speaker
) -> None:
    """With out_of_order and one sender, callbacks piled up behind a slow one go out in an
    order other than the jobs'; each exactly once."""
    async with speaker.serve(job_duration=QUICK, out_of_order=True, senders=1) as (server, client):
        receiver.hold()
        start = speaker.start(callback=receiver.url)
        started = [(await client.post(**start)).json()["id"] for _ in range(8)]
        await server.until(lambda: server.callbacks_queued == 7)
        receiver.release()
        await server.idle()
    delivered = [body["id"] for body in receiver.bodies]
    assert sorted(delivered) == sorted(started)
    assert delivered != started


async def test_a_dropped_callback_is_never_sent(receiver: Receiver, speaker: Speaker) -> None:
    """With callback_drop_rate 1, the job ends but its callback is not sent."""
    async with speaker.serve(job_duration=QUICK, callback_drop_rate=1.0) as (server, client):
        job_id = (await client.post(**speaker.start(callback=receiver.url))).json()["id"]
        await server.idle()
        status = (await client.get(speaker.status(job_id))).json()
    assert speaker.state(status) == "completed"
    assert receiver.bodies == []
    assert (server.callbacks_dropped, server.callbacks_sent) == (1, 0)


async def test_a_duplicated_callback_is_sent_twice(receiver: Receiver, speaker: Speaker) -> None:
    """With callback_duplicate_rate 1, the same job body is POSTed twice."""
    async with speaker.serve(job_duration=QUICK, callback_duplicate_rate=1.0) as (server, client):
        await client.post(**speaker.start(callback=receiver.url))
        await server.idle()
    assert len(receiver.bodies) == 2
    assert receiver.bodies[0] == receiver.bodies[1]
    assert server.callbacks_sent == 2


async def test_a_failing_status_answers_500_in_json(speaker: Speaker) -> None:
    """With status_error_rate 1, a status read answers 500 in the dialect's JSON error
    ({"error","detail"} or {"detail"}), and is counted."""
    async with speaker.serve(status_error_rate=1.0) as (server, client):
        job_id = (await client.post(**speaker.start())).json()["id"]
        response = await client.get(speaker.status(job_id))
    assert response.status_code == 500
    assert set(response.json()) == speaker.error_fields
    assert server.status_polls == 1


async def test_the_same_seed_fails_the_same_status_polls(speaker: Speaker) -> None:
    """status_error_rate draws from the seed: one seed, the same answers to the same polls."""
    runs = []
    for _ in range(2):
        async with speaker.serve(status_error_rate=0.5, seed=3) as (_, client):
            status = speaker.status((await client.post(**speaker.start())).json()["id"])
            runs.append([(await client.get(status)).status_code for _ in range(12)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


async def test_callbacks_are_retried_on_5xx(receiver: Receiver, speaker: Speaker) -> None:
    """A callback answered 5xx is sent again, up to callback_retries times."""
    receiver.statuses = [503, 500]
    async with speaker.serve(job_duration=QUICK, callback_retries=2) as (server, client):
        await client.post(**speaker.start(callback=receiver.url))
        await server.idle()
    assert len(receiver.bodies) == 3
    assert (server.callbacks_sent, server.callbacks_failed) == (1, 0)


async def test_a_callback_that_cannot_connect_is_given_up(speaker: Speaker) -> None:
    """A callback refused every time is tried 1 + callback_retries times, then given up."""
    with closed_port() as port:
        async with speaker.serve(job_duration=QUICK, callback_retries=1) as (server, client):
            callback = f"http://127.0.0.1:{port}/callback"
            await client.post(**speaker.start(callback=callback))
            await server.idle()
    assert (server.callbacks_sent, server.callbacks_failed) == (0, 1)


async def test_a_start_left_at_the_gate_starts_nothing_when_honoured(
    receiver: Receiver, speaker: Speaker
) -> None:
    """With honour_disconnects, a start whose client leaves while it waits at the gate starts
    no job."""
    options = {"job_duration": QUICK, "early_callbacks": True, "honour_disconnects": True}
    async with speaker.serve(**options) as (server, client):
        holder = await hold_gate(client, receiver, speaker)
        queued = later(client, speaker.start())
        await server.until(lambda: server.start_queue_peak == 2)
        queued.cancel()
        await server.until(lambda: server.starts_abandoned == 1)
        receiver.release()
        await holder
        assert server.jobs_started == 1


async def test_a_start_left_in_its_gate_time_starts_nothing_when_honoured(
    speaker: Speaker,
) -> None:
    """With honour_disconnects, a start whose client leaves during gate_time starts no job."""
    async with speaker.serve(gate_time=30, honour_disconnects=True) as (server, client):
        start = later(client, speaker.start())
        await server.until(lambda: server.start_queue_peak == 1)
        start.cancel()
        await server.until(lambda: server.starts_abandoned == 1)
    assert server.jobs_started == 0


async def test_a_start_left_at_the_gate_still_starts_its_job_by_default(
    receiver: Receiver,
) -> None:
    """Without honour_disconnects, a /start whose client left while it waited at the gate
    still starts its job, for nobody."""
    async with serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver)
        queued = later(client, WORK_SAMPLE.start(wait=True))
        await server.until(lambda: server.start_queue_peak == 2)
        queued.cancel()
        await asyncio.wait([queued])
        # A round trip on another connection: the server has read the hang-up by its end.
        async with httpx.AsyncClient(base_url=server.url) as another:
            await another.get("/status/123456789abcdef")
        receiver.release()
        await holder
        await server.until(lambda: server.jobs_started == 2)
    assert (server.starts_abandoned, server.starts_orphaned) == (0, 1)


async def test_start_queue_peak_counts_one_accounts_gate(
    receiver: Receiver, speaker: Speaker
) -> None:
    """start_queue_peak is the most starts of one account at its gate at once."""
    async with speaker.serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver, speaker)
        queued = [later(client, speaker.start()) for _ in range(2)]
        await server.until(lambda: server.start_queue_peak == 3)
        await asyncio.gather(*(client.post(**speaker.start(f"a{n}")) for n in range(3)))
        receiver.release()
        await asyncio.gather(holder, *queued)
    assert server.start_queue_peak == 3


async def test_stopping_ends_a_held_start_and_leaves_nothing_behind() -> None:
    """Leaving the block with a wait:true /start held ends it; the client sees the hang-up."""
    async with httpx.AsyncClient(timeout=WAIT) as client:
        async with run_aioserver(AioServerConfig(job_duration=30)) as server:
            body = {"account": "acme", "wait": True}
            held = asyncio.ensure_future(client.post(f"{server.url}/start", json=body))
            await server.until(lambda: server.jobs_started == 1)
        with pytest.raises(httpx.TransportError):
            await held


async def test_stopping_ends_a_start_whose_client_left(
    receiver: Receiver, speaker: Speaker
) -> None:
    """A start still handled for a client that left is ended when the server stops, before
    its callbacks' session closes."""
    async with speaker.serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver, speaker)
        holder.cancel()
        await asyncio.wait([holder])
    assert server.starts_in_progress == 0
    assert server.callbacks_sent == 0  # its early callback was never answered


@pytest.mark.parametrize(
    "option",
    [
        {"failure_rate": 1.5},
        {"job_duration": -1},
        {"senders": 0},
        {"callback_retries": -1},
        {"dialect": "graphql"},
    ],
)
def test_an_impossible_option_is_refused_by_name(option: dict[str, Any]) -> None:
    """An option out of its range raises ValueError naming it."""
    with pytest.raises(ValueError, match=next(iter(option))):
        AioServerConfig(**option)
