"""The jobproxy command line: bad configuration stops it with one line and exit 3."""

from __future__ import annotations

import socket

import pytest

from proxy.__main__ import STARTUP_FAILURE, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "port: 99999 is not a TCP port"),
        (["--callback-secret", "whsec_!!!"], "callback_secret"),
        (["--upstream-url", "nowhere"], "upstream_url: 'nowhere'"),
        (["--job-deadline", "soon"], "job_deadline: 'soon' is not a valid float"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_3(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value is reported on one stderr line naming it; the exit code is 3."""
    assert main(argv) == STARTUP_FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_port_in_use_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that cannot be bound is reported on one line; the exit code is 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == STARTUP_FAILURE
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
