"""The waiter registry: tokens, holding, resolving, failing and draining."""

from __future__ import annotations

import asyncio
import base64
import gc
import re

import orjson
import pytest

from proxy.answers import json_answer
from proxy.errors import AtCapacity, JobTimeout, ShuttingDown
from proxy.waiting.deliveries import AnsweredBy, Delivery
from proxy.waiting.tokens import (
    TOKEN_BYTES,
    new_replica_id,
    replica_of,
    token_is_genuine,
    token_mac,
)
from proxy.waiting.waiters import MAX_EARLY_RESULTS, Result, Waiter, WaiterRegistry

JOB = {"id": "abc", "state": "completed"}
BODY = orjson.dumps(JOB)
RESULT = Result("abc", "completed", BODY)
TIMEOUT = 5.0


class AnsweredWithError(Exception):
    """A held request answered with an error: its status and error word."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(status, error)
        self.status, self.error = status, error


def _random_part(token: str) -> bytes:
    random_part = token.split(".")[1]
    return base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))


class HeldRequest:
    """A task holding a waiter until it is answered, as a held client request does; its
    outcome is the answer's job, or the answer's error raised as AnsweredWithError."""

    def __init__(self, registry: WaiterRegistry) -> None:
        self.registry = registry
        self.entered = asyncio.Event()
        self.waiter: Waiter | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> dict[str, object]:
        with self.registry.hold() as waiter:
            waiter.future = asyncio.get_running_loop().create_future()
            waiter.bind(str(JOB["id"]))  # as /start names the job
            self.waiter = waiter
            self.entered.set()
            status, _, body = await waiter.future
            content: dict[str, object] = orjson.loads(body)
            if status != 200:
                raise AnsweredWithError(status, str(content["error"]))
            return content

    async def started(self) -> Waiter:
        async with asyncio.timeout(TIMEOUT):
            await self.entered.wait()
        assert self.waiter is not None
        return self.waiter

    async def outcome(self) -> dict[str, object]:
        async with asyncio.timeout(TIMEOUT):
            return await self.task


async def test_tokens_are_unique_and_carry_128_random_bits() -> None:
    """Each token is `<replica>.<random>.<mac>` with at least 128 random bits, never
    repeated, and genuine under the registry's key."""
    registry = WaiterRegistry("r1", max_pending=10)
    tokens = set()
    for _ in range(1_000):
        with registry.hold() as waiter:
            tokens.add(waiter.token)
    assert len(tokens) == 1_000
    for token in tokens:
        assert re.fullmatch(r"r1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}", token)
        assert len(_random_part(token)) >= TOKEN_BYTES >= 16
        assert token_is_genuine(token, registry.token_key)


def test_a_token_changed_in_any_part_or_signed_with_another_key_is_not_genuine() -> None:
    """Changing the replica, the random part or the MAC, or another key, fails the check."""
    key = b"k" * 32
    stem = "a.abcdefghijklmnopqrstuv"
    token = f"{stem}.{token_mac(key, stem)}"
    assert token_is_genuine(token, key)
    assert not token_is_genuine(token, b"x" * 32)
    assert not token_is_genuine("b" + token[1:], key)
    assert not token_is_genuine(token.replace("abc", "abd"), key)
    assert not token_is_genuine(token[:-1] + ("A" if token[-1] != "A" else "B"), key)
    assert not token_is_genuine(stem, key)
    assert not token_is_genuine("", key)


async def test_replica_of_names_the_replica_of_a_token() -> None:
    """replica_of returns the part before the dot, or "" for a token without one."""
    registry = WaiterRegistry("a1b2c3d4", max_pending=1)
    with registry.hold() as waiter:
        assert replica_of(waiter.token) == "a1b2c3d4"
    assert replica_of("nodot") == ""
    assert replica_of(".x") == ""
    assert replica_of("r.x.y") == "r"


