"""Tests for proxy.polling: poll schedules and status polling.

Time is a FakeClock whose sleep advances it, so the deadline logic runs instantly; the
job server is an httpx.MockTransport answering a scripted sequence.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from proxy.errors import JobLost, JobTimeout
from proxy.polling.status import LostJob, PollSchedule, status_url, wait_for_job

BASE_URL = "http://jobserver.test"
JOB_ID = "3f2a9c"

Step = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[tuple[float, float]] = []  # (started at, duration)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append((self.now, seconds))
        self.now += seconds


class ScriptedJobServer:
    """Answers status polls from a script of steps; the last step repeats forever."""

    def __init__(self, clock: FakeClock, *steps: Step) -> None:
        self.clock = clock
        self.steps = list(steps)
        self.requests: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((self.clock.now, request))
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def job(state: str, **extra: Any) -> Step:
    return lambda request: httpx.Response(200, json={"id": JOB_ID, "state": state, **extra})


def status(code: int, headers: dict[str, str] | None = None) -> Step:
    return lambda request: httpx.Response(code, headers=headers, json={"error": "x"})


def body(text: str) -> Step:
    return lambda request: httpx.Response(200, text=text)


def raises(exc_type: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type("scripted failure", request=request)

    return step


class UpperBoundRandom(random.Random):
    """An rng whose uniform(a, b) is always b, exposing the backoff ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.mark.parametrize(
    "kwargs", [{"base": 0.0}, {"cap": 0.0}, {"factor": 0.5}, {"first_delay": -1.0}]
)
def test_schedule_rejects_values_that_cannot_schedule(kwargs: dict[str, float]) -> None:
    """PollSchedule refuses zero backoff, shrinking factors and negative delays."""
    with pytest.raises(ValueError, match="PollSchedule"):
        PollSchedule(**kwargs)


def test_backoff_delays_stay_within_capped_exponential_bounds() -> None:
    """Each delay n lies in [0, min(cap, base·factor^n)], even after many polls."""
    schedule = PollSchedule(base=0.05, cap=2.0, factor=2.0)
    delays = schedule.delays(random.Random(1))
    for n in range(2000):
        delay = next(delays)
        ceiling = schedule.cap if n > 100 else min(schedule.cap, schedule.base * 2.0**n)
        assert 0.0 <= delay <= ceiling


def test_backoff_ceiling_grows_exponentially_then_caps() -> None:
    """The jitter's upper bound doubles from base and stops at cap."""
    delays = PollSchedule(base=0.05, cap=2.0).delays(UpperBoundRandom())
    first = [next(delays) for _ in range(9)]
    assert first == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_full_jitter_draws_from_the_given_rng() -> None:
    """Equal seeds give equal delays, and the delays spread below the ceiling."""

    def take(seed: int) -> list[float]:
        delays = PollSchedule(cap=2.0).delays(random.Random(seed))
        return [next(delays) for _ in range(50)]

    assert take(3) == take(3)
    assert take(3) != take(4)
    assert len(set(take(3)[10:])) == 40  # jittered, not the constant cap


def test_status_url_quotes_the_id_with_or_without_trailing_slash() -> None:
    """The job id is percent-quoted and base URLs may end with '/'."""
    assert status_url("http://h:1", "a/b c") == "http://h:1/status/a%2Fb%20c"
    assert status_url("http://h:1/api/", "x") == "http://h:1/api/status/x"


@pytest.mark.parametrize("base_url", [BASE_URL, BASE_URL + "/"])
async def test_job_id_is_url_quoted_in_the_request(clock: FakeClock, base_url: str) -> None:
    """A job id with '/', spaces and '?' reaches the server as one quoted path segment."""
    odd_id = "a/b c?d#e"
    server = ScriptedJobServer(
        clock, lambda r: httpx.Response(200, json={"id": odd_id, "state": "completed"})
    )
    async with server.client() as client:
        await wait_for_job(
            client, base_url, odd_id, deadline=clock() + 5, clock=clock, sleep=clock.sleep
        )
    assert server.requests[0][1].url.raw_path == b"/status/a%2Fb%20c%3Fd%23e"


@pytest.mark.parametrize("final", ["completed", "failed"])
async def test_final_answer_is_returned_unchanged(clock: FakeClock, final: str) -> None:
    """A completed or failed status answer is returned exactly as the server sent it."""
    extra = {"proof": "abc", "startedAt": 12.5, "error": None, "nested": {"k": [1, 2]}}
    server = ScriptedJobServer(clock, job("running"), job(final, **extra))
    async with server.client() as client:
        answer = await wait_for_job(
            client, BASE_URL, JOB_ID, deadline=clock() + 5, clock=clock, sleep=clock.sleep
        )
    assert answer == {"id": JOB_ID, "state": final, **extra}
    assert len(server.requests) == 2


