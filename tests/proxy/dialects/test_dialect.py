"""Dialects: the work sample's and the predictions API's requests as the proxy reads
them, the bodies it sends upstream, and dialect files that are wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.dialects.dialect import (
    MAX_LANE_LENGTH,
    DialectError,
    JobRequest,
    UnreadableJob,
    load_dialect,
)
from proxy.errors import BadRequest, UpstreamBadResponse

WORK_SAMPLE = load_dialect("work-sample")
PREDICTIONS = load_dialect("predictions")

# The work sample: POST /proxy {"account", "wait", "callback"}


def _parse(fields: Any) -> JobRequest:
    return WORK_SAMPLE.parse(json.dumps(fields).encode(), [], False)


def test_minimal_request() -> None:
    """Only the account is required; wait defaults to false and callback to none."""
    assert _parse({"account": "acme"}) == JobRequest("acme", False, None, {"account": "acme"})


def test_full_request() -> None:
    """account, wait and callback are read as given; unknown fields are ignored."""
    parsed = _parse(
        {"account": "a", "wait": True, "callback": "https://client.test/cb?x=1", "other": 1}
    )
    assert parsed == JobRequest("a", True, "https://client.test/cb?x=1", {"account": "a"})


def test_account_length_bounds() -> None:
    """An account of 1 to 256 characters is accepted."""
    assert _parse({"account": "x"}).lane == "x"
    long = "é" * MAX_LANE_LENGTH
    assert _parse({"account": long}).lane == long


def test_null_callback_means_none() -> None:
    """A null callback is the same as no callback."""
    assert _parse({"account": "a", "callback": None}).callback is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "JSON"),
        (b"{", "JSON"),
        (b"\xff", "JSON"),
        (b"NaN", "not JSON"),
        (b"[]", "object"),
        (b'"acme"', "object"),
        (b"null", "object"),
        (b"{}", "account"),
        (b'{"account": null}', "account"),
        (b'{"account": ""}', "account"),
        (b'{"account": ["a"]}', "account"),
        (b'{"account": true}', "account"),
        (b'{"account": "' + b"x" * (MAX_LANE_LENGTH + 1) + b'"}', "account"),
        (b'{"account": "a", "wait": 1}', "wait"),
        (b'{"account": "a", "wait": null}', "wait"),
        (b'{"account": "a", "wait": "true"}', "wait"),
        (b'{"account": "a", "callback": 5}', "callback"),
        (b'{"account": "a", "callback": ""}', "callback"),
        (b'{"account": "a", "callback": "/relative"}', "callback"),
        (b'{"account": "a", "callback": "http://"}', "callback"),
        (b'{"account": "a", "callback": "mailto:x@y.test"}', "callback"),
        (b'{"account": "a", "callback": "ftp://host/x"}', "callback"),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, field: str) -> None:
    """Each malformed body is a BadRequest whose detail names the field or the problem."""
    with pytest.raises(BadRequest) as raised:
        WORK_SAMPLE.parse(body, [], False)
    assert field in raised.value.detail


@pytest.mark.parametrize(
    "callback",
    ["127.0.0.1:9000/done", "client.test/cb", "HTTPS://client.test:443/a?b=c#d", "h.test"],
)
def test_callbacks_the_job_server_takes_are_taken(callback: str) -> None:
    """A callback with or without a scheme (then called over http) is passed on as given."""
    assert _parse({"account": "a", "callback": callback}).callback == callback


@pytest.mark.parametrize(
    "callback",
    [
        "http://client.test:99999/x",
        "http://-bad-.test/",
        "http://a b/",
        "http://x.test/" + "a" * 2048,
    ],
)
def test_callbacks_the_job_server_refuses_are_400(callback: str) -> None:
    """A callback with a port out of range, a bad host, a space or too long is refused."""
    with pytest.raises(BadRequest, match="callback"):
        _parse({"account": "a", "callback": callback})


@pytest.mark.parametrize("callback", ["http://[abc", "http://[::1/x", "https://]/"])
def test_unparseable_callback_url_is_400(callback: str) -> None:
    """A callback URL that cannot be read is a BadRequest, not an unexpected error."""
    with pytest.raises(BadRequest, match="callback"):
        _parse({"account": "a", "callback": callback})


def test_upstream_body_never_waits_and_is_the_work_samples_bytes() -> None:
    """The body sent upstream always has wait false and carries the given callback only,
    in the bytes the work sample's job server has always been sent."""
    request = _parse({"account": "a", "wait": True, "callback": "http://client.test/cb"})
    assert WORK_SAMPLE.upstream_body(request, "http://proxy.test/callback/t") == (
        b'{"account":"a","wait":false,"callback":"http://proxy.test/callback/t"}'
    )
    forwarded = _parse({"account": "a", "extra": 1})
    assert WORK_SAMPLE.upstream_body(forwarded, None) == b'{"account":"a","wait":false}'


def test_a_work_sample_job_is_read_where_the_dialect_says() -> None:
    """Ids and states at /id and /state; completed and failed end a job, failed fails."""
    job = {"id": "abc", "state": "completed"}
    assert (WORK_SAMPLE.job_id(job), WORK_SAMPLE.state(job)) == ("abc", "completed")
    assert WORK_SAMPLE.is_final(job)
    assert not WORK_SAMPLE.is_final({"id": "abc", "state": "running"})
    assert WORK_SAMPLE.is_failed("failed")
    assert WORK_SAMPLE.status_of("a/b") == "/status/a%2Fb"
    for bad in ({}, {"id": ""}, {"id": 7}, {"id": "x" * 257}):
        with pytest.raises(UpstreamBadResponse):
            WORK_SAMPLE.job_id(bad)


