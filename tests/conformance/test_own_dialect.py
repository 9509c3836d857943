"""A third dialect, written only as a TOML file here, in front of a small job server of
its own: other paths, other field names (nested ones), other states, a lane in a nested
field, every request held. Nothing of the proxy's code knows it.

The server (:func:`tasks_server`) speaks a transcription-style API::

    POST /api/v2/tasks  {"owner": {"team"}, "audio", "notify": {"url", "events"}}
         → 202 {"task": {"uid", "phase": "QUEUED"}}       (one start at a time per team)
    POST <notify.url>   {"task": {"uid", "phase": "DONE" | "ERROR", "text" | "reason"}}
    GET  /api/v2/tasks/{uid}/state → 200 {"task": {...}} as it stands, 404 unknown
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.dialects.dialect import DialectError, load_dialect
from tests.conformance.upstreams import proxy_in_front
from tests.conftest import run_server

TASKS_DIALECT = """
name = "tasks"

[start]
method = "POST"
path = "/api/v2/tasks"
keep = ["owner", "audio", "language"]
callback = "/notify/url"
held = { notify = { events = ["finished"] } }
forwarded = {}
headers = []

[hold]
by = "always"

[lane]
by = "body"
pointer = "/owner/team"

[job]
id = "/task/uid"
state = "/task/phase"
final = ["DONE", "ERROR", "ABORTED"]
failed = ["ERROR", "ABORTED"]

[status]
path = "/api/v2/tasks/{id}/state"
"""

TASK_TIME = 0.05
GATE_TIME = 0.01
WAIT = 20.0


@dataclass
class TasksServer:
    """The tasks API's state, and what a test asks of it."""

    fail: bool = False
    drop_callbacks: bool = False
    starts: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    status_reads: int = 0
    gates: dict[str, asyncio.Lock] = field(default_factory=dict)
    running: set[asyncio.Task[None]] = field(default_factory=set)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    async def start(self, request: Request) -> JSONResponse:
        body = await request.json()
        team = body.get("owner", {}).get("team")
        url = body.get("notify", {}).get("url")
        if not isinstance(team, str) or not isinstance(url, str):
            return JSONResponse({"message": "owner.team and notify.url are required"}, 422)
        async with self.gates.setdefault(team, asyncio.Lock()):
            await asyncio.sleep(GATE_TIME)
            self.starts.append(body)
            uid = f"T-{next(self.ids):05d}"
            self.tasks[uid] = {"uid": uid, "phase": "QUEUED"}
        finishing = asyncio.create_task(self._finish(uid, url))
        self.running.add(finishing)
        finishing.add_done_callback(self.running.discard)
        return JSONResponse({"task": self.tasks[uid]}, 202)

    async def _finish(self, uid: str, url: str) -> None:
        await asyncio.sleep(TASK_TIME)
        task = self.tasks[uid]
        if self.fail:
            task.update(phase="ERROR", reason="the audio could not be decoded")
        else:
            task.update(phase="DONE", text=f"transcript of {uid}")
        if not self.drop_callbacks:
            async with httpx.AsyncClient() as client:
                await client.post(url, json={"task": task})

    async def state(self, request: Request) -> JSONResponse:
        self.status_reads += 1
        task = self.tasks.get(request.path_params["uid"])
        if task is None:
            return JSONResponse({"message": "no such task"}, 404)
        return JSONResponse({"task": task})


