"""Settings: layering, checks, and the documented defaults file."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from jobserver.config import ConfigError, Settings, env_name, flag_name, load_settings

DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "config" / "jobserver.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobserver.toml"
    path.write_text(text)
    return path


def test_no_layers_give_the_defaults() -> None:
    """Without file, env or flags, the settings are the dataclass defaults."""
    assert load_settings({}, {}, None) == Settings()


def test_defaults_file_holds_exactly_the_defaults() -> None:
    """config/jobserver.toml loads to the same settings as no file at all."""
    assert load_settings({}, {}, DEFAULTS_FILE) == Settings()


def test_defaults_file_documents_every_setting() -> None:
    """Every setting appears in config/jobserver.toml (seed commented out) under a comment."""
    lines = DEFAULTS_FILE.read_text().splitlines()
    for spec in dataclasses.fields(Settings):
        pattern = re.compile(rf"^#? ?{spec.name} = ")
        index = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
        assert index is not None, f"{spec.name} is not in {DEFAULTS_FILE.name}"
        assert lines[index - 1].startswith("#"), f"{spec.name} has no comment above it"
    keys = set(tomllib.loads(DEFAULTS_FILE.read_text()))
    assert keys == {f.name for f in dataclasses.fields(Settings)} - {"seed"}


def test_layers_apply_lowest_first(tmp_path: Path) -> None:
    """TOML overrides defaults, env overrides TOML, flags override env."""
    path = write_toml(tmp_path, "job_duration = 1.0\nport = 9000\nseed = 4\n")
    env = {"JOBSERVER_JOB_DURATION": "2.0", "JOBSERVER_SEED": "5"}
    settings = load_settings({"job_duration": "3.0"}, env, path)
    assert settings.job_duration == 3.0
    assert settings.seed == 5
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"


def test_env_values_are_parsed_by_type() -> None:
    """Env strings become ints, floats, booleans and optional ints."""
    env = {
        "JOBSERVER_PORT": "0",
        "JOBSERVER_FAILURE_RATE": "0.25",
        "JOBSERVER_ACCESS_LOG": "yes",
        "JOBSERVER_SEED": "",
        "JOBSERVER_LOG_LEVEL": "debug",
        "JOBSERVER_UNRELATED": "ignored",
    }
    settings = load_settings({}, env, None)
    assert (settings.port, settings.failure_rate, settings.access_log) == (0, 0.25, True)
    assert settings.seed is None
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("failure_rate", "1.5"),
        ("callback_drop_rate", "-0.1"),
        ("port", "70000"),
        ("port", "eighty"),
        ("job_duration", "-1"),
        ("job_duration", "nan"),
        ("callback_attempts", "0"),
        ("start_error_status", "404"),
        ("log_level", "loud"),
        ("access_log", "maybe"),
        ("secret", ""),
        ("callback_secret", "whsec_not base64!"),
    ],
)
def test_bad_values_name_the_key_and_the_value(name: str, raw: str) -> None:
    """A bad value from env or flags is a ConfigError naming the key and the value."""
    for flags, env in (({name: raw}, {}), ({}, {env_name(name): raw})):
        with pytest.raises(ConfigError) as error:
            load_settings(flags, env, None)
        assert name in str(error.value)
        assert repr(raw) in str(error.value)


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    """A key the settings do not have is refused, naming it and its value."""
    path = write_toml(tmp_path, 'job_durration = 0.5\nhost = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match=r"unknown setting job_durration = 0\.5"):
        load_settings({}, {}, path)


def test_toml_values_must_have_the_right_type(tmp_path: Path) -> None:
    """TOML is typed: a quoted number for a numeric setting is refused."""
    path = write_toml(tmp_path, 'port = "8001"\n')
    with pytest.raises(ConfigError, match="port"):
        load_settings({}, {}, path)


def test_missing_or_broken_file_is_an_error(tmp_path: Path) -> None:
    """An unreadable or invalid TOML file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({}, {}, tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, {}, write_toml(tmp_path, "port = = 1\n"))


def test_names_map_one_to_one() -> None:
    """Each setting has one env name and one flag."""
    assert env_name("callback_drop_rate") == "JOBSERVER_CALLBACK_DROP_RATE"
    assert flag_name("callback_drop_rate") == "--callback-drop-rate"


def test_settings_are_frozen() -> None:
    """Settings cannot change after start-up."""
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_unknown_env_variables_are_warned_about_and_ignored() -> None:
    """JOBSERVER_* variables that name no setting are reported and ignored;
    JOBSERVER_CONFIG, which names the file, is not reported."""
    warnings: list[str] = []
    env = {
        "JOBSERVER_SERVICE_HOST": "10.0.0.7",
        "JOBSERVER_CONFIG": "jobserver.toml",
        "JOBSERVER_JOB_DURATION": "2",
    }
    settings = load_settings({}, env, None, warn=warnings.append)
    assert settings.job_duration == 2
    assert warnings == ["ignored JOBSERVER_SERVICE_HOST: no such setting"]


def test_a_service_link_in_a_setting_says_what_it_is() -> None:
    """JOBSERVER_PORT=tcp://... is an error naming Kubernetes service links and the way out;
    a flag for the same setting wins without an error."""
    env = {"JOBSERVER_PORT": "tcp://10.0.0.7:8001"}
    with pytest.raises(ConfigError, match=r"Kubernetes service link.*enableServiceLinks"):
        load_settings({}, env, None)
    assert load_settings({"port": "8001"}, env, None).port == 8001
