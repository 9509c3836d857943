"""Settings: precedence, validation and the documented defaults file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import ConfigError, Settings, load_settings

CONFIG_FILE = Path(__file__).parents[2] / "config" / "proxy.toml"


def test_documented_file_holds_every_default() -> None:
    """config/proxy.toml lists every setting with exactly the built-in default."""
    text = CONFIG_FILE.read_text()
    for field in dataclasses.fields(Settings):
        assert f"\n{field.name} = " in text, f"{field.name} is not documented"
    assert load_settings(config_path=CONFIG_FILE) == Settings()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the file, which beats the defaults."""
    path = tmp_path / "proxy.toml"
    path.write_text('port = 1111\njob_deadline = 7.5\nupstream_url = "http://file:1"\n')
    settings = load_settings(
        config_path=path,
        env={"JOBPROXY_PORT": "2222", "JOBPROXY_UPSTREAM_URL": "http://env:2", "OTHER": "x"},
        overrides={"port": "3333", "host": None},
    )
    assert settings.port == 3333
    assert settings.upstream_url == "http://env:2"
    assert settings.job_deadline == 7.5
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBPROXY_PORT": "eighty"}, "JOBPROXY_PORT: 'eighty' is not a valid int"),
        ({"JOBPROXY_JOB_DEADLINE": "0"}, "job_deadline: 0.0 must be greater than 0"),
        ({"JOBPROXY_UPSTREAM_URL": "localhost:8001"}, "upstream_url: 'localhost:8001'"),
        ({"JOBPROXY_REDIS_URL": "http://x"}, "redis_url"),
        ({"JOBPROXY_LOG_LEVEL": "loud"}, "log_level: 'loud'"),
        ({"JOBPROXY_NOPE": "1"}, "JOBPROXY_NOPE: unknown setting"),
        ({"JOBPROXY_ACCESS_LOG": "maybe"}, "JOBPROXY_ACCESS_LOG: 'maybe'"),
        ({"JOBPROXY_JOB_DEADLINE": "nan"}, "JOBPROXY_JOB_DEADLINE: 'nan'"),
        ({"JOBPROXY_CALLBACK_SECRET": "whsec_!!!"}, "callback_secret: the part after whsec_"),
    ],
)
def test_bad_values_name_key_and_value(env: dict[str, str], message: str) -> None:
    """A bad value is a ConfigError naming the key and the value."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(env=env)


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    """A typo in the TOML file is reported, not ignored."""
    path = tmp_path / "proxy.toml"
    path.write_text("jobdeadline = 3\n")
    with pytest.raises(ConfigError, match="jobdeadline: unknown setting"):
        load_settings(config_path=path)


def test_public_url_defaults_to_the_bound_address() -> None:
    """Without public_url, callbacks go to the bound port (loopback for a wildcard host)."""
    assert Settings().with_public_url(4321).public_url == "http://127.0.0.1:4321"
    assert Settings(host="0.0.0.0").with_public_url(1).public_url == "http://127.0.0.1:1"
    assert Settings(public_url="http://lb:80").with_public_url(1).public_url == "http://lb:80"
