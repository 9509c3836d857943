"""Shared mode end to end: a real redis-server, a job server and two proxy replicas."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from httpx_sse import aconnect_sse

from bench.harness import ServerProcess
from proxy.dialects.dialect import load_dialect
from proxy.shared.bus import REPLICAS_KEY, RedisBus, connect
from proxy.waiting.tokens import token_mac
from proxy.waiting.waiters import WaiterRegistry
from tests.conftest import closed_port, eventually, run_program
from tests.proxy.conftest import jobclient_in_process
from tests.proxy.processes import metric, wait_for_metric

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


class RedisServer:
    """A throwaway redis-server on a free loopback port, restartable on the same port."""

    def __init__(self) -> None:
        with closed_port() as port:
            self.port = port  # free again here, for redis-server to bind
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis(port=self.port)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(OSError, aioredis.ConnectionError):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


NO_POLLS = {"JOBPROXY_POLL_INITIAL": "30"}


@contextlib.asynccontextmanager
async def replica(
    jobserver: ServerProcess,
    redis_url: str,
    name: str,
    *flags: str,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ServerProcess]:
    argv = ["--upstream-url", jobserver.url, "--redis-url", redis_url, "--replica-id", name]
    async with run_program("jobproxy", *argv, *flags, env=env) as proxy:
        await wait_for_ready(proxy)
        yield proxy


async def wait_for_ready(proxy: ServerProcess) -> None:
    async with httpx.AsyncClient() as client:

        async def ready() -> bool:
            return (await client.get(f"{proxy.url}/readyz")).status_code == 200

        await eventually(ready, timeout=10, interval=0.02)


async def jobs_started(jobserver: ServerProcess) -> int:
    async with httpx.AsyncClient() as client:
        started: int = (await client.get(f"{jobserver.url}/healthz")).json()["jobs_started"]
        return started


async def test_callbacks_landing_on_another_replica_are_delivered(
    redis_server: RedisServer,
) -> None:
    """Jobs held on replica A whose callbacks all land on replica B are all answered."""
    async with (
        run_program("jobserver") as jobserver,
        replica(jobserver, redis_server.url, "b") as b,
        replica(jobserver, redis_server.url, "a", "--public-url", b.url) as a,
    ):
        code, report = await jobclient_in_process(f"{a.url}/proxy")
        forwarded = await metric(b.url, 'jobproxy_callbacks_total{outcome="ok"}')
    assert (code, report["result"]) == (0, "PASSED"), report
    assert forwarded == 50


async def test_retry_on_another_replica_gets_the_same_job(redis_server: RedisServer) -> None:
    """A killed mid-job; the client's retry on B with the same key gets that job's result."""
    body = {"account": "idem", "wait": True}
    headers = {"Idempotency-Key": "order-42"}
    async with (
        run_program("jobserver", "--job-duration", "1.0") as jobserver,
        replica(jobserver, redis_server.url, "b") as b,
        replica(jobserver, redis_server.url, "a", "--public-url", b.url) as a,
        httpx.AsyncClient(timeout=15) as client,
    ):
        first = asyncio.ensure_future(client.post(f"{a.url}/proxy", json=body, headers=headers))
        await wait_for_metric(a.url, "jobproxy_pending_jobs", lambda v: v >= 1)

        async def job_started() -> bool:
            return await jobs_started(jobserver) >= 1

        await eventually(job_started, timeout=5, interval=0.02)
        a.process.send_signal(signal.SIGKILL)
        with pytest.raises(httpx.TransportError):
            await first
        retry = await client.post(f"{b.url}/proxy", json=body, headers=headers)
        again = await client.post(f"{b.url}/proxy", json=body, headers=headers)
        conflict = await client.post(
            f"{b.url}/proxy", json={**body, "callback": "h.test/x"}, headers=headers
        )
        started = await jobs_started(jobserver)
    assert retry.status_code == 200
    assert retry.json()["state"] == "completed"
    assert again.json() == retry.json()
    assert conflict.status_code == 422
    assert conflict.json()["error"] == "idempotency_conflict"
    assert started == 1


async def test_redis_restart_mid_run_loses_no_job(redis_server: RedisServer) -> None:
    """Redis down while the callbacks arrive (refused 503, retried by the job server),
    then restarted: every job is still answered."""
    async with (
        run_program("jobserver", "--job-duration", "1.0") as jobserver,
        replica(jobserver, redis_server.url, "b") as b,
        replica(jobserver, redis_server.url, "a", "--public-url", b.url) as a,
    ):
        run = asyncio.ensure_future(jobclient_in_process(f"{a.url}/proxy", jobs=30, deadline=20))
        await wait_for_metric(a.url, "jobproxy_pending_jobs", lambda v: v >= 30)
        await redis_server.stop()
        refused = 'jobproxy_callbacks_total{outcome="bus_unavailable"}'
        met_the_outage = await wait_for_metric(b.url, refused, lambda v: v >= 1)
        await redis_server.start()
        code, report = await run
    assert met_the_outage >= 1
    assert (code, report["result"]) == (0, "PASSED"), report


async def test_results_published_while_the_holder_is_away_are_reread(
    redis_server: RedisServer,
) -> None:
    """While replica A cannot subscribe, B stores the results its callbacks bring; once A
    subscribes again it re-reads them and answers every client. A refused subscription
    is one outage (one warning), not a subscription that seems to succeed in a loop."""
    admin = aioredis.Redis(port=redis_server.port)
    await redis_command(admin, "ACL", "SETUSER", "a", "on", ">pw", "~*", "&*", "+@all")
    a_url = f"redis://a:pw@127.0.0.1:{redis_server.port}/0"
    jobs = 20
    try:
        async with (
            run_program("jobserver", "--job-duration", "1.0") as jobserver,
            replica(jobserver, redis_server.url, "b") as b,
            # No status polls on A (jobs are due only after 30 s): the re-read must answer.
            replica(jobserver, a_url, "a", "--public-url", b.url, env=NO_POLLS) as a,
        ):
            run = asyncio.ensure_future(
                jobclient_in_process(f"{a.url}/proxy", jobs=jobs, deadline=20)
            )
            await wait_for_metric(a.url, "jobproxy_pending_jobs", lambda v: v >= jobs)
            # A loses its subscription and cannot take it back; B can still store.
            await redis_command(admin, "ACL", "SETUSER", "a", "-subscribe")
            await redis_command(admin, "CLIENT", "KILL", "USER", "a")
            stored = 'jobproxy_callbacks_total{outcome="stored"}'
            await wait_for_metric(b.url, stored, lambda v: v >= jobs, timeout=20)
            await redis_command(admin, "ACL", "SETUSER", "a", "+subscribe")
            code, report = await run
            log = a.log_tail()
    finally:
        await admin.aclose()
    assert (code, report["result"]) == (0, "PASSED"), report
    assert f"{jobs} results recovered from Redis" in log
    assert log.count("lost the Redis subscription") == 1


async def redis_command(redis: aioredis.Redis, *words: str) -> None:
    """Send a command redis-py has no typed method for (ACL rules as Redis words them)."""
    await redis.execute_command(*words)  # type: ignore[no-untyped-call]  # unannotated there


async def genuine_token(redis_url: str, replica_name: str) -> str:
    """A token as ``replica_name`` would issue it, signed with the key it registered."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entry = await redis.hget(REPLICAS_KEY, replica_name)
    finally:
        await redis.aclose()
    assert isinstance(entry, str)
    stem = f"{replica_name}.{secrets.token_urlsafe(16)}"
    return f"{stem}.{token_mac(bytes.fromhex(entry.split()[0]), stem)}"


