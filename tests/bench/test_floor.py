"""The serving stack alone (``bench/floor.py``): held batches, its answers, a real run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench import floor
from bench.__main__ import EXIT_OK, USAGE_ERROR, main
from bench.outcomes import OK, judge
from infra.http1 import Answer


async def test_held_batches_release_when_full_and_give_up_when_late() -> None:
    """A batch is let go when its last request arrives; one that never fills, at its timeout."""
    batches = floor.HeldBatches(3, timeout=30.0)
    held = [asyncio.create_task(batches.hold()) for _ in range(2)]
    assert await batches.hold()
    assert await asyncio.wait_for(asyncio.gather(*held), 5.0) == [True, True]
    late = floor.HeldBatches(3, timeout=0.01)
    both = asyncio.gather(late.hold(), late.hold())
    assert list(await asyncio.wait_for(both, 5.0)) == [False, False]
    assert await floor.HeldBatches(1, timeout=30.0).hold()


async def call_floor(app: floor.FloorApp, method: str, path: str) -> list[dict[str, Any]]:
    """The messages the floor app sends for one request with a small body."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b'{"account":"a",', "more_body": True}]
    messages.append({"type": "http.request", "body": b'"wait":true}', "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent


async def test_floor_app_answers_a_job_the_generator_counts_as_done() -> None:
    """The floor reads the whole body and answers a completed job with a well-formed proof."""
    app = floor.FloorApp(floor.HeldBatches(1, timeout=30.0))
    for path in ("/", floor.HOLD_PATH):
        start, body = await call_floor(app, "POST", path)
        assert start["status"] == 200
        headers = dict(start["headers"])
        assert headers[b"content-length"] == str(len(body["body"])).encode()
        assert judge(Answer(200, body["body"]), wait=True).outcome == OK
    late = floor.FloorApp(floor.HeldBatches(2, timeout=0.01))
    start, body = await asyncio.wait_for(call_floor(late, "POST", floor.HOLD_PATH), 5.0)
    assert start["status"] == 503
    assert judge(Answer(503, body["body"]), wait=True).outcome == "http-503:hold_timeout"


def test_floor_rejects_an_empty_batch() -> None:
    """A batch size of 0 is a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        floor.parse_args(["--hold", "0"])
    assert exit_info.value.code == USAGE_ERROR


def test_floor_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny floor run holds every request at once and reports its CPU and memory."""
    output = tmp_path / "results.json"
    argv = ["--scenarios", "floor", "--sizes", "10,30", "--warmup", "4", "--output", str(output)]
    assert main(argv) == EXIT_OK
    assert "floor (raw ASGI under uvicorn)" in capsys.readouterr().out
    document = json.loads(output.read_text())
    result = document["floor"]
    assert result["size"] == 30  # the largest size
    assert result["run"]["completed"] == 30
    assert result["run"]["errors"] == {}
    assert result["cpu_s_per_1000_requests"] >= 0
    assert result["rss_per_held_request_bytes"] >= 0
    assert result["run"]["floor"]["rss_baseline_kib"] > 0
    assert {"requests_failed"} == {t["name"] for t in document["targets"] if t["where"] == "floor"}
    assert document["scale"] == []
