"""Idempotency-Key retries within one process, against the in-process fake job server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.responses import JSONResponse, Response

from proxy.holding.keyed import LocalResults, fingerprint
from tests.conftest import eventually
from tests.proxy.conftest import (
    FakeJobServer,
    ProxyFactory,
    ProxyUnderTest,
    post_and_leave,
    sample,
)

BODY = {"account": "acme", "wait": True}


def post(proxy: ProxyUnderTest, key: str, body: dict[str, Any] = BODY) -> asyncio.Future[Any]:
    return asyncio.ensure_future(
        proxy.client.post("/proxy", json=body, headers={"Idempotency-Key": key})
    )


async def test_retry_while_running_follows_the_same_job(proxy: ProxyUnderTest) -> None:
    """A retry with the same key while the job runs gets that job; upstream starts one."""
    first = post(proxy, "k1")
    job_id = await proxy.upstream.next_job()
    retry = post(proxy, "k1")
    job = proxy.upstream.finish(job_id)
    await proxy.upstream.callback(job_id)
    answers = await asyncio.gather(first, retry)
    assert [a.json() for a in answers] == [job, job]
    assert len(proxy.upstream.starts) == 1


async def test_retry_after_finish_gets_the_stored_result(proxy: ProxyUnderTest) -> None:
    """A retry after the job finished is answered at once from the stored result."""
    first = post(proxy, "k2")
    job_id = await proxy.upstream.next_job()
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    await first
    retry = await post(proxy, "k2")
    assert retry.json()["id"] == job_id
    assert len(proxy.upstream.starts) == 1


async def test_same_key_other_body_is_422(proxy: ProxyUnderTest) -> None:
    """Reusing a key with a different body is refused with 422 JSON."""
    first = post(proxy, "k3")
    job_id = await proxy.upstream.next_job()
    conflict = await post(proxy, "k3", {"account": "acme", "wait": True, "callback": "h.test/x"})
    assert conflict.status_code == 422
    assert conflict.json()["error"] == "idempotency_conflict"
    await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    assert (await first).status_code == 200


async def test_result_of_an_abandoned_request_is_kept_for_the_retry(
    proxy: ProxyUnderTest,
) -> None:
    """The first client gives up once its job is started: the job goes on, its callback is
    taken and its result kept, and the retry gets it."""
    leave = asyncio.Event()
    first = asyncio.ensure_future(
        post_and_leave(proxy.served, "/proxy", BODY, leave, {"Idempotency-Key": "k4"})
    )
    job_id = await proxy.upstream.next_job()
    leave.set()
    assert await first == []  # nothing was answered: the client had gone
    assert len(proxy.services.waiters) == 1  # the job goes on
    delivered = await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    retry = await post(proxy, "k4")
    assert delivered.json()["status"] == "ok"
    assert retry.json()["id"] == job_id
    assert len(proxy.upstream.starts) == 1


async def test_refused_start_releases_the_key(proxy_factory: ProxyFactory) -> None:
    """When the job server refused the job, a retry with the same key really starts one."""
    upstream = FakeJobServer()
    refusals = iter([True])

    async def refuse_once(body: dict[str, Any]) -> Response | None:
        if next(refusals, False):
            return JSONResponse({"error": "bad_request", "detail": "try again"}, 400)
        return None

    upstream.on_start = refuse_once
    async with proxy_factory(upstream) as proxy:
        failed = await post(proxy, "k5")
        retry = post(proxy, "k5")
        job_id = await upstream.next_job()
        await upstream.callback(job_id, upstream.finish(job_id))
        assert failed.status_code == 400
        assert (await retry).json()["id"] == job_id


async def test_ambiguous_start_failure_keeps_the_key(proxy_factory: ProxyFactory) -> None:
    """A 500 from /start may have started a job: a retry never starts a second one."""
    upstream = FakeJobServer()

    async def broken(body: dict[str, Any]) -> Response:
        return Response(b"broken", 500)

    upstream.on_start = broken
    async with proxy_factory(upstream, job_deadline=0.3) as proxy:
        failed = await post(proxy, "k8")
        retry = await post(proxy, "k8")
    assert failed.status_code == 502
    assert retry.status_code == 504
    assert len(upstream.starts) == 1


async def test_wait_false_retry_gets_the_same_running_answer(proxy: ProxyUnderTest) -> None:
    """With wait:false, a retry with the same key gets the first answer, not a new job."""
    body = {"account": "acme", "wait": False}
    first = await post(proxy, "k6", body)
    retry = await post(proxy, "k6", body)
    assert first.json()["state"] == "running"
    assert retry.json() == first.json()
    assert len(proxy.upstream.starts) == 1


@pytest.mark.parametrize("key", [b"", b"k" * 256, "clé".encode(), b"tab\there"])
async def test_malformed_key_is_400(proxy: ProxyUnderTest, key: bytes) -> None:
    """An empty, overlong, non-ASCII or unprintable Idempotency-Key is a 400."""
    response = await proxy.client.post("/proxy", json=BODY, headers={b"Idempotency-Key": key})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


async def test_the_same_key_of_another_account_is_another_key(proxy: ProxyUnderTest) -> None:
    """Keys are scoped per account: another tenant's key neither conflicts nor follows."""
    first = post(proxy, "shared-key")
    first_job = await proxy.upstream.next_job()
    other = post(proxy, "shared-key", {"account": "other", "wait": True})
    other_job = await proxy.upstream.next_job()
    for job_id in (first_job, other_job):
        await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    answers = await asyncio.gather(first, other)
    assert [answer.json()["id"] for answer in answers] == [first_job, other_job]


