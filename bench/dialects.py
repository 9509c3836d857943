"""The dialects the bench speaks (``--dialect``): how a request is written and a job read.

The bench runs the same scenarios in either of the simulator's dialects: the job server
is started with ``--dialect``, the proxy with ``upstream_dialect``, and the load
generator writes its requests and judges its answers as :class:`BenchDialect` says.

* ``work-sample``: ``POST /start {"account", "wait"}`` (the proxy at ``/proxy``);
  a held job answers ``{"id", "state": "completed", "startedAt", "proof"}``.
* ``predictions``: ``POST /v1/predictions {"input"}`` with ``Authorization: Bearer
  <account>``, held with ``Prefer: wait``; a held prediction answers ``{"id", "status":
  "succeeded", "started_at", "output": {"proof"}}``, an unheld one ``201`` ``starting``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

DialectName = Literal["work-sample", "predictions"]
DIALECT_NAMES: tuple[DialectName, ...] = ("work-sample", "predictions")


@dataclass(frozen=True, slots=True)
class BenchDialect:
    """How the bench writes a job's request and reads its answer in one dialect."""

    name: DialectName
    #: Where the proxy is asked, and where the job server is asked directly.
    proxy_path: str
    start_path: str
    #: The job's state field, its state once held to the end, and once accepted.
    state_field: str
    completed: str
    accepted: str
    #: The status of an answer that accepted a job without holding it.
    accepted_status: int
    started_field: str
    proof_of: Callable[[dict[str, Any]], object]
    body_of: Callable[[str, int, bool], bytes]
    headers_of: Callable[[str, bool], str]

    def body(self, account: str, number: int, wait: bool) -> bytes:
        """The request's JSON body: job ``number`` of ``account``, held if ``wait``."""
        return self.body_of(account, number, wait)

    def headers(self, account: str, wait: bool) -> str:
        """The request's header lines beyond the bench's own, each ending in CRLF;
        ``wait``: a held request in this dialect's own way (the forms add theirs)."""
        return self.headers_of(account, wait)


def _work_sample_body(account: str, number: int, wait: bool) -> bytes:
    return json.dumps({"account": account, "wait": wait}).encode()


def _predictions_body(account: str, number: int, wait: bool) -> bytes:
    return json.dumps({"input": {"prompt": f"job {number}"}}).encode()


def _predictions_headers(account: str, wait: bool) -> str:
    held = "Prefer: wait\r\n" if wait else ""
    return f"Authorization: Bearer {account}\r\n{held}"


def _output_proof(job: dict[str, Any]) -> object:
    output = job.get("output")
    return output.get("proof") if isinstance(output, dict) else None


DIALECTS: dict[str, BenchDialect] = {
    "work-sample": BenchDialect(
        name="work-sample",
        proxy_path="/proxy",
        start_path="/start",
        state_field="state",
        completed="completed",
        accepted="running",
        accepted_status=200,
        started_field="startedAt",
        proof_of=lambda job: job.get("proof"),
        body_of=_work_sample_body,
        headers_of=lambda account, wait: "",
    ),
    "predictions": BenchDialect(
        name="predictions",
        proxy_path="/v1/predictions",
        start_path="/v1/predictions",
        state_field="status",
        completed="succeeded",
        accepted="starting",
        accepted_status=201,
        started_field="started_at",
        proof_of=_output_proof,
        body_of=_predictions_body,
        headers_of=_predictions_headers,
    ),
}
