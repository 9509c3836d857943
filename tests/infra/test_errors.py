"""The error answer both servers share: its body, its Retry-After, its default detail."""

from __future__ import annotations

import jobserver.errors
import proxy.errors
from infra.errors import AnsweredError, error_body, retry_after_header


class Busy(AnsweredError):
    """The server is busy."""

    status_code = 503
    error = "busy"


def test_the_body_is_the_word_and_the_sentence() -> None:
    """An error's body is {"error", "detail"}, its detail the class's docstring by default."""
    assert Busy().body() == {"error": "busy", "detail": "The server is busy."}
    assert Busy("come back").body() == error_body("busy", "come back")
    assert Busy().headers == {}


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    """Retry-After is rounded to whole seconds and never 0, which invites a retry at once."""
    assert retry_after_header(0.2) == {"Retry-After": "1"}
    assert retry_after_header(2.6) == {"Retry-After": "3"}
    assert Busy(retry_after=0).headers == {"Retry-After": "1"}


def test_both_servers_errors_share_the_base() -> None:
    """The proxy's and the job server's errors answer in the one shape."""
    assert issubclass(proxy.errors.ProxyError, AnsweredError)
    assert issubclass(jobserver.errors.ApiError, AnsweredError)
    assert proxy.errors.AtCapacity("full").headers == {"Retry-After": "1"}
    assert jobserver.errors.ShuttingDown().headers == {"Retry-After": "1"}
    assert jobserver.errors.BadRequest("no account").body() == error_body(
        "bad_request", "no account"
    )
