"""The second job server's options, each in either dialect where it means the same:
account gates, failures, early and foreign callbacks, callback order, drops and
duplicates, a flaky status, callback retries, disconnects and stopping."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import closed_port
from tests.upstreams.aioserver import AioServerConfig, run_aioserver
from tests.upstreams.conftest import (
    QUICK,
    WAIT,
    WORK_SAMPLE,
    Receiver,
    Speaker,
    hold_gate,
    later,
    serve,
)


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
