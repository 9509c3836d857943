"""The job model: Retry-After."""

from __future__ import annotations

import httpx
import pytest

from proxy.polling.status import retry_after_seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("2", 2.0), ("0.5", 0.5), ("-1", 0.0), ("soon", 0.0), ("", 0.0), ("inf", 0.0)],
)
def test_retry_after_parsing(value: str, seconds: float) -> None:
    """Retry-After in seconds is read; negative or unreadable values are ignored (no floor)."""
    headers = {"Retry-After": value} if value else {}
    assert retry_after_seconds(httpx.Response(503, headers=headers)) == seconds
