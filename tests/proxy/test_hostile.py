"""Hostile input: whatever bytes a client, a callback or the job server sends, the answer
is a JSON error with a 4xx or 502 status, never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.responses import Response

from tests.proxy.conftest import FakeJobServer, ProxyFactory, ProxyUnderTest

DEEP = b"[" * 32_000 + b"]" * 32_000
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _is_json_error(response: httpx.Response) -> bool:
    body = response.json()
    return isinstance(body, dict) and isinstance(body.get("error"), str)


async def test_deeply_nested_json_is_a_400(proxy: ProxyUnderTest) -> None:
    """A body nested 32,000 levels deep is a 400 on /proxy and on /callback, not a 500."""
    for path in ("/proxy", "/callback/r.token"):
        response = await proxy.client.post(path, content=DEEP)
        assert response.status_code == 400, path
        assert response.json()["error"] == "bad_request"


@pytest.mark.parametrize(
    "extra",
    [', "extra": NaN}', ', "note": "\\ud800"}'],
    ids=["NaN", "lone surrogate"],
)
async def test_json_that_cannot_be_passed_on_is_a_400(proxy: ProxyUnderTest, extra: str) -> None:
    """JSON's NaN, and a string that is not valid Unicode (a lone surrogate
    escape), are refused as bad JSON, not a 500; the client still gets its job from a
    proper callback."""
    request, job_id = await proxy.held_job()
    job = proxy.upstream.finish(job_id)
    body = json.dumps(job)[:-1] + extra
    refused = await proxy.upstream.to_proxy.post(  # type: ignore[union-attr]
        proxy.upstream.callbacks[job_id], content=body
    )
    await proxy.upstream.callback(job_id)
    answer = await request
    assert refused.status_code == 400
    assert refused.json()["error"] == "bad_request"
    assert (answer.status_code, answer.json()) == (200, job)


@HYPOTHESIS
@given(body=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
async def test_any_client_body_is_answered_without_a_500(
    proxy_factory: ProxyFactory, body: bytes
) -> None:
    """Arbitrary bytes or JSON posted to /proxy get a JSON answer below 500, or 502."""
    async with proxy_factory() as proxy:
        response = await proxy.client.post("/proxy", content=body)
    assert response.status_code != 500
    assert response.status_code < 500 or response.status_code == 502
    if response.status_code >= 400:
        assert _is_json_error(response)


@HYPOTHESIS
@given(body=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
async def test_any_callback_body_is_answered_without_a_500(
    proxy_factory: ProxyFactory, body: bytes
) -> None:
    """Arbitrary callback bodies to a live token get a 4xx JSON error or are taken, never 500;
    the held client then still gets a JSON answer."""
    async with proxy_factory(job_deadline=2.0) as proxy:
        request, job_id = await proxy.held_job()
        response = await proxy.upstream.to_proxy.post(  # type: ignore[union-attr]
            proxy.upstream.callbacks[job_id], content=body
        )
        await proxy.upstream.callback(job_id, proxy.upstream.finish(job_id))
        answer = await request
    assert response.status_code in (200, 400, 404), response.text
    if response.status_code >= 400:
        assert _is_json_error(response)
    assert answer.status_code == 200
    assert isinstance(answer.json(), dict)


@HYPOTHESIS
@given(
    status=st.sampled_from([200, 201, 400, 404, 409, 500, 502]),
    body=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)
async def test_any_start_answer_is_passed_on_or_a_502(
    proxy_factory: ProxyFactory, status: int, body: bytes
) -> None:
    """Whatever the job server answers to /start, the client gets its 4xx or a 502, JSON."""
    upstream = FakeJobServer()

    async def answer(_: dict[str, Any]) -> Response:
        return Response(body, status, media_type="application/json")

    upstream.on_start = answer
    async with proxy_factory(upstream, job_deadline=0.5) as proxy:
        response = await proxy.client.post("/proxy", json={"account": "a", "wait": True})
    assert response.status_code != 500
    assert response.status_code in (400, 404, 409, 502, 504), response.text
    assert isinstance(response.json(), dict)


async def test_callbacks_on_many_tokens_never_500(proxy: ProxyUnderTest) -> None:
    """Hostile token paths (very long, odd characters) are a 404 JSON, never a 500."""
    for token in ("x" * 5000, "%00", "a.b.c.d", "a..b", ".x.", "%E2%98%83"):
        response = await proxy.client.post(
            f"/callback/{token}", json={"id": "a", "state": "completed"}
        )
        assert response.status_code == 404, token
