"""The bench's command line (``bench/__main__.py``) and what it asks of the machine."""

from __future__ import annotations

import argparse
import importlib
import resource
from pathlib import Path
from typing import Any

import pytest

from bench import plot
from bench.__main__ import (
    USAGE_ERROR,
    build_parser,
    main,
    options_from,
    parse_choices,
    parse_proxy_setting,
    parse_rtts,
    parse_sizes,
)
from bench.options import TRANSPORTS, BenchOptions
from bench.runs import BenchResults
from bench.servers import proxy_environment
from bench.system import files_needed, raise_open_file_limit


def test_command_line_lists() -> None:
    """Sizes accept k suffixes; choices accept all/both and reject unknown words."""
    assert parse_sizes("1000, 5k,10_000") == (1_000, 5_000, 10_000)
    assert parse_choices("both", TRANSPORTS, "transport") == ("native", "httpx")
    assert parse_choices("httpx,httpx", TRANSPORTS, "transport") == ("httpx",)
    for bad in ("0", "1.5", "many", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="choose from"):
        parse_choices("curl", TRANSPORTS, "transport")


def test_round_trips_parse_as_milliseconds() -> None:
    """Round trips are non-negative milliseconds, in the order given, without repeats."""
    assert parse_rtts("0, 20,100,200") == (0.0, 20.0, 100.0, 200.0)
    assert parse_rtts("12.5,0,12.5") == (12.5, 0.0)
    for bad in ("-1", "fast", "", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rtts(bad)
    options = options_from(build_parser().parse_args(["--rtts", "100", "--network-jobs", "7"]))
    assert (options.rtts, options.network_jobs, options.network_accounts) == ((100.0,), 7, 20)


def test_proxy_settings_parse_and_reach_the_environment() -> None:
    """NAME=VALUE names a proxy setting; the last value given wins over the bench's own."""
    assert parse_proxy_setting("UPSTREAM_MAX_CONNECTIONS=50") == ("upstream_max_connections", "50")
    assert parse_proxy_setting("callback_secret=a=b") == ("callback_secret", "a=b")
    for bad, reason in (
        ("foo", "NAME=VALUE"),
        ("=1", "NAME=VALUE"),
        ("nope=1", "not a proxy setting"),
        ("port=1", "set by the bench"),
        ("upstream_transport=httpx", "--transport"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            parse_proxy_setting(bad)
    argv = ["--proxy-setting", "max_pending=5", "--proxy-setting", "MAX_PENDING=6"]
    options = options_from(build_parser().parse_args(argv))
    assert options.proxy_settings == (("max_pending", "6"),)
    assert options.to_json()["proxy_settings"] == {"max_pending": "6"}
    env = proxy_environment(options, "httpx")
    assert env["JOBPROXY_MAX_PENDING"] == "6"
    assert env["JOBPROXY_UPSTREAM_TRANSPORT"] == "httpx"
    assert proxy_environment(BenchOptions(), "native")["JOBPROXY_MAX_PENDING"] == "20000"


@pytest.mark.parametrize("setting", ["foo", "max_pending=lots", "port=1"])
def test_bad_proxy_setting_is_a_usage_error(
    setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed, unknown, reserved or invalid --proxy-setting exits 2 before anything runs."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--proxy-setting", setting])
    assert exit_info.value.code == USAGE_ERROR
    assert "--proxy-setting" in capsys.readouterr().err


def test_open_file_limit_never_goes_down() -> None:
    """Asking for fewer files than allowed leaves the limit as it is."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_open_file_limit(16) == soft
    assert files_needed(10_000) > 20_000


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib, --plot fails with a message naming the extra to install."""

    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(plot.PlotUnavailable, match=r"\.\[bench\]"):
        plot.write_plot(BenchResults(BenchOptions()), Path("unused.png"))
