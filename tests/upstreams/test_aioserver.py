"""The second job server: the protocol's basics, then each option."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
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


@contextlib.asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[tuple[AioServer, httpx.AsyncClient]]:
    async with (
        run_aioserver(AioServerConfig(**options)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        yield server, client


def later(client: httpx.AsyncClient, body: dict[str, Any]) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(client.post("/start", json=body))


async def hold_gate(
    client: httpx.AsyncClient, receiver: Receiver, account: str = "acme"
) -> asyncio.Task[httpx.Response]:
    """Start a job whose early callback ``receiver`` holds: the account's gate stays held
    until ``receiver.release()``. Needs ``early_callbacks`` and a quick job."""
    receiver.hold()
    holder = later(client, {"account": account, "callback": receiver.url})
    await receiver.next()
    return holder


def proof_of(job: dict[str, Any], account: str, secret: str = "aioserver-secret") -> str:
    message = f"{job['id']}:{account}:{job['startedAt']}".encode()
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
    assert job["proof"] == proof_of(job, "acme")


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
    assert called_back["proof"] == proof_of(called_back, "acme")
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


async def test_job_ids_are_13_to_16_lowercase_hex_without_leading_zeros() -> None:
    """Job ids are distinct hex of 64-bit numbers, 13 to 16 digits, no leading zero."""
    async with serve(job_duration=QUICK) as (_, client):
        ids = [
            (await client.post("/start", json={"account": "acme"})).json()["id"] for _ in range(50)
        ]
    assert all(JOB_ID.fullmatch(job_id) for job_id in ids)
    assert len(set(ids)) == 50


async def test_an_accounts_starts_wait_at_its_gate_others_do_not(receiver: Receiver) -> None:
    """While an account's gate is held, its next /start waits; another account's passes."""
    async with serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver)
        queued = later(client, {"account": "acme"})
        await server.until(lambda: server.start_queue_peak == 2)
        other = await client.post("/start", json={"account": "other"})
        assert other.json()["state"] == "running"
        assert server.jobs_started == 2  # the holder's and the other account's
        receiver.release()
        assert (await holder).json()["state"] == "running"
        assert (await queued).json()["state"] == "running"
        assert server.jobs_started == 3


async def test_the_gate_lets_starts_through_first_come_first_served(receiver: Receiver) -> None:
    """Starts queued at one account's gate create their jobs in the order they came."""
    async with serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver)
        queued = []
        for _ in range(4):
            queued.append(later(client, {"account": "acme"}))
            await server.until(lambda: server.start_queue_peak == 1 + len(queued))
        receiver.release()
        answered = [(await start).json()["id"] for start in [holder, *queued]]
    assert list(server.jobs) == answered


async def test_gate_time_is_spent_per_start_inside_the_gate() -> None:
    """With gate_time, two starts of one account sent at once take twice that, one by one."""
    async with serve(gate_time=0.2) as (_, client):
        began = asyncio.get_running_loop().time()
        await asyncio.gather(*(client.post("/start", json={"account": "acme"}) for _ in range(2)))
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


async def test_an_early_callback_is_answered_before_start_answers(receiver: Receiver) -> None:
    """With early_callbacks, a job that ends within the window is called back before /start
    answers running, and only then."""
    async with serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        response = await client.post("/start", json={"account": "acme", "callback": receiver.url})
        assert [body["id"] for body in receiver.bodies] == [response.json()["id"]]
        assert response.json() == {"state": "running", "id": response.json()["id"]}
        await server.idle()
    assert (server.callbacks_sent, server.early_callbacks_sent) == (1, 1)
    assert len(receiver.bodies) == 1


async def test_a_job_outlasting_the_early_window_is_called_back_after(receiver: Receiver) -> None:
    """With early_callbacks, a job still running when the window closes is answered running
    at once and called back later, as usual."""
    async with serve(job_duration=QUICK, early_callbacks=True, early_window=0) as (server, client):
        receiver.hold()  # an early callback would keep /start from answering
        response = await client.post("/start", json={"account": "acme", "callback": receiver.url})
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


async def test_a_foreign_callback_is_made_up_when_no_job_has_ended(receiver: Receiver) -> None:
    """Before any job has ended, the foreign callback is a completed job of another account,
    which /status knows."""
    async with serve(job_duration=QUICK, foreign_early_callback=True) as (server, client):
        response = await client.post("/start", json={"account": "acme", "callback": receiver.url})
        foreign = receiver.bodies[0]
        status = (await client.get(f"/status/{foreign['id']}")).json()
        await server.idle()
    assert foreign["id"] != response.json()["id"]
    assert foreign == status
    assert foreign["state"] == "completed"
    assert server.jobs_started == 1


async def test_out_of_order_senders_pick_pending_callbacks_at_random(receiver: Receiver) -> None:
    """With out_of_order and one sender, callbacks piled up behind a slow one go out in an
    order other than the jobs'; each exactly once."""
    async with serve(job_duration=QUICK, out_of_order=True, senders=1) as (server, client):
        receiver.hold()
        started = [
            (
                await client.post("/start", json={"account": "acme", "callback": receiver.url})
            ).json()["id"]
            for _ in range(8)
        ]
        await server.until(lambda: server.callbacks_queued == 7)
        receiver.release()
        await server.idle()
    delivered = [body["id"] for body in receiver.bodies]
    assert sorted(delivered) == sorted(started)
    assert delivered != started