async def redis_keys(redis_url: str) -> tuple[int, int]:
    """(number of keys, bytes of memory used) of the Redis server."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        memory = await redis.info("memory")
        return int(await redis.dbsize()), int(memory["used_memory"])
    finally:
        await redis.aclose()


async def wait_for_replicas(proxy: ServerProcess, expected: list[str]) -> None:
    """Until ``proxy`` sees exactly ``expected`` as the live replicas."""
    async with httpx.AsyncClient() as client:

        async def seen() -> bool:
            replicas: list[str] | None = (
                (await client.get(f"{proxy.url}/readyz")).json().get("replicas")
            )
            return replicas == expected

        await eventually(seen, timeout=15, interval=0.05)


async def test_forged_callbacks_write_nothing_to_redis(redis_server: RedisServer) -> None:
    """1,000 callbacks of 50 KB on tokens naming a live replica but not issued by it are
    404 JSON, and Redis neither gains a key nor grows."""
    job = {"id": "0123456789abc", "state": "completed", "padding": "x" * 50_000}
    async with (
        run_program("jobserver") as jobserver,
        replica(jobserver, redis_server.url, "b"),
        replica(jobserver, redis_server.url, "a") as a,
        httpx.AsyncClient(timeout=15) as client,
    ):
        await wait_for_replicas(a, ["a", "b"])
        genuine = await genuine_token(redis_server.url, "b")
        forged = [f"b.{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(16)}" for _ in range(999)]
        forged.append(genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"))
        keys_before, memory_before = await redis_keys(redis_server.url)
        answers = []
        for start in range(0, len(forged), 100):
            answers += await asyncio.gather(
                *(
                    client.post(f"{a.url}/callback/{token}", json=job)
                    for token in forged[start : start + 100]
                )
            )
        keys_after, memory_after = await redis_keys(redis_server.url)
    assert {answer.status_code for answer in answers} == {404}
    assert {answer.json()["error"] for answer in answers} == {"unknown_callback"}
    assert keys_after == keys_before
    assert memory_after - memory_before < 1_000_000  # 50 MB if they had been stored


async def test_a_callback_for_a_replica_that_left_writes_nothing(redis_server: RedisServer) -> None:
    """A genuine token of a replica that has stopped is a 404 elsewhere, stored nowhere."""
    async with (
        run_program("jobserver") as jobserver,
        replica(jobserver, redis_server.url, "a") as a,
        httpx.AsyncClient(timeout=15) as client,
    ):
        async with replica(jobserver, redis_server.url, "b"):
            await wait_for_replicas(a, ["a", "b"])
            token = await genuine_token(redis_server.url, "b")
        await wait_for_replicas(a, ["a"])
        keys_before, _ = await redis_keys(redis_server.url)
        answer = await client.post(
            f"{a.url}/callback/{token}", json={"id": "0123456789abc", "state": "completed"}
        )
        keys_after, _ = await redis_keys(redis_server.url)
    assert answer.status_code == 404
    assert keys_after == keys_before


async def test_lost_redis_is_503_for_requests_that_need_it(redis_server: RedisServer) -> None:
    """Without Redis: Idempotency-Key requests and other replicas' callbacks get 503 JSON,
    readyz says not ready, plain requests still work; all recover when Redis is back."""
    async with (
        run_program("jobserver") as jobserver,
        replica(jobserver, redis_server.url, "b"),
        replica(jobserver, redis_server.url, "a") as a,
        httpx.AsyncClient(timeout=15) as client,
    ):
        await wait_for_replicas(a, ["a", "b"])
        token = await genuine_token(redis_server.url, "b")
        await redis_server.stop()
        response = await client.post(
            f"{a.url}/proxy",
            json={"account": "x", "wait": True},
            headers={"Idempotency-Key": "k1"},
        )
        ready = await client.get(f"{a.url}/readyz")
        foreign = await client.post(
            f"{a.url}/callback/{token}", json={"id": "abc", "state": "completed"}
        )
        plain = await client.post(f"{a.url}/proxy", json={"account": "x", "wait": True})
        await redis_server.start()
        await wait_for_ready(a)
        recovered = await client.post(
            f"{a.url}/proxy",
            json={"account": "x", "wait": True},
            headers={"Idempotency-Key": "k2"},
        )
    assert response.status_code == 503
    assert response.json()["error"] == "bus_unavailable"
    assert ready.status_code == 503
    assert foreign.status_code == 503  # the job server retries it
    assert foreign.json()["error"] == "bus_unavailable"
    assert plain.status_code == 200
    assert recovered.status_code == 200


async def test_only_the_owner_releases_a_claim(redis_server: RedisServer) -> None:
    """A claim is released by its owner's token only, not by a token it merely prefixes;
    a follower learns the ref of the owner's job."""
    redis = connect(redis_server.url)
    try:
        bus = RedisBus(redis, WaiterRegistry("a", 10), ttl=60, dialect=load_dialect("work-sample"))
        assert (await bus.claim("k", "digest", "a.tok", "ref1")).owner
        await bus.release("k", "a.to")
        follower = await bus.claim("k", "digest", "a.other", None)
        assert (follower.owner, follower.ref) == (False, "ref1")
        await bus.release("k", "a.tok")
        assert (await bus.claim("k", "digest", "a.other", None)).owner
    finally:
        await redis.aclose()


