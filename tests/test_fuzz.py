"""Schemathesis fuzzing of both servers, in process, against their own /openapi.json.

Each operation gets a bounded number of generated requests (valid and invalid), and
every response is checked by schemathesis (status codes, content types and bodies as
documented) and by our own rules: no server error other than the documented
502/503/504, and every error (status >= 400) is JSON ``{"error": str, "detail": ...}``.

The proxy talks to a fake job server at the transport level that answers ``/start``
with a running job and ``/status/{id}`` with the finished job, so a held request is
answered by the proxy's status poll within milliseconds. The job server runs with short
jobs and no callbacks (a fuzzed callback URL must never be dialled), in each dialect; in
the predictions dialect, errors are ``{"detail": ...}`` and every request carries a token.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import ignored_auth, not_a_server_error

from jobserver.app import create_app as create_jobserver_app
from jobserver.config import DialectName
from jobserver.config import Settings as JobServerSettings
from proxy.config import Settings as ProxySettings
from proxy.serving.app import create_app as create_proxy_app
from proxy.serving.openapi import OPENAPI

PROXY_URL = "http://proxy.test"
UPSTREAM_URL = "http://jobserver.test"
DOCUMENTED_SERVER_ERRORS = frozenset({502, 503, 504})
FUZZ_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # The apps answer in milliseconds, but a held request waits for its poll.
    suppress_health_check=[HealthCheck.too_slow],
)


class FakeJobServer:
    """Starts jobs that are finished by the time the proxy polls their status."""

    def __init__(self) -> None:
        self._ids = itertools.count(0x1000_0000_0000_0000)
        self.jobs: dict[str, dict[str, Any]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/start":
            body = json.loads(request.content)
            job_id = f"{next(self._ids):016x}"
            self.jobs[job_id] = {
                "id": job_id,
                "state": "completed",
                "startedAt": "2026-11-25T13:00:00.000Z",
                "proof": "A" * 40,
            }
            assert body["wait"] is False
            return httpx.Response(200, json={"state": "running", "id": job_id})
        if request.method == "GET" and path.startswith("/status/"):
            job = self.jobs.get(path.removeprefix("/status/"))
            if job is None:
                return httpx.Response(404, json={"error": "not_found", "detail": "no such job"})
            return httpx.Response(200, json=job)
        return httpx.Response(404, json={"error": "not_found", "detail": path})


def _proxy_app() -> Any:
    proxy_settings = ProxySettings(
        upstream_url=UPSTREAM_URL,
        public_url=PROXY_URL,
        job_deadline=2.0,
        poll_initial=0.005,
        poll_backoff_base=0.005,
        poll_backoff_cap=0.02,
        start_retry_budget=0.2,
    )
    return create_proxy_app(proxy_settings, transport=httpx.MockTransport(FakeJobServer().handle))


def _jobserver_app(dialect: DialectName = "work-sample") -> Any:
    jobserver_settings = JobServerSettings(
        dialect=dialect,
        job_duration=0.01,
        job_duration_spread=0.0,
        seed=1234,
        callback_drop_rate=1.0,
        request_timeout=5.0,
        shutdown_timeout=1.0,
    )
    return create_jobserver_app(jobserver_settings)


# A valid request may still meet a 422 that depends on state, not on its shape: an
# Idempotency-Key already used with another body (proxy), a proof bundle that does not
# verify (job server). schemathesis' default list has 409 for such cases, not 422.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
            }
        }
    }
)
proxy_schema = schemathesis.openapi.from_asgi("/openapi.json", _proxy_app(), config=CONFIG)
jobserver_schema = schemathesis.openapi.from_asgi("/openapi.json", _jobserver_app(), config=CONFIG)
predictions_schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _jobserver_app("predictions"), config=CONFIG
)


def _check_our_rules(response: schemathesis.Response) -> None:
    status = response.status_code
    assert status < 500 or status in DOCUMENTED_SERVER_ERRORS, f"undocumented {status}"
    if status >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), f"{status} is {content_type}"
        body = response.json()
        assert isinstance(body, dict), f"{status} body {body!r}"
        assert isinstance(body.get("error"), str), f"{status} body {body!r}"
        assert "detail" in body, f"{status} body {body!r}"


@proxy_schema.parametrize()
@FUZZ_SETTINGS
def test_proxy_api(case: schemathesis.Case[Any]) -> None:
    """Every proxy operation answers as documented, errors as JSON, no undocumented 5xx."""
    response = case.call()
    case.validate_response(response, excluded_checks=[not_a_server_error])
    _check_our_rules(response)


@jobserver_schema.parametrize()
@FUZZ_SETTINGS
def test_jobserver_api(case: schemathesis.Case[Any]) -> None:
    """Every job server operation answers as documented, in UTF-8 JSON, no undocumented 5xx."""
    response = case.call()
    case.validate_response(response, excluded_checks=[not_a_server_error])
    _check_our_rules(response)
    assert response.headers["content-type"] == ["application/json; charset=utf-8"]


@predictions_schema.parametrize()
@FUZZ_SETTINGS
def test_jobserver_predictions_api(case: schemathesis.Case[Any]) -> None:
    """Every operation of the predictions dialect answers as documented, in UTF-8 JSON, no
    undocumented 5xx; every error has a detail."""
    response = case.call(headers={"Authorization": "Bearer fuzz"})
    # ignored_auth expects some token to be refused: here every token is an account.
    case.validate_response(response, excluded_checks=[not_a_server_error, ignored_auth])
    status = response.status_code
    assert status < 500 or status in DOCUMENTED_SERVER_ERRORS, f"undocumented {status}"
    assert response.headers["content-type"] == ["application/json; charset=utf-8"]
    if status >= 400:
        body = response.json()
        assert isinstance(body, dict), f"{status} body {body!r}"
        assert isinstance(body.get("detail"), str), f"{status} body {body!r}"


def test_served_documents_are_valid_openapi() -> None:
    """Both /openapi.json documents validate against the OpenAPI 3.0 meta-schema."""
    proxy_schema.validate()
    jobserver_schema.validate()
    predictions_schema.validate()
    assert proxy_schema.raw_schema == json.loads(json.dumps(OPENAPI))
