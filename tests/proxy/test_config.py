"""Settings: precedence, validation and the documented defaults file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.config import ConfigError, Settings

CONFIG_FILE = Path(__file__).parents[2] / "config" / "proxy.toml"


def test_documented_file_holds_every_default() -> None:
    """config/proxy.toml lists every setting with exactly the built-in default."""
    text = CONFIG_FILE.read_text()
    document = tomllib.loads(text)
    for name, field in Settings.model_fields.items():
        assert f"\n{name} = " in text, f"{name} is not documented"
        assert document[name] == field.default, f"{name} is not documented with its default"
    assert document.keys() == Settings.model_fields.keys()
    assert Settings.load(config_path=CONFIG_FILE) == Settings()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the file, which beats the defaults."""
    path = tmp_path / "proxy.toml"
    path.write_text('port = 1111\njob_deadline = 7.5\nupstream_url = "http://file:1"\n')
    settings = Settings.load(
        config_path=path,
        env={"JOBPROXY_PORT": "2222", "JOBPROXY_UPSTREAM_URL": "http://env:2", "OTHER": "x"},
        flags={"port": "3333"},
    )
    assert settings.port == 3333
    assert settings.upstream_url == "http://env:2"
    assert settings.job_deadline == 7.5
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"JOBPROXY_PORT": "eighty"},
            "bad setting port = 'eighty' (from JOBPROXY_PORT): must be an integer",
        ),
        (
            {"JOBPROXY_JOB_DEADLINE": "0"},
            "bad setting job_deadline = '0' (from JOBPROXY_JOB_DEADLINE): must be greater than 0",
        ),
        ({"JOBPROXY_UPSTREAM_URL": "localhost:8001"}, "upstream_url = 'localhost:8001'"),
        ({"JOBPROXY_UPSTREAM_URL": ""}, "upstream_url = '' (from JOBPROXY_UPSTREAM_URL)"),
        ({"JOBPROXY_REDIS_URL": "http://x"}, "redis_url = 'http://x'"),
        ({"JOBPROXY_LOG_LEVEL": "loud"}, "log_level = 'loud'"),
        ({"JOBPROXY_REPLICA_ID": "a.b"}, "replica_id = 'a.b' (from JOBPROXY_REPLICA_ID): must be"),
        ({"JOBPROXY_ACCESS_LOG": "maybe"}, "access_log = 'maybe' (from JOBPROXY_ACCESS_LOG)"),
        ({"JOBPROXY_JOB_DEADLINE": "nan"}, "job_deadline = 'nan' (from JOBPROXY_JOB_DEADLINE)"),
        ({"JOBPROXY_PORT": "99999"}, "port = '99999' (from JOBPROXY_PORT): must be at most 65535"),
        (
            {"JOBPROXY_CALLBACK_SECRET": "whsec_!!!"},
            "callback_secret = 'whsec_!!!' (from JOBPROXY_CALLBACK_SECRET): the part after whsec_",
        ),
        (
            {"JOBPROXY_PUBLIC_URL": "http://lb/?x=1"},
            "public_url = 'http://lb/?x=1' (from JOBPROXY_PUBLIC_URL): must be a base URL",
        ),
        ({"JOBPROXY_PUBLIC_URL": "http://lb/#top"}, "public_url = 'http://lb/#top'"),
        ({"JOBPROXY_MAX_HEAD_SIZE": "100"}, "max_head_size = '100'"),
        (
            {"JOBPROXY_POLL_BACKOFF_CAP": "0.01"},
            "poll_backoff_cap = '0.01' (from JOBPROXY_POLL_BACKOFF_CAP): "
            "must not be below poll_backoff_base",
        ),
    ],
)
def test_bad_values_name_key_value_and_origin(env: dict[str, str], message: str) -> None:
    """A bad value is a ConfigError naming the key, the value and where it came from."""
    with pytest.raises(ConfigError) as error:
        Settings.load(env=env)
    assert message in str(error.value)


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    """A typo in the TOML file is reported, not ignored."""
    path = tmp_path / "proxy.toml"
    path.write_text("jobdeadline = 3\n")
    with pytest.raises(ConfigError, match=r"bad setting jobdeadline = 3 \(from .*\): no such"):
        Settings.load(config_path=path)


