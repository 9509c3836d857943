"""The jobclient's verdict: PASSED or FAILED for a run, and the report that says so.

:func:`judge` passes a run when every job completed with a well-formed proof, no job id
came twice and the whole run met the deadline; on PASSED its :class:`Verdict` carries
the proof bundle (see :mod:`jobserver.proofs`). :func:`render_text` speaks in the
original client's words, :func:`render_json` gives the same facts to machines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobserver.jobclient.run import RunReport
from jobserver.proofs import encode_bundle

RESULT_PASSED = "PASSED"
RESULT_FAILED = "FAILED"
# Text output lists this many failures one by one; --json lists them all.
LISTED_FAILURES = 20


@dataclass(frozen=True)
class Verdict:
    """PASSED or FAILED, why it failed, and on PASSED the encoded proof bundle."""

    passed: bool
    reasons: tuple[str, ...]
    proof: str | None

    @property
    def result(self) -> str:
        return RESULT_PASSED if self.passed else RESULT_FAILED


def judge(report: RunReport, deadline: float) -> Verdict:
    """PASSED when every job completed with a well-formed proof and the run met the deadline."""
    reasons: list[str] = []
    failed = len(report.failures)
    if not report.outcomes:
        reasons.append("no jobs ran")
    if failed:
        reasons.append(f"{failed} job{'s' if failed != 1 else ''} failed")
    ids = [job.id for job in report.jobs]
    repeated = len(ids) - len(set(ids))
    if repeated:
        reasons.append(f"{repeated} answer{'s' if repeated != 1 else ''} repeated a job id")
    if report.total > deadline:
        reasons.append(f"total {report.total:.3f} s over the {deadline:g} s deadline")
    if reasons:
        return Verdict(passed=False, reasons=tuple(reasons), proof=None)
    return Verdict(passed=True, reasons=(), proof=encode_bundle(report.jobs))


def render_text(report: RunReport, verdict: Verdict) -> str:
    """The summary in the original client's words, ending with the result (and the proof)."""
    lines = [f"Succeeded: {len(report.jobs)}"]
    failures = report.failures
    if failures:
        lines.append(f"Failed: {len(failures)}")
        lines.extend(f"  job {o.number}: {o.failure}" for o in failures[:LISTED_FAILURES])
        if len(failures) > LISTED_FAILURES:
            lines.append(f"  ... and {len(failures) - LISTED_FAILURES} more")
    lines.append(f"Average Duration: {report.average:.9f} seconds")
    lines.append(f"Total Duration: {report.total:.9f} seconds")
    lines.extend(["", f"WORK SAMPLE RESULT: {verdict.result}"])
    lines.extend(f"Reason: {reason}" for reason in verdict.reasons)
    if verdict.proof is not None:
        lines.extend(["", "Proof :", verdict.proof])
    return "\n".join(lines)


def render_json(report: RunReport, verdict: Verdict, deadline: float) -> str:
    """One JSON object with the same facts as :func:`render_text`."""
    document = {
        "account": report.account,
        "jobs": len(report.outcomes),
        "succeeded": len(report.jobs),
        "failed": len(report.failures),
        "failures": [{"job": o.number, "reason": o.failure} for o in report.failures],
        "average": round(report.average, 3),
        "total": round(report.total, 3),
        "deadline": deadline,
        "result": verdict.result,
        "reasons": list(verdict.reasons),
        "proof": verdict.proof,
    }
    return json.dumps(document)
