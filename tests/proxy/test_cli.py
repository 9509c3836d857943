"""The jobproxy command line: every setting is a flag; bad configuration is one line, exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.__main__ import STARTUP_FAILURE, build_parser, main
from proxy.config import Settings
from proxy.shared.bus import error_words
from tests.conftest import loopback_socket, run_program


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "bad setting port = '99999' (from --port): must be at most 65535"),
        (["--callback-secret", "whsec_!!!"], "callback_secret = 'whsec_!!!' (from --callback"),
        (["--upstream-url", "nowhere"], "upstream_url = 'nowhere' (from --upstream-url)"),
        (["--job-deadline", "soon"], "job_deadline = 'soon' (from --job-deadline): must be a"),
        (["--log-level", "loud"], "log_level = 'loud' (from --log-level): must be 'debug'"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_3(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value is reported on one stderr line naming it; the exit code is 3."""
    assert main(argv, environ={}) == STARTUP_FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("jobproxy: bad setting ")
    assert message in err


def test_a_bad_file_is_one_line_and_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key in the --config file stops the proxy with one line naming it; exit 3."""
    path = tmp_path / "proxy.toml"
    path.write_text("colour = 'blue'\n")
    assert main(["--config", str(path)], environ={}) == STARTUP_FAILURE
    err = capsys.readouterr().err
    assert err == f"jobproxy: bad setting colour = 'blue' (from {path}): no such setting\n"


def test_usage_shows_the_documented_command_line() -> None:
    """The usage line has the flags DESIGN §5 documents (--help lists every setting)."""
    usage = " ".join(build_parser().format_usage().split())
    for flag in ("--host", "--port", "--config", "--upstream-url", "--public-url", "--redis-url"):
        assert f"[{flag} " in usage, f"{flag} is not in the usage line"


def test_flags_set_every_kind_of_setting() -> None:
    """Flags reach the settings they name: numbers, text, choices and booleans."""
    argv = ["--poll-k", "3", "--replica-id", "r1", "--log-level", "debug", "--access-log"]
    options = build_parser().parse_args(argv)
    settings = Settings.load(flags=Settings.given_flags(options))
    assert (settings.poll_k, settings.replica_id) == (3.0, "r1")
    assert (settings.log_level, settings.access_log) == ("debug", True)
    assert Settings.given_flags(build_parser().parse_args(["--no-access-log"])) == {
        "access_log": False
    }


def test_port_in_use_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that cannot be bound is reported on one line; the exit code is 3."""
    with loopback_socket() as taken:
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)], environ={}) == STARTUP_FAILURE
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


async def test_the_proxy_logs_the_settings_it_was_given() -> None:
    """At start-up the proxy logs each setting that differs from its default, secrets
    masked, as the job server does."""
    async with run_program(
        "jobproxy", "--job-deadline", "12", "--callback-secret", "hush-hush"
    ) as proxy:
        log = proxy.log_tail()
    (line,) = [line for line in log.splitlines() if "settings: " in line]
    assert "job_deadline=12.0" in line
    assert "callback_secret=***" in line
    assert "hush-hush" not in log


def test_a_redis_error_reads_as_words_a_log_line_goes_on_after() -> None:
    refused = ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    assert error_words(refused) == "Error 111 connecting to 127.0.0.1:6379. Connection refused"
    assert error_words(TimeoutError()) == "TimeoutError"