def test_file_values_must_have_the_right_type(tmp_path: Path) -> None:
    """TOML is typed: a quoted number for a numeric setting is refused, naming the file."""
    path = tmp_path / "proxy.toml"
    path.write_text('max_pending = "10"\n')
    with pytest.raises(ConfigError, match=f"max_pending = '10' \\(from {path}\\): must be an"):
        Settings.load(config_path=path)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://lb:8080/", "http://lb:8080"),
        ("http://lb:8080", "http://lb:8080"),
        ("https://lb/jobs/proxy//", "https://lb/jobs/proxy"),
    ],
)
def test_public_url_loses_its_trailing_slashes(given: str, kept: str) -> None:
    """A public_url given with a trailing slash still makes callback URLs without '//'."""
    assert Settings(public_url=given).public_url == kept


def test_public_url_defaults_to_the_bound_address() -> None:
    """Without public_url, callbacks go to the bound port (loopback for a wildcard host)."""
    assert Settings().with_public_url(4321).public_url == "http://127.0.0.1:4321"
    assert Settings(host="0.0.0.0").with_public_url(1).public_url == "http://127.0.0.1:1"
    assert Settings(public_url="http://lb:80").with_public_url(1).public_url == "http://lb:80"


def test_with_changes_checks_the_new_values() -> None:
    """with_changes validates like a new instance; the original is unchanged (frozen)."""
    settings = Settings()
    assert settings.with_changes(port=1).port == 1
    with pytest.raises(ValidationError):
        settings.with_changes(poll_backoff_cap=0.001)
    with pytest.raises(ValidationError):
        settings.port = 1
    assert settings.port == 8000


def test_construction_reads_only_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings(...) ignores the process environment: only load() reads the mapping it gets."""
    monkeypatch.setenv("JOBPROXY_PORT", "1234")
    assert Settings().port == 8000


def test_unknown_environment_variables_are_warned_about_and_ignored() -> None:
    """JOBPROXY_* variables naming no setting (Kubernetes injects some) are warned, ignored."""
    warnings: list[str] = []
    env = {
        "JOBPROXY_SERVICE_HOST": "10.0.0.7",
        "JOBPROXY_PORT_8000_TCP": "tcp://10.0.0.7:8000",
        "JOBPROXY_JOB_DEADLINE": "9",
    }
    settings = Settings.load(env=env, warn=warnings.append)
    assert settings.job_deadline == 9
    assert warnings == [
        "ignored JOBPROXY_PORT_8000_TCP: no such setting",
        "ignored JOBPROXY_SERVICE_HOST: no such setting",
    ]


def test_a_service_link_in_a_setting_says_what_it_is() -> None:
    """JOBPROXY_PORT=tcp://... (a Service named jobproxy) is an error that explains itself."""
    with pytest.raises(ConfigError, match=r"Kubernetes service link.*enableServiceLinks"):
        Settings.load(env={"JOBPROXY_PORT": "tcp://10.0.0.7:8000"})


def test_a_flag_overrides_a_bad_environment_value() -> None:
    """Only the winning value is checked: --port beats an injected JOBPROXY_PORT."""
    settings = Settings.load(env={"JOBPROXY_PORT": "tcp://10.0.0.7:8000"}, flags={"port": "80"})
    assert settings.port == 80


def test_jobproxy_config_names_the_file_when_no_flag_does(tmp_path: Path) -> None:
    """JOBPROXY_CONFIG is the file (not an unknown setting); --config wins over it, and
    the file's values lose to the environment's."""
    by_env = tmp_path / "env.toml"
    by_env.write_text("port = 9000\njob_deadline = 12\n")
    by_flag = tmp_path / "flag.toml"
    by_flag.write_text("port = 9100\n")
    warnings: list[str] = []
    env = {"JOBPROXY_CONFIG": str(by_env), "JOBPROXY_JOB_DEADLINE": "7"}
    settings = Settings.load(env=env, warn=warnings.append)
    assert (settings.port, settings.job_deadline) == (9000, 7)
    assert warnings == []
    assert Settings.load(env=env, config_path=by_flag).port == 9100
