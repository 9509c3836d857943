"""The settings design both programs share (``infra.settings_layers``): one error wording,
a flag for every setting."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import jobserver.__main__
import jobserver.config
import proxy.__main__
import proxy.config
from infra.settings_layers import LayeredSettings


@dataclass(frozen=True)
class Program:
    name: str
    prefix: str
    settings: type[LayeredSettings]
    error: type[Exception]
    build_parser: Callable[[], argparse.ArgumentParser]
    main: Callable[[Sequence[str] | None, Mapping[str, str] | None], int]


PROXY = Program(
    "jobproxy",
    "JOBPROXY_",
    proxy.config.Settings,
    proxy.config.ConfigError,
    proxy.__main__.build_parser,
    proxy.__main__.main,
)
JOBSERVER = Program(
    "jobserver",
    "JOBSERVER_",
    jobserver.config.Settings,
    jobserver.config.ConfigError,
    jobserver.__main__.build_parser,
    jobserver.__main__.main,
)
PROGRAMS = pytest.mark.parametrize("program", [PROXY, JOBSERVER], ids=lambda p: p.name)


def load_error(program: Program, **layers: Any) -> str:
    """The message of the error ``program``'s settings raise for ``layers``."""
    with pytest.raises(program.error) as error:
        program.settings.load(**layers)
    return str(error.value)


def test_both_programs_word_a_bad_setting_alike(tmp_path: Path) -> None:
    """The same bad value gets the same message from both programs, naming its origin."""
    path = tmp_path / "settings.toml"
    cases: list[dict[str, object]] = [
        {"env": {"PORT": "eighty"}},
        {"env": {"PORT": "tcp://10.0.0.7:8000"}},
        {"env": {"LOG_LEVEL": "loud"}},
        {"env": {"ACCESS_LOG": "maybe"}},
        {"env": {"BACKLOG": "0"}},
        {"env": {"CALLBACK_SECRET": "whsec_!!!"}},
        {"flags": {"port": "70000"}},
        {"flags": {"max_body_size": "1.5"}},
        {"config_path": path, "file": "colour = 'blue'\n"},
        {"config_path": path, "file": "port = '8001'\n"},
        {"config_path": path, "file": "port = = 1\n"},
        {"config_path": tmp_path / "absent.toml"},
    ]
    for case in cases:
        messages = []
        for program in (PROXY, JOBSERVER):
            layers = dict(case)
            if "file" in layers:
                path.write_text(str(layers.pop("file")))
            env = layers.get("env", {})
            assert isinstance(env, dict)
            layers["env"] = {program.prefix + key: value for key, value in env.items()}
            message = load_error(program, **layers)
            messages.append(
                message.replace(program.prefix, "<PREFIX>_").replace(program.name, "<NAME>")
            )
        assert messages[0] == messages[1], case
    assert load_error(PROXY, env={"JOBPROXY_PORT": "eighty"}) == (
        "bad setting port = 'eighty' (from JOBPROXY_PORT): must be an integer"
    )


@PROGRAMS
def test_a_bad_flag_value_exits_3_with_one_line(
    program: Program, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value stops either program with exit 3 and one line in the shared wording."""
    assert program.main(["--port", "eighty"], {}) == 3
    assert capsys.readouterr().err == (
        f"{program.name}: bad setting port = 'eighty' (from --port): must be an integer\n"
    )


def help_entries(parser: argparse.ArgumentParser) -> list[str]:
    """The options in ``--help``, one string each: the flag and its whole help text."""
    entries: list[str] = []
    for line in parser.format_help().splitlines():
        if line.strip().startswith("-"):
            entries.append(line.strip())
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    return [" ".join(entry.split()) for entry in entries]


@PROGRAMS
def test_help_lists_every_setting_with_its_default(
    program: Program, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--help has a --kebab-name flag for every setting, with its description and default."""
    monkeypatch.setenv("COLUMNS", "1000")  # no help text broken inside a word
    entries = help_entries(program.build_parser())
    for name, field in program.settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        if default is None or default == "" or isinstance(default, bool):
            default = {None: "unset", "": "empty", True: "true", False: "false"}[default]
        help_text = f"{field.description} (default: {default})"
        assert any(
            entry.startswith((f"{flag} ", f"{flag},")) and entry.endswith(f" {help_text}")
            for entry in entries
        ), f"{flag} is not in --help with its description and default"
    assert "--access-log, --no-access-log log every request (default: false)" in entries


@PROGRAMS
def test_every_flag_reaches_its_setting(program: Program) -> None:
    """Each setting's flag, given its default as text, sets that setting and nothing else."""
    defaults = program.settings()
    for name, field in program.settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            argv = [f"--no-{name.replace('_', '-')}" if not field.default else flag]
        else:
            argv = [flag, "" if field.default is None else str(field.default)]
        flags = program.settings.given_flags(program.build_parser().parse_args(argv))
        assert flags.keys() == {name}
        assert program.settings.load(flags=flags) == defaults
