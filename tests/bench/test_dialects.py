"""The bench in either dialect (``--dialect``): requests written and answers judged as the
dialect has them, and a tiny run of each scenario that the dialect changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import EXIT_OK, build_parser, main, options_from
from bench.dialects import DIALECTS
from bench.load import LoadPlan, _body, _headers, parse_plan
from bench.options import BenchOptions
from bench.outcomes import OK, judge
from bench.servers import proxy_environment
from infra.http1 import Answer

PREDICTIONS = DIALECTS["predictions"]
SUCCEEDED = {
    "id": "wlyysbcpjw4akpr7z5e6ndwc5m",
    "status": "succeeded",
    "output": {"proof": "703A5070D8DDB8EB205972EC7D8E982BD98B041D"},
    "started_at": "2026-12-04T18:07:36.311Z",
}


def outcome(status: int, body: object, *, wait: bool = True) -> str:
    answer = Answer(status, json.dumps(body).encode())
    return judge(answer, wait=wait, dialect=PREDICTIONS).outcome


def test_a_prediction_is_judged_by_its_status_output_and_started_at() -> None:
    """succeeded with a proof in its output and a start time is ok, as a 200 of the proxy
    or a 201 of the job server; anything else is named."""
    assert outcome(200, SUCCEEDED) == OK
    assert outcome(201, SUCCEEDED) == OK
    held = judge(Answer(200, json.dumps(SUCCEEDED).encode()), wait=True, dialect=PREDICTIONS)
    assert held.started_at == pytest.approx(1_796_409_256.311)
    assert outcome(200, {**SUCCEEDED, "status": "failed"}) == "state-failed"
    assert outcome(200, {**SUCCEEDED, "output": None}) == "bad-job"
    assert outcome(200, {**SUCCEEDED, "started_at": None}) == "bad-job"
    assert outcome(201, {"id": "p", "status": "starting"}, wait=False) == OK
    assert outcome(422, {"detail": "input is required"}) == "http-422"
    # A work-sample job is not a prediction.
    work_sample = {"id": "p", "state": "completed", "proof": "0" * 40, "startedAt": "x"}
    assert outcome(200, work_sample) == "state-None"


def test_a_predictions_request_carries_its_token_and_prefer_wait() -> None:
    """The account is the bearer token; a held request prefers to wait; the body is input."""
    plan = LoadPlan("http://h:1/v1/predictions", 4, 2, "acct", dialect="predictions")
    assert json.loads(_body(plan, 3)) == {"input": {"prompt": "job 3"}}
    assert _headers(plan, 3) == "Authorization: Bearer acct-1\r\nPrefer: wait\r\n"
    unheld = LoadPlan("http://h:1/v1/predictions", 4, 2, "acct", wait=False, dialect="predictions")
    assert _headers(unheld, 0) == "Authorization: Bearer acct-0\r\n"
    work_sample = LoadPlan("http://h:1/proxy", 4, 2, "acct")
    assert json.loads(_body(work_sample, 1)) == {"account": "acct-1", "wait": True}
    assert _headers(work_sample, 1) == ""


def test_the_dialect_reaches_the_generator_the_job_server_and_the_proxy() -> None:
    """--dialect goes on the generator's command line and into the proxy's settings."""
    plan = LoadPlan("http://h:1/v1/predictions", 4, 2, "acct", dialect="predictions")
    assert parse_plan(plan.argv()).dialect == "predictions"
    assert "--dialect" not in LoadPlan("http://h:1/proxy", 4, 2, "acct").argv()
    options = options_from(build_parser().parse_args(["--dialect", "predictions"]))
    assert options.dialect == "predictions"
    assert options.to_json()["dialect"] == "predictions"
    env = proxy_environment(options, "native")
    assert env["JOBPROXY_UPSTREAM_DIALECT"] == "predictions"
    assert proxy_environment(BenchOptions(), "native")["JOBPROXY_UPSTREAM_DIALECT"] == (
        "work-sample"
    )


def test_an_unknown_dialect_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--dialect", "soap"])
    assert "--dialect" in capsys.readouterr().err


def test_quick_bench_in_the_predictions_dialect(tmp_path: Path) -> None:
    """The 50-job and scale runs through the proxy in front of ``jobserver --dialect
    predictions``, and straight to it, complete every job."""
    output = tmp_path / "results.json"
    argv = ["--quick", "--dialect", "predictions", "--scenarios", "fifty,scale"]
    assert main([*argv, "--fifty-repeats", "1", "--output", str(output)]) == EXIT_OK
    document = json.loads(output.read_text())
    assert document["options"]["dialect"] == "predictions"
    (fifty,) = document["fifty"]
    assert fifty["run"]["completed"] == fifty["jobs"] == 50
    assert fifty["per_start_s"] > 0  # the unheld starts were judged ok: 201, starting
    (scale,) = document["scale"]
    assert scale["direct"]["completed"] == 20
    assert scale["proxied"]["native"]["completed"] == 20
    assert scale["proxied"]["native"]["errors"] == {}