async def test_first_poll_happens_after_first_delay(clock: FakeClock) -> None:
    """No request goes out before schedule.first_delay has passed."""
    start = clock()
    server = ScriptedJobServer(clock, job("completed"))
    async with server.client() as client:
        await wait_for_job(
            client,
            BASE_URL,
            JOB_ID,
            deadline=start + 10,
            schedule=PollSchedule(first_delay=3.0),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == [(start, 3.0)]
    assert [at for at, _ in server.requests] == [start + 3.0]


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_is_honoured(clock: FakeClock, code: int) -> None:
    """After a 429/503 with Retry-After: 2 the next poll waits at least 2 seconds."""
    server = ScriptedJobServer(clock, status(code, {"Retry-After": "2"}), job("completed"))
    async with server.client() as client:
        await wait_for_job(
            client,
            BASE_URL,
            JOB_ID,
            deadline=clock() + 10,
            clock=clock,
            sleep=clock.sleep,
            rng=random.Random(0),
        )
    (first_at, _), (second_at, _) = server.requests
    assert second_at - first_at >= 2.0


async def test_transient_errors_are_retried_and_on_update_sees_each_answer(
    clock: FakeClock,
) -> None:
    """Transport errors, 5xx, 404 and malformed answers are skipped until the job ends; a
    state that does not end the job (whatever its word) is an update."""
    server = ScriptedJobServer(
        clock,
        job("running"),
        job("running", progress=0.5),
        status(503, {"Retry-After": "2"}),
        raises(httpx.ConnectError),
        raises(httpx.ReadTimeout),
        body("<html>garbage</html>"),
        body("[1, 2]"),
        lambda r: httpx.Response(200, json={"id": JOB_ID, "state": "exploded"}),
        lambda r: httpx.Response(200, json={"id": "someone-else", "state": "completed"}),
        status(404),
        status(500),
        job("completed", proof="p"),
    )
    updates: list[dict[str, Any]] = []
    async with server.client() as client:
        answer = await wait_for_job(
            client,
            BASE_URL,
            JOB_ID,
            deadline=clock() + 60,
            on_update=updates.append,
            clock=clock,
            sleep=clock.sleep,
        )
    assert answer == {"id": JOB_ID, "state": "completed", "proof": "p"}
    assert len(server.requests) == 12
    assert updates == [
        {"id": JOB_ID, "state": "running"},
        {"id": JOB_ID, "state": "running", "progress": 0.5},
        {"id": JOB_ID, "state": "exploded"},
        answer,
    ]


async def test_deadline_raises_job_timeout_without_sleeping_past_it(clock: FakeClock) -> None:
    """A job that never ends raises JobTimeout naming it, and no sleep crosses the deadline."""
    deadline = clock() + 5.0
    server = ScriptedJobServer(clock, job("running"))
    async with server.client() as client:
        with pytest.raises(JobTimeout, match=JOB_ID) as caught:
            await wait_for_job(
                client,
                BASE_URL,
                JOB_ID,
                deadline=deadline,
                schedule=PollSchedule(first_delay=1.0),
                clock=clock,
                sleep=clock.sleep,
            )
    assert caught.value.status_code == 504
    assert clock() == pytest.approx(deadline)
    assert all(at + seconds <= deadline for at, seconds in clock.sleeps)
    assert all(at < deadline for at, _ in server.requests)
    assert len(server.requests) > 5


async def test_retry_after_beyond_the_deadline_is_cut_short(clock: FakeClock) -> None:
    """A Retry-After longer than the time left sleeps only until the deadline, then times out."""
    deadline = clock() + 3.0
    server = ScriptedJobServer(clock, status(503, {"Retry-After": "100"}))
    async with server.client() as client:
        with pytest.raises(JobTimeout):
            await wait_for_job(
                client, BASE_URL, JOB_ID, deadline=deadline, clock=clock, sleep=clock.sleep
            )
    assert len(server.requests) == 1
    assert clock.sleeps == [(deadline - 3.0, 3.0)]


async def test_first_delay_beyond_the_deadline_times_out_without_polling(
    clock: FakeClock,
) -> None:
    """A first_delay past the deadline sleeps until the deadline and never polls."""
    server = ScriptedJobServer(clock, job("completed"))
    async with server.client() as client:
        with pytest.raises(JobTimeout):
            await wait_for_job(
                client,
                BASE_URL,
                JOB_ID,
                deadline=clock() + 2.0,
                schedule=PollSchedule(first_delay=10.0),
                clock=clock,
                sleep=clock.sleep,
            )
    assert server.requests == []
    assert [seconds for _, seconds in clock.sleeps] == [2.0]


async def test_past_deadline_times_out_at_once(clock: FakeClock) -> None:
    """A deadline that has already passed raises JobTimeout without polling or sleeping."""
    server = ScriptedJobServer(clock, job("completed"))
    async with server.client() as client:
        with pytest.raises(JobTimeout):
            await wait_for_job(
                client, BASE_URL, JOB_ID, deadline=clock() - 1, clock=clock, sleep=clock.sleep
            )
    assert server.requests == [] and clock.sleeps == []


async def test_request_timeout_never_extends_past_the_deadline(clock: FakeClock) -> None:
    """Every poll's httpx timeouts are at most the time left before the deadline."""
    deadline = clock() + 4.0
    server = ScriptedJobServer(clock, job("running"))
    async with server.client() as client:
        with pytest.raises(JobTimeout):
            await wait_for_job(
                client, BASE_URL, JOB_ID, deadline=deadline, clock=clock, sleep=clock.sleep
            )
    for at, request in server.requests:
        timeouts = request.extensions["timeout"]
        assert all(0 < value <= deadline - at for value in timeouts.values())


async def test_repeated_failures_warn_once_per_streak(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A run of connection errors logs one warning; the rest go to debug."""
    server = ScriptedJobServer(
        clock, *[raises(httpx.ConnectError)] * 5, job("running"), raises(httpx.ConnectError)
    )
    caplog.set_level(logging.DEBUG, logger="proxy.polling.status")
    async with server.client() as client:
        with pytest.raises(JobTimeout, match="ConnectError"):
            await wait_for_job(
                client, BASE_URL, JOB_ID, deadline=clock() + 10, clock=clock, sleep=clock.sleep
            )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 2  # one per streak: before and after the running answer
    assert len(debugs) >= 4


async def test_empty_job_id_is_rejected(clock: FakeClock) -> None:
    """An empty job id is a ValueError, not a poll of /status/."""
    async with httpx.AsyncClient() as client:
        with pytest.raises(ValueError, match="job_id"):
            await wait_for_job(client, BASE_URL, "", deadline=clock() + 1, clock=clock)


# Lost jobs.


async def poll_lost(
    server: ScriptedJobServer, clock: FakeClock, lost: LostJob, **options: Any
) -> dict[str, Any]:
    """wait_for_job against ``server`` on the fake clock, with ``lost`` rules."""
    async with server.client() as client:
        return await wait_for_job(
            client,
            BASE_URL,
            JOB_ID,
            deadline=clock() + 60,
            clock=clock,
            sleep=clock.sleep,
            lost=lost,
            **options,
        )


async def test_404_long_after_acceptance_is_a_lost_job(clock: FakeClock) -> None:
    """A 404 more than the grace after the job server accepted the job raises JobLost."""
    server = ScriptedJobServer(clock, status(404))
    lost = LostJob(known_since=clock() - 5.0, grace=1.0)
    with pytest.raises(JobLost, match="no longer knows") as caught:
        await poll_lost(server, clock, lost)
    assert caught.value.job_id == JOB_ID
    assert caught.value.body()["job_id"] == JOB_ID
    assert len(server.requests) == 1


async def test_404_within_the_grace_is_polled_again(clock: FakeClock) -> None:
    """A 404 right after acceptance may be a job not yet visible: polling goes on."""
    server = ScriptedJobServer(clock, status(404), job("completed", proof="p"))
    lost = LostJob(known_since=clock(), grace=1.0)
    answer = await poll_lost(server, clock, lost, rng=random.Random(0))
    assert answer["state"] == "completed"


async def test_404_turns_into_lost_once_the_grace_has_passed(clock: FakeClock) -> None:
    """404s that keep coming become JobLost as soon as the grace is over, not at the deadline."""
    server = ScriptedJobServer(clock, status(404))
    lost = LostJob(known_since=clock(), grace=1.0)
    schedule = PollSchedule(base=0.2, cap=0.4)
    with pytest.raises(JobLost):
        await poll_lost(server, clock, lost, schedule=schedule, rng=UpperBoundRandom())
    assert 1.0 < clock() - server.requests[0][0] <= 1.0 + 0.4


async def test_status_that_cannot_be_read_for_a_sustained_time_is_a_lost_job(
    clock: FakeClock,
) -> None:
    """Polls without a usable answer for ``after`` seconds raise JobLost naming the cause,
    not before."""
    server = ScriptedJobServer(clock, raises(httpx.ConnectError), status(500), body("x"))
    lost = LostJob(known_since=clock(), grace=1.0, after=3.0)
    with pytest.raises(JobLost, match="no usable status answer for 3"):
        await poll_lost(server, clock, lost, schedule=PollSchedule(base=0.1, cap=0.5))
    first, last = server.requests[0][0], server.requests[-1][0]
    assert 3.0 <= last - first < 3.0 + 0.5
    assert len(server.requests) > 3


async def test_a_status_endpoint_that_fails_often_never_makes_a_job_lost(clock: FakeClock) -> None:
    """Runs of many failures broken by usable answers, as from a flaky status endpoint,
    are no evidence: polling goes on until the job is done."""
    flaky = [raises(httpx.ConnectError), status(500)] * 4 + [job("running")]
    server = ScriptedJobServer(clock, *flaky * 20, job("completed", proof="p"))
    lost = LostJob(known_since=clock(), grace=1.0, after=5.0)
    schedule = PollSchedule(base=0.05, cap=0.2)
    answer = await poll_lost(server, clock, lost, schedule=schedule, rng=UpperBoundRandom())
    assert answer["state"] == "completed"


async def test_busy_answers_and_successes_do_not_count_towards_lost(clock: FakeClock) -> None:
    """503s never count as failures, and they and a well-formed answer end a run of them."""
    server = ScriptedJobServer(
        clock,
        raises(httpx.ConnectError),
        status(503),
        status(503),
        raises(httpx.ConnectError),
        job("running"),
        raises(httpx.ConnectError),
        raises(httpx.ConnectError),
        job("completed", proof="p"),
    )
    lost = LostJob(known_since=clock(), grace=1.0, after=0.5)
    schedule = PollSchedule(base=0.2, cap=0.2)
    answer = await poll_lost(server, clock, lost, schedule=schedule, rng=UpperBoundRandom())
    assert answer["state"] == "completed"


async def test_a_status_answer_without_the_jobs_id_is_no_answer(clock: FakeClock) -> None:
    """A status answer that does not name the job asked about (no id, or another) is
    not taken for it: polling goes on until the job's own answer."""
    nameless = lambda request: httpx.Response(200, json={"state": "completed"})  # noqa: E731
    other = lambda request: httpx.Response(200, json={"id": "other", "state": "failed"})  # noqa: E731
    server = ScriptedJobServer(clock, nameless, other, job("completed", proof="p"))
    async with server.client() as client:
        answer = await wait_for_job(
            client, BASE_URL, JOB_ID, deadline=clock() + 10, clock=clock, sleep=clock.sleep
        )
    assert answer == {"id": JOB_ID, "state": "completed", "proof": "p"}
    assert len(server.requests) == 3


async def test_without_lost_rules_404_is_polled_until_the_deadline(clock: FakeClock) -> None:
    """Used on its own without ``lost``, the poller treats 404 as not yet visible."""
    server = ScriptedJobServer(clock, status(404))
    async with server.client() as client:
        with pytest.raises(JobTimeout):
            await wait_for_job(
                client, BASE_URL, JOB_ID, deadline=clock() + 10, clock=clock, sleep=clock.sleep
            )
    assert len(server.requests) > 5


async def test_each_poll_that_gets_no_answer_is_told_by_its_kind(clock: FakeClock) -> None:
    """Unreachable, timed out, erring and malformed polls are told (for the upstream
    errors metric); a 404, a busy answer and a running job are not."""
    server = ScriptedJobServer(
        clock,
        raises(httpx.ConnectError),
        raises(httpx.ReadTimeout),
        status(500),
        body("<html>"),
        status(404),
        status(503, {"Retry-After": "1"}),
        job("running"),
        job("completed", proof="P"),
    )
    told: list[str] = []
    async with server.client() as client:
        await wait_for_job(
            client,
            BASE_URL,
            JOB_ID,
            deadline=clock() + 60,
            clock=clock,
            sleep=clock.sleep,
            on_failure=told.append,
        )
    assert told == ["status_unreachable", "status_timeout", "status_error", "status_bad_response"]