def test_replica_ids_are_random_hex() -> None:
    """New replica ids are hex strings that differ from one another."""
    ids = {new_replica_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{8}", replica_id) for replica_id in ids)


async def test_hold_removes_the_waiter_on_normal_exit() -> None:
    """A waiter leaves the registry when its block ends normally."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        assert registry.get(waiter.token) is waiter
        assert len(registry) == 1
    assert registry.get(waiter.token) is None
    assert len(registry) == 0
    assert not waiter.settled


async def test_hold_removes_the_waiter_on_exception() -> None:
    """A waiter leaves the registry when its block raises."""
    registry = WaiterRegistry("r", max_pending=10)
    with pytest.raises(RuntimeError), registry.hold() as waiter:
        raise RuntimeError("boom")
    assert registry.get(waiter.token) is None
    assert len(registry) == 0


async def test_hold_removes_the_waiter_on_cancellation() -> None:
    """A held request that is cancelled while waiting leaves no waiter behind."""
    registry = WaiterRegistry("r", max_pending=10)
    held = HeldRequest(registry)
    waiter = await held.started()
    held.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held.outcome()
    assert registry.get(waiter.token) is None
    assert len(registry) == 0


async def test_unread_failure_is_not_reported_as_never_retrieved() -> None:
    """A waiter failed after its holder stopped reading logs no 'exception never retrieved'."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reports.append(context))
    try:
        registry = WaiterRegistry("r", max_pending=10)
        with registry.hold() as waiter:
            waiter.future = loop.create_future()
            await registry.fail_all(lambda job_id: ShuttingDown(job_id=job_id))
        assert waiter.settled
        assert waiter.future.done()
        del waiter
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reports == []


async def test_at_capacity_refuses_new_waiters() -> None:
    """Beyond max_pending waiters, hold raises AtCapacity and registers nothing."""
    registry = WaiterRegistry("r", max_pending=2)
    with registry.hold(), registry.hold():
        with pytest.raises(AtCapacity), registry.hold():
            pass  # pragma: no cover
        assert len(registry) == 2
    with registry.hold():
        assert len(registry) == 1
    assert len(registry) == 0


async def test_resolve_delivers_once() -> None:
    """resolve answers the held request once; a second result for it is a duplicate."""
    registry = WaiterRegistry("r", max_pending=10)
    held = HeldRequest(registry)
    waiter = await held.started()
    assert registry.resolve(waiter.token, RESULT) is Delivery.OK
    assert registry.resolve(waiter.token, Result("abc", "failed", b"{}")) is Delivery.DUPLICATE
    assert await held.outcome() == JOB
    assert len(registry) == 0


async def test_a_result_after_the_client_left_is_late() -> None:
    """A result for a token whose waiter went without an answer (its client left) is
    late: neither unknown nor a duplicate."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        waiter.bind("abc")
    assert registry.resolve(waiter.token, RESULT) is Delivery.LATE


async def test_a_result_after_the_deadline_is_late() -> None:
    """A result for a waiter answered 504 is late, whether it is still held or gone."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        waiter.bind("abc")
        assert waiter.fail(JobTimeout("too slow"), AnsweredBy.DEADLINE)
        assert registry.resolve(waiter.token, RESULT) is Delivery.LATE
    assert registry.resolve(waiter.token, RESULT) is Delivery.LATE


async def test_a_result_after_its_job_was_answered_is_a_duplicate() -> None:
    """A second result for a waiter its job answered (by callback or poll) is a
    duplicate, held or gone."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        waiter.bind("abc")
        assert waiter.settle(json_answer(b"{}"), AnsweredBy.POLL, "completed")
        assert registry.resolve(waiter.token, RESULT) is Delivery.DUPLICATE
    assert registry.resolve(waiter.token, RESULT) is Delivery.DUPLICATE
    assert registry.answered_by_poll(waiter.token)


async def test_resolve_of_a_never_issued_token_is_unknown() -> None:
    """A result for a token the registry never issued is unknown."""
    registry = WaiterRegistry("r", max_pending=10)
    assert registry.resolve("r.never-issued", RESULT) is Delivery.UNKNOWN
    assert registry.resolve("", RESULT) is Delivery.UNKNOWN


async def test_fail_all_fails_only_pending_waiters() -> None:
    """fail_all answers every unanswered waiter with the error and counts them."""
    registry = WaiterRegistry("r", max_pending=10)
    answered, pending = HeldRequest(registry), HeldRequest(registry)
    registry.resolve((await answered.started()).token, RESULT)
    await pending.started()

    def error(job_id: str | None) -> ShuttingDown:
        return ShuttingDown("stop", job_id=job_id)

    assert await registry.fail_all(error) == 1
    assert await answered.outcome() == JOB
    with pytest.raises(AnsweredWithError) as raised:
        await pending.outcome()
    assert (raised.value.status, raised.value.error) == (503, "shutting_down")
    assert len(registry) == 0
    assert await registry.fail_all(error) == 0


async def test_drain_waits_for_held_waiters_to_finish() -> None:
    """drain returns as soon as the held waiters are answered, and counts them as answered."""
    registry = WaiterRegistry("r", max_pending=10)
    held = HeldRequest(registry)
    waiter = await held.started()
    drain = asyncio.ensure_future(registry.drain(timeout=TIMEOUT))
    await asyncio.sleep(0)  # let drain start waiting
    assert not drain.done()
    registry.resolve(waiter.token, RESULT)
    async with asyncio.timeout(TIMEOUT):
        assert await drain == (1, 0)
    assert await held.outcome() == JOB
    assert len(registry) == 0


async def test_drain_fails_the_rest_after_the_timeout() -> None:
    """Waiters still pending when the drain timeout ends are failed with ShuttingDown."""
    registry = WaiterRegistry("r", max_pending=10)
    held = HeldRequest(registry)
    await held.started()
    async with asyncio.timeout(TIMEOUT):
        assert await registry.drain(timeout=0.05) == (0, 1)
    with pytest.raises(AnsweredWithError) as raised:
        await held.outcome()
    assert raised.value.error == "shutting_down"
    assert len(registry) == 0


async def test_drain_refuses_new_waiters() -> None:
    """Once draining, hold raises ShuttingDown."""
    registry = WaiterRegistry("r", max_pending=10)
    async with asyncio.timeout(TIMEOUT):
        assert await registry.drain(timeout=1.0) == (0, 0)
    with pytest.raises(ShuttingDown), registry.hold():
        pass  # pragma: no cover
    assert len(registry) == 0


async def test_drain_refuses_new_waiters_while_waiting() -> None:
    """A request arriving during the drain is refused while the held one still finishes."""
    registry = WaiterRegistry("r", max_pending=10)
    held = HeldRequest(registry)
    waiter = await held.started()
    drain = asyncio.ensure_future(registry.drain(timeout=TIMEOUT))
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown), registry.hold():
        pass  # pragma: no cover
    registry.resolve(waiter.token, RESULT)
    async with asyncio.timeout(TIMEOUT):
        assert await drain == (1, 0)
    assert await held.outcome() == JOB


async def test_pending_count_returns_to_zero_after_mixed_outcomes() -> None:
    """After answered, failed, cancelled and raising holders, no waiter is left."""
    registry = WaiterRegistry("r", max_pending=100)
    answered = [HeldRequest(registry) for _ in range(5)]
    cancelled = [HeldRequest(registry) for _ in range(5)]
    failed = [HeldRequest(registry) for _ in range(5)]
    for held in answered + cancelled + failed:
        await held.started()
    assert len(registry) == 15
    for held in answered:
        registry.resolve((await held.started()).token, RESULT)
    for held in cancelled:
        held.task.cancel()
    await asyncio.gather(*(held.task for held in answered + cancelled), return_exceptions=True)
    assert len(registry) == 5
    assert await registry.fail_all(lambda job_id: ShuttingDown(job_id=job_id)) == 5
    outcomes = await asyncio.gather(*(held.task for held in failed), return_exceptions=True)
    assert all(
        isinstance(outcome, AnsweredWithError) and outcome.error == "shutting_down"
        for outcome in outcomes
    )
    assert len(registry) == 0
    assert list(registry) == []


async def test_a_result_before_the_job_is_named_is_kept_then_judged() -> None:
    """A result for a waiter whose job id is not known yet is kept at once (never waiting
    for the id): taken when the id matches, dropped and counted when it does not."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        assert (
            await registry.deliver(waiter.token, Result("other", "completed", b"{}"))
            is Delivery.EARLY
        )
        assert await registry.deliver(waiter.token, RESULT) is Delivery.EARLY
        assert not waiter.settled
        assert waiter.bind("abc") == 1
        assert waiter.answered_by is AnsweredBy.CALLBACK
        assert waiter.answer is not None
        assert waiter.answer[2] == BODY