async def test_local_results_expire_on_their_own() -> None:
    """Claims and results are forgotten after their time to live, with no request coming."""
    results = LocalResults(ttl=0.05, max_keys=10)
    await results.claim("k", fingerprint(BODY), "t", None)
    await results.put_result("t", {"id": "x"})
    assert len(results) == 2
    await eventually(lambda: len(results) == 0)
    assert await results.get_result("t") is None
    assert (await results.claim("k", fingerprint({"other": 1}), "u", None)).owner
    results.close()


async def test_local_results_are_bounded_in_number() -> None:
    """Past max_keys, the oldest claims and results leave first."""
    results = LocalResults(ttl=300, max_keys=3)
    for n in range(5):
        await results.claim(f"k{n}", fingerprint(BODY), f"t{n}", None)
        await results.put_result(f"t{n}", {"id": str(n)})
    assert len(results) == 6
    assert results.evicted == 4
    assert await results.get_result("t0") is None
    assert await results.get_result("t4") == {"id": "4"}
    assert not (await results.claim("k4", fingerprint(BODY), "new", None)).owner
    assert (await results.claim("k0", fingerprint(BODY), "new", None)).owner
    results.close()


async def test_keyed_entries_are_a_metric(proxy: ProxyUnderTest) -> None:
    """jobproxy_idempotency_entries counts the claims and results held in the process."""
    await post(proxy, "k10", {"account": "acme", "wait": False})
    metrics = (await proxy.client.get("/metrics")).text
    assert sample(metrics, "jobproxy_idempotency_entries") == 2


async def test_terminal_start_answer_is_returned_at_once(proxy_factory: ProxyFactory) -> None:
    """A job server that answers /start with a finished job is passed through directly."""
    upstream = FakeJobServer()

    async def finished(body: dict[str, Any]) -> Response:
        return JSONResponse({"id": "abcdef0123456", "state": "completed", "proof": "C" * 40})

    upstream.on_start = finished
    async with proxy_factory(upstream) as proxy:
        response = await post(proxy, "k7")
    assert response.json()["state"] == "completed"


async def test_a_request_without_a_key_does_no_idempotency_work(
    proxy: ProxyUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither a plain held request nor its callback touches the Idempotency-Key store."""
    results = proxy.services.keyed.results
    calls: list[str] = []
    for name in ("claim", "bind_job", "release", "job_id_for", "put_result", "get_result"):
        original = getattr(results, name)

        def counting(*args: object, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(results, name, counting)
    request, job_id = await proxy.held_job()
    delivered = await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
    duplicate = await proxy.upstream.callback(job_id)
    answer = await request
    assert (delivered.status_code, duplicate.status_code, answer.status_code) == (200, 404, 200)
    assert calls == []


async def test_a_client_gone_before_its_start_was_sent_releases_the_key(
    proxy_factory: ProxyFactory,
) -> None:
    """A keyed client that leaves while its start still waits in the proxy started no job:
    its retry starts one at once rather than waiting for a job that does not exist."""
    upstream = FakeJobServer()
    lane_free = asyncio.Event()

    async def hold_the_first(body: dict[str, Any]) -> Response | None:
        if len(upstream.starts) == 1:
            await lane_free.wait()
        return None

    upstream.on_start = hold_the_first
    async with proxy_factory(upstream, upstream_max_per_account=1) as proxy:
        plain = asyncio.ensure_future(proxy.client.post("/proxy", json=BODY))
        await eventually(lambda: len(upstream.starts) == 1)
        gone = post(proxy, "k9")
        await eventually(lambda: len(proxy.services.waiters) == 2)
        gone.cancel()
        await eventually(lambda: len(proxy.services.waiters) == 1)
        retry = post(proxy, "k9")
        lane_free.set()
        async with asyncio.timeout(5):
            job_ids = [await upstream.next_job(), await upstream.next_job()]
        for job_id in job_ids:
            await upstream.callback(job_id, upstream.finish(job_id))
        answers = await asyncio.gather(plain, retry)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert {answer.json()["id"] for answer in answers} == set(job_ids)
    assert len(upstream.starts) == 2


async def test_a_retry_of_a_tracked_request_gets_the_same_ref(proxy: ProxyUnderTest) -> None:
    """respond-async with a key: the retry with the same key is given the same ref (and
    the same job), never a second job."""
    headers = {"Idempotency-Key": "k11", "prefer": "respond-async"}
    first = asyncio.ensure_future(proxy.client.post("/proxy", json=BODY, headers=headers))
    job_id = await proxy.upstream.next_job()
    accepted = await first
    retry = await proxy.client.post("/proxy", json=BODY, headers=headers)
    assert (accepted.status_code, retry.status_code) == (202, 202)
    assert retry.headers["location"] == accepted.headers["location"]
    assert retry.json() == accepted.json()
    job = proxy.upstream.finish(job_id)
    await proxy.upstream.callback(job_id)
    waited = await proxy.client.post("/proxy", json=BODY, headers={**headers, "prefer": "wait=5"})
    assert (waited.status_code, waited.json()) == (200, job)
    assert len(proxy.upstream.starts) == 1
