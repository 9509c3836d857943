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
        ({"JOBPROXY_REPLICA_ID": "a.b"}, "replica_id: 'a.b' must be"),
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


def test_unknown_environment_variables_are_warned_about_and_ignored() -> None:
    """Variables with the prefix that name no setting (Kubernetes injects some) are
    reported and ignored."""
    warnings: list[str] = []
    env = {
        "JOBPROXY_SERVICE_HOST": "10.0.0.7",
        "JOBPROXY_PORT_8000_TCP": "tcp://10.0.0.7:8000",
        "JOBPROXY_JOB_DEADLINE": "9",
    }
    settings = load_settings(env=env, warn=warnings.append)
    assert settings.job_deadline == 9
    assert warnings == [
        "ignored JOBPROXY_PORT_8000_TCP: no such setting",
        "ignored JOBPROXY_SERVICE_HOST: no such setting",
    ]


def test_a_service_link_in_a_setting_says_what_it_is() -> None:
    """JOBPROXY_PORT=tcp://... (a Service named jobproxy) is an error that explains itself."""
    with pytest.raises(ConfigError, match=r"Kubernetes service link.*enableServiceLinks"):
        load_settings(env={"JOBPROXY_PORT": "tcp://10.0.0.7:8000"})


def test_a_flag_overrides_a_bad_environment_value() -> None:
    """Only the winning value is checked: --port beats an injected JOBPROXY_PORT."""
    settings = load_settings(env={"JOBPROXY_PORT": "tcp://10.0.0.7:8000"}, overrides={"port": "80"})
    assert settings.port == 80