@contextlib.asynccontextmanager
async def tasks_system(
    tmp_path: Path, server: TasksServer, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The tasks server, the proxy in front in the tasks dialect (a file), a client."""
    dialect = tmp_path / "tasks.toml"
    dialect.write_text(TASKS_DIALECT)
    app = Starlette(
        routes=[
            Route("/api/v2/tasks", server.start, methods=["POST"]),
            Route("/api/v2/tasks/{uid}/state", server.state, methods=["GET"]),
        ]
    )
    async with (
        run_server(app) as url,
        proxy_in_front(url, upstream_dialect=str(dialect), **settings) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=WAIT) as client,
    ):
        yield client
        await asyncio.gather(*server.running)


def task(team: str = "blue", **extra: Any) -> dict[str, Any]:
    return {"owner": {"team": team}, "audio": "s3://bucket/a.wav", **extra}


async def test_tasks_of_one_team_are_held_until_their_callbacks(tmp_path: Path) -> None:
    """20 tasks of one team, held at the dialect's own path, each answered with its own
    finished task as its callback carried it, within the jobclient's 5 s."""
    server = TasksServer()
    async with tasks_system(tmp_path, server) as client:
        began = time.monotonic()
        answers = await asyncio.gather(
            *(client.post("/api/v2/tasks", json=task()) for _ in range(20))
        )
        took = time.monotonic() - began
    assert [answer.status_code for answer in answers] == [200] * 20
    tasks = [answer.json()["task"] for answer in answers]
    assert {t["phase"] for t in tasks} == {"DONE"}
    assert len({t["uid"] for t in tasks}) == 20
    assert all(t["text"] == f"transcript of {t['uid']}" for t in tasks)
    assert took < 5.0


async def test_the_start_carries_the_kept_fields_and_the_proxys_callback(
    tmp_path: Path,
) -> None:
    """The kept fields go on, the others not; notify.url is the proxy's, set inside the
    client's own notify object without changing what else it holds."""
    server = TasksServer()
    async with tasks_system(tmp_path, server) as client:
        sent = task(language="fr", secret="not kept", notify={"url": "http://client.test/x"})
        answer = await client.post("/proxy", json=sent)
    assert answer.status_code == 200
    (start,) = server.starts
    assert set(start) == {"owner", "audio", "language", "notify"}
    assert start["notify"]["url"].startswith("http://127.0.0.1:")
    assert "/callback/" in start["notify"]["url"]
    assert start["notify"]["events"] == ["finished"]


async def test_a_failed_task_is_answered_as_it_failed(tmp_path: Path) -> None:
    """ERROR is a final state: the task is answered as it ended, with its reason; on a
    stream its last event is named failed, as the dialect's failed states say."""
    server = TasksServer(fail=True)
    async with tasks_system(tmp_path, server) as client:
        answer = await client.post("/api/v2/tasks", json=task())
        async with client.stream(
            "POST", "/api/v2/tasks", json=task(), headers={"accept": "text/event-stream"}
        ) as stream:
            events = [line async for line in stream.aiter_lines() if line.startswith("event:")]
    assert answer.status_code == 200
    assert answer.json()["task"]["phase"] == "ERROR"
    assert answer.json()["task"]["reason"]
    assert events[-1] == "event: failed"


async def test_lost_callbacks_are_answered_from_the_dialects_status_path(
    tmp_path: Path,
) -> None:
    """With no callback ever sent, each task is read at /api/v2/tasks/{uid}/state."""
    server = TasksServer(drop_callbacks=True)
    async with tasks_system(tmp_path, server, poll_initial=0.1) as client:
        answers = await asyncio.gather(
            *(client.post("/api/v2/tasks", json=task("red")) for _ in range(5))
        )
    assert [answer.status_code for answer in answers] == [200] * 5
    assert {answer.json()["task"]["phase"] for answer in answers} == {"DONE"}
    assert server.status_reads >= 5


async def test_a_task_is_read_back_by_its_ref(tmp_path: Path) -> None:
    """Prefer: respond-async gets a 202 with a ref; the ref's long poll gets the task."""
    server = TasksServer()
    async with tasks_system(tmp_path, server) as client:
        accepted = await client.post(
            "/api/v2/tasks", json=task(), headers={"prefer": "respond-async"}
        )
        assert accepted.status_code == 202
        done = await client.get(accepted.headers["location"], headers={"prefer": "wait=10"})
    assert done.status_code == 200
    assert done.json()["task"]["phase"] == "DONE"
    assert done.json()["task"]["uid"] == accepted.json()["id"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"audio": "a.wav"}, "team"),
        ({"owner": {"team": ""}}, "team"),
        ({"owner": "blue"}, "team"),
    ],
)
async def test_a_task_without_its_lane_is_400_naming_the_dialects_field(
    tmp_path: Path, body: dict[str, Any], named: str
) -> None:
    """The lane is the dialect's field: a request without it is refused, naming it, and
    no start is made."""
    server = TasksServer()
    async with tasks_system(tmp_path, server) as client:
        answer = await client.post("/api/v2/tasks", json=body)
    assert answer.status_code == 400
    assert named in answer.json()["detail"]
    assert server.starts == []


async def test_no_callback_is_taken_for_a_task_the_proxy_did_not_start(tmp_path: Path) -> None:
    """A callback for a token the proxy never gave is refused, whatever the dialect."""
    server = TasksServer()
    async with tasks_system(tmp_path, server) as client:
        answer = await client.post(
            "/callback/not-a-token", json={"task": {"uid": "T-9", "phase": "DONE"}}
        )
    assert answer.status_code == 404
    assert answer.json()["error"] == "unknown_callback"


def test_the_dialect_file_compiles_and_a_wrong_one_names_its_key(tmp_path: Path) -> None:
    """The file is all the proxy needs; a wrong key is named with the file."""
    good = tmp_path / "tasks.toml"
    good.write_text(TASKS_DIALECT)
    assert load_dialect(str(good)).status_of("T-1") == "/api/v2/tasks/T-1/state"
    bad = tmp_path / "bad.toml"
    bad.write_text(TASKS_DIALECT.replace('failed = ["ERROR", "ABORTED"]', 'failed = ["LOST"]'))
    with pytest.raises(DialectError, match=r"job\.failed.*bad\.toml"):
        load_dialect(str(bad))


async def test_an_idempotency_key_is_kept_per_lane_of_the_dialect(tmp_path: Path) -> None:
    """A retry with the same key gets the same task and starts none; the same key from
    another team (the dialect's lane) is another key."""
    server = TasksServer()
    async with tasks_system(tmp_path, server) as client:
        key = {"idempotency-key": "upload-7"}
        first = await client.post("/api/v2/tasks", json=task("blue"), headers=key)
        retry = await client.post("/api/v2/tasks", json=task("blue"), headers=key)
        other = await client.post("/api/v2/tasks", json=task("green"), headers=key)
    assert first.json()["task"]["uid"] == retry.json()["task"]["uid"]
    assert other.json()["task"]["uid"] != first.json()["task"]["uid"]
    assert [start["owner"]["team"] for start in server.starts] == ["blue", "green"]
