"""The job model: final states, job ids, Retry-After."""

from __future__ import annotations

import httpx
import pytest

from proxy.errors import UpstreamBadResponse
from proxy.jobs import JobState, is_terminal, job_id_of
from proxy.polling import retry_after_seconds

RUNNING = {"state": "running", "id": "0123456789abcdef"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("2", 2.0), ("0.5", 0.5), ("-1", 0.0), ("soon", 0.0), ("", 0.0), ("inf", 0.0)],
)
def test_retry_after_parsing(value: str, seconds: float) -> None:
    """Retry-After in seconds is read; negative or unreadable values are ignored (no floor)."""
    headers = {"Retry-After": value} if value else {}
    assert retry_after_seconds(httpx.Response(503, headers=headers)) == seconds


def test_job_helpers() -> None:
    """is_terminal knows the final states; job_id_of refuses answers without a usable id."""
    assert is_terminal({"state": "completed"})
    assert is_terminal({"state": "failed"})
    assert not is_terminal({"state": "running"})
    assert not is_terminal({})
    assert job_id_of(RUNNING) == RUNNING["id"]
    for bad in ({}, {"id": ""}, {"id": 7}, {"id": "x" * 257}):
        with pytest.raises(UpstreamBadResponse):
            job_id_of(bad)


def test_states_are_strings_on_the_wire() -> None:
    """JobState members compare equal to the words the job server writes."""
    assert [state.value for state in JobState] == ["running", "completed", "failed"]
    assert JobState.COMPLETED == "completed"