async def test_a_job_is_read_long_polled_and_streamed_on_another_replica(
    redis_server: RedisServer,
) -> None:
    """A job accepted by replica A (respond-async) is read running on B, its stream on B
    gets the events A publishes, a long poll on B gets its end; after it, B still reads it
    from Redis."""
    async with (
        run_program("jobserver", "--job-duration", "1.0") as jobserver,
        replica(jobserver, redis_server.url, "a") as a,
        replica(jobserver, redis_server.url, "b") as b,
        httpx.AsyncClient(timeout=15) as client,
    ):
        accepted = await client.post(
            f"{a.url}/proxy",
            json={"account": "shared", "wait": True},
            headers={"prefer": "respond-async"},
        )
        assert accepted.status_code == 202
        ref = accepted.headers["location"].rsplit("/", 1)[1]
        running = await client.get(f"{b.url}/jobs/{ref}")
        assert running.json() == accepted.json()
        stream_headers = {"accept": "text/event-stream"}
        async with aconnect_sse(
            client, "GET", f"{b.url}/jobs/{ref}", headers=stream_headers
        ) as source:
            waited = asyncio.ensure_future(
                client.get(f"{b.url}/jobs/{ref}", headers={"prefer": "wait=10"})
            )
            events = [event async for event in source.aiter_sse()]
        done = await waited
        again = await client.get(f"{b.url}/jobs/{ref}")
        unknown = await client.get(f"{b.url}/jobs/never-issued")
    assert [event.event for event in events] == ["accepted", "completed"]
    assert done.json()["state"] == "completed"
    assert done.json() == events[-1].json() == again.json()
    assert unknown.status_code == 404


async def test_a_keyed_retry_on_another_replica_gets_the_same_ref(
    redis_server: RedisServer,
) -> None:
    """respond-async with an Idempotency-Key on A, the same on B: the same ref, one job."""
    headers = {"prefer": "respond-async", "Idempotency-Key": "order-7"}
    body = {"account": "shared-key", "wait": True}
    async with (
        run_program("jobserver", "--job-duration", "1.0") as jobserver,
        replica(jobserver, redis_server.url, "a") as a,
        replica(jobserver, redis_server.url, "b") as b,
        httpx.AsyncClient(timeout=15) as client,
    ):
        first = await client.post(f"{a.url}/proxy", json=body, headers=headers)
        retry = await client.post(f"{b.url}/proxy", json=body, headers=headers)
        started = await jobs_started(jobserver)
    assert (first.status_code, retry.status_code) == (202, 202)
    # Each replica names itself in Location (no load balancer here): the same ref.
    assert retry.headers["location"].rsplit("/", 1)[1] == first.json()["ref"]
    assert retry.json() == first.json()
    assert started == 1