async def test_a_dropped_callback_is_never_sent(receiver: Receiver) -> None:
    """With callback_drop_rate 1, the job ends but its callback is not sent."""
    async with serve(job_duration=QUICK, callback_drop_rate=1.0) as (server, client):
        job_id = (
            await client.post("/start", json={"account": "acme", "callback": receiver.url})
        ).json()["id"]
        await server.idle()
        status = (await client.get(f"/status/{job_id}")).json()
    assert status["state"] == "completed"
    assert receiver.bodies == []
    assert (server.callbacks_dropped, server.callbacks_sent) == (1, 0)


async def test_a_duplicated_callback_is_sent_twice(receiver: Receiver) -> None:
    """With callback_duplicate_rate 1, the same job body is POSTed twice."""
    async with serve(job_duration=QUICK, callback_duplicate_rate=1.0) as (server, client):
        await client.post("/start", json={"account": "acme", "callback": receiver.url})
        await server.idle()
    assert len(receiver.bodies) == 2
    assert receiver.bodies[0] == receiver.bodies[1]
    assert server.callbacks_sent == 2


async def test_a_failing_status_answers_500_in_json() -> None:
    """With status_error_rate 1, /status answers 500 {"error","detail"}, and is counted."""
    async with serve(status_error_rate=1.0) as (server, client):
        job_id = (await client.post("/start", json={"account": "acme"})).json()["id"]
        response = await client.get(f"/status/{job_id}")
    assert response.status_code == 500
    assert set(response.json()) == {"error", "detail"}
    assert server.status_polls == 1


async def test_the_same_seed_fails_the_same_status_polls() -> None:
    """status_error_rate draws from the seed: one seed, the same answers to the same polls."""
    runs = []
    for _ in range(2):
        async with serve(status_error_rate=0.5, seed=3) as (_, client):
            job_id = (await client.post("/start", json={"account": "acme"})).json()["id"]
            runs.append([(await client.get(f"/status/{job_id}")).status_code for _ in range(12)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


async def test_callbacks_are_retried_on_5xx(receiver: Receiver) -> None:
    """A callback answered 5xx is sent again, up to callback_retries times."""
    receiver.statuses = [503, 500]
    async with serve(job_duration=QUICK, callback_retries=2) as (server, client):
        await client.post("/start", json={"account": "acme", "callback": receiver.url})
        await server.idle()
    assert len(receiver.bodies) == 3
    assert (server.callbacks_sent, server.callbacks_failed) == (1, 0)


async def test_a_callback_that_cannot_connect_is_given_up() -> None:
    """A callback refused every time is tried 1 + callback_retries times, then given up."""
    with closed_port() as port:
        async with serve(job_duration=QUICK, callback_retries=1) as (server, client):
            callback = f"http://127.0.0.1:{port}/callback"
            await client.post("/start", json={"account": "acme", "callback": callback})
            await server.idle()
    assert (server.callbacks_sent, server.callbacks_failed) == (0, 1)


async def test_a_start_left_at_the_gate_starts_nothing_when_honoured(receiver: Receiver) -> None:
    """With honour_disconnects, a /start whose client leaves while it waits at the gate starts
    no job."""
    options = {"job_duration": QUICK, "early_callbacks": True, "honour_disconnects": True}
    async with serve(**options) as (server, client):
        holder = await hold_gate(client, receiver)
        queued = later(client, {"account": "acme", "wait": True})
        await server.until(lambda: server.start_queue_peak == 2)
        queued.cancel()
        await server.until(lambda: server.starts_abandoned == 1)
        receiver.release()
        await holder
        assert server.jobs_started == 1


async def test_a_start_left_in_its_gate_time_starts_nothing_when_honoured() -> None:
    """With honour_disconnects, a /start whose client leaves during gate_time starts no job."""
    async with serve(gate_time=30, honour_disconnects=True) as (server, client):
        start = later(client, {"account": "acme"})
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
        queued = later(client, {"account": "acme", "wait": True})
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


async def test_start_queue_peak_counts_one_accounts_gate(receiver: Receiver) -> None:
    """start_queue_peak is the most /starts of one account at its gate at once."""
    async with serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver)
        queued = [later(client, {"account": "acme"}) for _ in range(2)]
        await server.until(lambda: server.start_queue_peak == 3)
        await asyncio.gather(*(client.post("/start", json={"account": f"a{n}"}) for n in range(3)))
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


async def test_stopping_ends_a_start_whose_client_left(receiver: Receiver) -> None:
    """A /start still handled for a client that left is ended when the server stops, before
    its callbacks' session closes."""
    async with serve(job_duration=QUICK, early_callbacks=True) as (server, client):
        holder = await hold_gate(client, receiver)
        holder.cancel()
        await asyncio.wait([holder])
    assert server.starts_in_progress == 0
    assert server.callbacks_sent == 0  # its early callback was never answered


@pytest.mark.parametrize(
    "option",
    [{"failure_rate": 1.5}, {"job_duration": -1}, {"senders": 0}, {"callback_retries": -1}],
)
def test_an_impossible_option_is_refused_by_name(option: dict[str, Any]) -> None:
    """An option out of its range raises ValueError naming it."""
    with pytest.raises(ValueError, match=next(iter(option))):
        AioServerConfig(**option)
