"""Every error the proxy answers is ``{"error": <word>, "detail": <sentence>}`` (with
``job_id`` or ``upstream`` beside them where they apply), as
``application/json; charset=utf-8`` like every other answer of the proxy."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.responses import JSONResponse, Response

from proxy.errors import UpstreamBadResponse, said
from proxy.upstream.start import _answer
from tests.proxy.conftest import FakeJobServer, ProxyFactory

JSON_TYPE = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"error": "start_failed", "detail": "the disk is full"}, "start_failed: the disk is full"),
        ({"detail": "Not found."}, "Not found."),
        ({"message": "quota"}, "quota"),
        ({"error": "x", "detail": "x"}, "x"),
        ({"detail": {"nested": True}}, '{"detail":{"nested":true}}'),
        ([1, 2], "[1,2]"),
        ("plain words", "plain words"),
        ("", "nothing"),
        ({"detail": "y" * 500}, "y" * 200),
    ],
)
def test_what_a_job_server_said_is_its_own_message(answer: Any, words: str) -> None:
    """Its error and detail (or message), else its JSON: never a Python repr."""
    assert said(answer) == words


def test_a_long_answer_is_cut_short() -> None:
    text = said({"items": list(range(1_000))})
    assert len(text) == 200
    assert text.endswith("...")


def test_a_job_servers_5xx_is_a_sentence_not_a_repr() -> None:
    """The 5xx's own error words are quoted, not a dict's repr."""
    raw = b'{"error": "start_failed", "detail": "injected fault"}'
    with pytest.raises(UpstreamBadResponse) as raised:
        _answer(500, raw, 0.0)
    assert raised.value.detail == "the job server answered 500: start_failed: injected fault"
    assert "{" not in raised.value.detail


async def test_every_answer_of_the_proxy_is_json_in_utf_8(proxy_factory: ProxyFactory) -> None:
    """A held job, the proxy's errors, a refusal passed on, routes unknown and methods
    not allowed, health and readiness: each is JSON, its type the job server's."""
    upstream = FakeJobServer()

    async def refuse_some(body: dict[str, Any]) -> Response | None:
        if body["account"] == "banned":
            return JSONResponse({"error": "bad_request", "detail": "account: banned"}, 400)
        return None

    upstream.on_start = refuse_some
    async with proxy_factory(upstream) as proxy:
        client = proxy.client
        request, job_id = await proxy.held_job()
        await upstream.callback(job_id, upstream.finish(job_id))
        answers = {
            "held": await request,
            "bad request": await client.post("/proxy", content=b"{"),
            "rejected": await client.post("/proxy", json={"account": "banned", "wait": True}),
            "no route": await client.get("/nowhere"),
            "method": await client.get("/proxy"),
            "healthz": await client.get("/healthz"),
            "readyz": await client.get("/readyz"),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "held": 200,
        "bad request": 400,
        "rejected": 400,
        "no route": 404,
        "method": 405,
        "healthz": 200,
        "readyz": 200,
    }
    assert {name: a.headers["content-type"] for name, a in answers.items()} == dict.fromkeys(
        answers, JSON_TYPE
    )
    for name in ("bad request", "rejected", "no route", "method"):
        body = answers[name].json()
        assert isinstance(body["detail"], str), name
    assert answers["method"].json()["error"] == "method_not_allowed"
