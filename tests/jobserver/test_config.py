"""Settings: layering, checks, and the documented defaults file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.settings_layers import env_name, flag_name
from jobserver.config import ConfigError, Settings

DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "config" / "jobserver.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobserver.toml"
    path.write_text(text)
    return path


def test_no_layers_give_the_defaults() -> None:
    """Without file, env or flags, the settings are the class's defaults."""
    assert Settings.load(flags={}, env={}) == Settings()


def test_defaults_file_holds_exactly_the_defaults() -> None:
    """config/jobserver.toml loads to the same settings as no file at all."""
    assert Settings.load(config_path=DEFAULTS_FILE) == Settings()


def test_defaults_file_documents_every_setting() -> None:
    """config/jobserver.toml has every setting, commented, with its default (seed commented out)."""
    lines = DEFAULTS_FILE.read_text().splitlines()
    for name in Settings.model_fields:
        pattern = re.compile(rf"^#? ?{name} = ")
        index = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
        assert index is not None, f"{name} is not in {DEFAULTS_FILE.name}"
        assert lines[index - 1].startswith("#"), f"{name} has no comment above it"
    document = tomllib.loads(DEFAULTS_FILE.read_text())
    assert document.keys() == Settings.model_fields.keys() - {"seed"}
    for name, value in document.items():
        assert value == Settings.model_fields[name].default, f"{name} is not its default"
    assert Settings.model_fields["seed"].default is None


def test_layers_apply_lowest_first(tmp_path: Path) -> None:
    """TOML overrides defaults, env overrides TOML, flags override env."""
    path = write_toml(tmp_path, "job_duration = 1.0\nport = 9000\nseed = 4\n")
    env = {"JOBSERVER_JOB_DURATION": "2.0", "JOBSERVER_SEED": "5"}
    settings = Settings.load(config_path=path, env=env, flags={"job_duration": "3.0"})
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
    settings = Settings.load(env=env)
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
    """A bad env or flag value is a ConfigError naming the key, the value and its origin."""
    for flags, env, origin in (
        ({name: raw}, {}, flag_name(name)),
        ({}, {env_name(Settings, name): raw}, env_name(Settings, name)),
    ):
        with pytest.raises(ConfigError) as error:
            Settings.load(env=env, flags=flags)
        assert str(error.value).startswith(f"bad setting {name} = {raw!r} (from {origin}): ")


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    """A key the settings do not have is refused, naming it and its value."""
    path = write_toml(tmp_path, 'job_durration = 0.5\nhost = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match=r"bad setting job_durration = 0\.5 \(from .*\): no such"):
        Settings.load(config_path=path)


def test_toml_values_must_have_the_right_type(tmp_path: Path) -> None:
    """TOML is typed: a quoted number for a numeric setting is refused."""
    path = write_toml(tmp_path, 'port = "8001"\n')
    with pytest.raises(ConfigError, match=f"port = '8001' \\(from {path}\\): must be an integer"):
        Settings.load(config_path=path)


def test_missing_or_broken_file_is_an_error(tmp_path: Path) -> None:
    """An unreadable or invalid TOML file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(config_path=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(config_path=write_toml(tmp_path, "port = = 1\n"))


def test_names_map_one_to_one() -> None:
    """Each setting has one env name and one flag."""
    assert env_name(Settings, "callback_drop_rate") == "JOBSERVER_CALLBACK_DROP_RATE"
    assert flag_name("callback_drop_rate") == "--callback-drop-rate"


def test_settings_are_frozen() -> None:
    """Settings cannot change after start-up."""
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1


def test_unknown_env_variables_are_warned_about_and_ignored(tmp_path: Path) -> None:
    """Unknown JOBSERVER_* variables are reported and ignored, JOBSERVER_CONFIG is not one."""
    warnings: list[str] = []
    env = {
        "JOBSERVER_SERVICE_HOST": "10.0.0.7",
        "JOBSERVER_CONFIG": str(write_toml(tmp_path, "port = 9000\n")),
        "JOBSERVER_JOB_DURATION": "2",
    }
    settings = Settings.load(env=env, warn=warnings.append)
    assert (settings.job_duration, settings.port) == (2, 9000)
    assert warnings == ["ignored JOBSERVER_SERVICE_HOST: no such setting"]


def test_a_service_link_in_a_setting_says_what_it_is() -> None:
    """JOBSERVER_PORT=tcp://... is refused naming service links; a flag for it wins quietly."""
    env = {"JOBSERVER_PORT": "tcp://10.0.0.7:8001"}
    with pytest.raises(ConfigError, match=r"Kubernetes service link.*enableServiceLinks"):
        Settings.load(env=env)
    assert Settings.load(env=env, flags={"port": "8001"}).port == 8001