# The predictions API: POST /v1/predictions {"input", "webhook"}, Authorization, Prefer


TOKEN = [(b"authorization", b"Bearer r8_secret"), (b"prefer", b"wait")]


def test_a_prediction_is_held_by_prefer_wait_in_the_lane_of_its_token() -> None:
    """Prefer: wait holds it; without, it is forwarded; the token is its lane and goes
    along; every field is passed on."""
    body = orjson.dumps({"input": {"prompt": "x"}, "version": "v1"})
    held = PREDICTIONS.parse(body, TOKEN, True)
    forwarded = PREDICTIONS.parse(body, TOKEN, False)
    assert (held.held, forwarded.held) == (True, False)
    assert held.lane == "Bearer r8_secret"
    assert held.headers == ((b"authorization", b"Bearer r8_secret"),)
    assert held.fields == {"input": {"prompt": "x"}, "version": "v1"}


def test_a_held_prediction_gets_the_proxys_webhook_and_only_completed_events() -> None:
    """A held prediction's webhook is the proxy's, its filter completed only; a forwarded
    one is passed on as the client sent it."""
    body = orjson.dumps({"input": {}, "webhook": "https://client.test/hook"})
    held = PREDICTIONS.parse(body, TOKEN, True)
    assert orjson.loads(PREDICTIONS.upstream_body(held, "http://proxy.test/callback/t")) == {
        "input": {},
        "webhook": "http://proxy.test/callback/t",
        "webhook_events_filter": ["completed"],
    }
    forwarded = PREDICTIONS.parse(body, TOKEN, False)
    assert PREDICTIONS.upstream_body(forwarded, forwarded.callback) == body


def test_a_prediction_without_its_token_is_400_naming_the_header() -> None:
    """The lane header is required: its absence is a 400 that names it."""
    with pytest.raises(BadRequest, match="authorization"):
        PREDICTIONS.parse(b'{"input": {}}', [], True)


def test_prediction_states() -> None:
    """succeeded, failed and canceled end a prediction; failed and canceled are failures."""
    assert PREDICTIONS.is_final({"id": "p", "status": "canceled"})
    assert not PREDICTIONS.is_final({"id": "p", "status": "processing"})
    assert PREDICTIONS.is_failed("canceled")
    assert not PREDICTIONS.is_failed("succeeded")
    assert PREDICTIONS.status_of("p1") == "/v1/predictions/p1"


# Dialect files


GOOD = (Path(__file__).parents[3] / "proxy" / "dialects" / "work-sample.toml").read_text()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('id = "/id"\n', ""), "job.id"),
        (('id = "/id"', 'id = "id"'), "job.id"),
        (('final = ["completed", "failed"]', "final = []"), "job.final"),
        (('failed = ["failed"]', 'failed = ["gone"]'), "job.failed"),
        (('by = "body"\npointer = "/wait"', 'by = "sometimes"'), "hold.by"),
        (('path = "/status/{id}"', 'path = "/status"'), "status.path"),
        (('method = "POST"', 'method = "GET"'), "start.method"),
        (('keep = ["account"]', 'keep = "some"'), "start.keep"),
    ],
)
def test_a_wrong_dialect_file_names_the_file_and_the_key(
    tmp_path: Path, change: tuple[str, str], key: str
) -> None:
    """A dialect file that is wrong is refused with one line naming the file and the key."""
    path = tmp_path / "mine.toml"
    assert change[0] in GOOD
    path.write_text(GOOD.replace(change[0], change[1]))
    with pytest.raises(DialectError) as raised:
        load_dialect(str(path))
    message = str(raised.value)
    assert key in message
    assert str(path) in message
    assert "\n" not in message


def test_an_unknown_dialect_name_says_what_there_is() -> None:
    """Neither a built-in name nor a file: the error lists the built-in ones."""
    with pytest.raises(DialectError, match="work-sample, predictions"):
        load_dialect("graphql")


@pytest.mark.parametrize(
    ("job", "why"),
    [
        ([1], "not a JSON object"),
        ({"state": "completed"}, "no valid job id at /id"),
        ({"id": "", "state": "completed"}, "no valid job id at /id"),
        ({"id": "x" * 1_000, "state": "completed"}, "no valid job id at /id"),
        ({"id": 7, "state": "completed"}, "no valid job id at /id"),
        ({"id": "abc"}, "no job state at /state"),
        ({"id": "abc", "state": 3}, "no job state at /state"),
    ],
)
def test_a_job_is_read_in_one_place_and_what_is_missing_is_said(job: object, why: str) -> None:
    """Callbacks, status answers and starts' answers are read by Dialect.read."""
    with pytest.raises(UnreadableJob, match=why):
        WORK_SAMPLE.read(job)


def test_a_starts_answer_may_come_without_a_state() -> None:
    assert WORK_SAMPLE.read({"id": "abc"}, with_state=False) == ("abc", None)
    assert PREDICTIONS.read({"id": "p", "status": "starting"}) == ("p", "starting")