async def test_only_a_few_early_results_are_kept() -> None:
    """Beyond MAX_EARLY_RESULTS, results before the job is named are CROWDED, not kept."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        for _ in range(MAX_EARLY_RESULTS):
            assert registry.resolve(waiter.token, RESULT) is Delivery.EARLY
        assert registry.resolve(waiter.token, RESULT) is Delivery.CROWDED
        assert waiter.early is not None
        assert len(waiter.early) == MAX_EARLY_RESULTS


async def test_results_kept_for_a_waiter_that_leaves_are_for_nobody() -> None:
    """Early results of a waiter that goes away before its job is named are let go."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        assert await registry.deliver(waiter.token, RESULT) is Delivery.EARLY
    assert waiter.early is None
    assert registry.resolve(waiter.token, RESULT) is Delivery.LATE  # nobody got the job


async def test_a_result_of_another_job_is_a_mismatch() -> None:
    """Once the job is named, a result carrying another id is refused and changes nothing."""
    registry = WaiterRegistry("r", max_pending=10)
    with registry.hold() as waiter:
        waiter.bind("abc")
        assert registry.resolve(waiter.token, Result("xyz", "completed", b"{}")) is (
            Delivery.MISMATCH
        )
        assert not waiter.settled


async def test_held_jobs_past_their_deadline_are_answered_504_in_order() -> None:
    """Every held job still unanswered at its deadline gets a 504 job_timeout answer, one
    whose start is still under way included (its holder sends it); one answered before
    is left alone."""
    registry = WaiterRegistry("r", max_pending=10, job_deadline=0.05)
    answered, late = HeldRequest(registry), HeldRequest(registry)
    await answered.started()
    registry.resolve((await answered.started()).token, RESULT)
    await late.started()
    with registry.hold() as starting:  # no job id yet: its start is under way
        starting.future = asyncio.get_running_loop().create_future()
        with pytest.raises(AnsweredWithError) as raised:
            await late.outcome()
        await asyncio.wait_for(starting.future, 1)
        assert starting.outcome == "job_timeout"
        assert starting.answer is not None
        assert b"before the job server accepted the job" in starting.answer[2]
    assert await answered.outcome() == JOB
    assert (raised.value.status, raised.value.error) == (504, "job_timeout")
    assert len(registry) == 0
