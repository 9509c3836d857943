"""Settings in layers, lowest first: defaults, a TOML file, the environment, flags.

A program's settings class derives from :class:`LayeredSettings`, sets ``env_prefix``
and gives each field a default, a description and its checks. Then
:meth:`LayeredSettings.load` builds it from pydantic-settings' own TOML and environment
sources plus the command-line flags, recording where each value came from, and every bad
value is refused in one wording::

    bad setting port = 'eighty' (from JOBPROXY_PORT): must be an integer

Only the value that wins is checked, so a flag can override a bad environment value.
Unknown prefixed environment variables are reported through ``warn`` and ignored
(orchestrators inject their own, such as Kubernetes service links); unknown keys in the
file are an error. :meth:`LayeredSettings.add_flags` gives each setting its
``--kebab-name`` flag, with its description and default in ``--help``.

Both programs' settings derive from it (``proxy.config``, ``jobserver.config``), so a
bad value reads the same in either; ``tests/test_settings_layers.py`` checks that.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

logger = logging.getLogger(__name__)

SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://\S+:\d+")
DEFAULT_ORIGIN = "default"

# pydantic's error types, in the words of our messages.
REASONS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be a boolean (true or false)",
    "bool_parsing": "must be a boolean (true or false)",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "extra_forbidden": "no such setting",
}


class ConfigError(ValueError):
    """A setting that is unknown or whose value is unusable; the message names both."""


class LayeredSettings(BaseSettings):
    """Frozen settings; constructing one reads its keyword arguments and nothing else."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: An environment variable that names the TOML file when no path is given, if any.
    config_variable: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file and the environment come in through load(), which knows where each
        # value came from; a plain Settings(...) never picks up the process environment.
        return (init_settings,)

    @classmethod
    def env_prefix(cls) -> str:
        """``JOBPROXY_`` or ``JOBSERVER_``: what every setting's variable starts with."""
        return cls.model_config.get("env_prefix") or ""

    @classmethod
    def load(
        cls,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, object] | None = None,
        warn: Callable[[str], None] = logger.warning,
    ) -> Self:
        """Build the settings from defaults ← TOML file ← environment ← ``flags``.

        ``flags`` maps setting names to values (text is parsed like environment values).
        Raises :class:`ConfigError` with one line naming the setting, the bad value and
        where it came from.
        """
        env = env or {}
        if config_path is None and cls.config_variable and env.get(cls.config_variable):
            config_path = Path(env[cls.config_variable])
        from_file = _read_toml(cls, config_path) if config_path is not None else {}
        variables = _setting_variables(cls, env, warn)
        from_env = _MappingEnvSource(cls, env)()
        from_flags = dict(flags or {})
        origins = (
            dict.fromkeys(from_file, str(config_path))
            | {name: variables.get(name, env_name(cls, name)) for name in from_env}
            | {name: flag_name(name) for name in from_flags}
        )
        for name, value in from_file.items():
            if name not in from_env and name not in from_flags:
                _check_typed(cls, name, value, origins[name])
        try:
            return cls(**(from_file | from_env | from_flags))
        except ValidationError as exc:
            error = exc.errors()[0]
            message = _describe(error, origins)
            failed = error["loc"][0] if error["loc"] else None
            if failed in from_env and failed not in from_flags:
                message += _service_link_hint(cls, error["input"])
            raise ConfigError(message) from None

    def with_changes(self, **values: object) -> Self:
        """A copy with ``values`` changed, checked like a new instance (unlike ``model_copy``)."""
        return type(self)(**{**self.model_dump(), **values})

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--kebab-name`` flag per setting, absent from the parsed options unless given."""
        group = parser.add_argument_group(
            "settings",
            f"each also {cls.env_prefix()}<NAME> in the environment, or NAME in the TOML file",
        )
        for name, field in cls.model_fields.items():
            text = f"{field.description} (default: {_shown(field.default)})".replace("%", "%%")
            shape: dict[str, Any] = (
                {"action": argparse.BooleanOptionalAction}
                if field.annotation is bool
                else {"metavar": _metavar(name, field.annotation)}
            )
            group.add_argument(
                flag_name(name), dest=name, default=argparse.SUPPRESS, help=text, **shape
            )

    @classmethod
    def from_command_line(
        cls, options: argparse.Namespace, environ: Mapping[str, str], program: str
    ) -> tuple[Self, list[str]] | None:
        """The settings of a command line (its ``config`` option, ``environ``, the flags
        given) and the warnings met on the way, to be logged once logging is set up; None
        when a setting is bad, after saying which on stderr as ``<program>: ...``."""
        warnings: list[str] = []
        try:
            settings = cls.load(
                config_path=getattr(options, "config", None),
                env=environ,
                flags=cls.given_flags(options),
                warn=warnings.append,
            )
        except ConfigError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            return None
        return settings, warnings

    @classmethod
    def given_flags(cls, options: argparse.Namespace) -> dict[str, object]:
        """The settings given as flags in parsed ``options`` (see :meth:`add_flags`)."""
        return {name: value for name, value in vars(options).items() if name in cls.model_fields}


def flag_name(name: str) -> str:
    """``callback_drop_rate`` → ``--callback-drop-rate``."""
    return "--" + name.replace("_", "-")


def env_name(settings_cls: type[LayeredSettings], name: str) -> str:
    """``callback_drop_rate`` → ``JOBSERVER_CALLBACK_DROP_RATE`` (the class's prefix)."""
    return settings_cls.env_prefix() + name.upper()


def bad_setting(name: str, value: object, origin: str, reason: str) -> str:
    """The one wording of a refused value, shared by both programs."""
    return f"bad setting {name} = {value!r} (from {origin}): {reason}"


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping, not ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # before super().__init__, which loads the variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._environ)
        return {key.lower(): value for key, value in self._environ.items()}


def _setting_variables(
    settings_cls: type[LayeredSettings], env: Mapping[str, str], warn: Callable[[str], None]
) -> dict[str, str]:
    """Setting name → the variable that sets it; report prefixed variables that set none."""
    prefix = settings_cls.env_prefix().lower()
    variables: dict[str, str] = {}
    for key in sorted(env):
        if not key.lower().startswith(prefix) or key == settings_cls.config_variable:
            continue
        name = key[len(prefix) :].lower()
        if name in settings_cls.model_fields:
            variables[name] = key
        else:
            warn(f"ignored {key}: no such setting")
    return variables


def _read_toml(settings_cls: type[LayeredSettings], path: Path) -> dict[str, object]:
    if not path.is_file():
        raise ConfigError(f"cannot read config file {path}: no such file")
    try:
        document: dict[str, object] = TomlConfigSettingsSource(settings_cls, toml_file=path)()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in document.items():
        if key not in settings_cls.model_fields:
            raise ConfigError(bad_setting(key, value, str(path), REASONS["extra_forbidden"]))
    return document


def _check_typed(
    settings_cls: type[LayeredSettings], name: str, value: object, origin: str
) -> None:
    """TOML values have types: ``port = "8001"`` is refused where ``JOBPROXY_PORT=8001`` is not."""
    try:
        _strict(settings_cls, name).validate_python(value, strict=True)
    except ValidationError as exc:
        raise ConfigError(bad_setting(name, value, origin, _reason(exc.errors()[0]))) from None


@functools.cache
def _strict(settings_cls: type[LayeredSettings], name: str) -> TypeAdapter[Any]:
    return TypeAdapter(settings_cls.model_fields[name].rebuild_annotation())


def _describe(error: ErrorDetails, origins: Mapping[str, str]) -> str:
    name = str(error["loc"][0]) if error["loc"] else "settings"
    return bad_setting(name, error["input"], origins.get(name, DEFAULT_ORIGIN), _reason(error))


def _reason(error: ErrorDetails) -> str:
    context = error.get("ctx", {})
    bounds = {
        "greater_than": "must be greater than {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be at most {le}",
    }
    if error["type"] in bounds:
        return bounds[error["type"]].format(**{key: f"{bound:g}" for key, bound in context.items()})
    if error["type"] == "literal_error":
        return f"must be {context['expected']}"
    if error["type"] == "value_error":
        return str(context["error"])
    return REASONS.get(error["type"], error["msg"])


def _service_link_hint(settings_cls: type[LayeredSettings], value: object) -> str:
    """Why an environment value like ``tcp://10.0.0.7:8000`` is there, and what to do."""
    if not isinstance(value, str) or not SERVICE_LINK.fullmatch(value):
        return ""
    service = settings_cls.env_prefix().rstrip("_").lower()
    return (
        "; this looks like a Kubernetes service link, injected into every pod once a "
        f"Service named {service} exists: set enableServiceLinks: false in the pod spec, "
        "rename the Service, or give this setting as a flag"
    )


def _shown(value: object) -> str:
    """A default as ``--help`` shows it."""
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _metavar(name: str, annotation: Any) -> str:
    if name.endswith("_url"):
        return "URL"
    if typing.get_origin(annotation) is Literal:
        return "{" + ",".join(typing.get_args(annotation)) + "}"
    kinds = {int: "INT", float: "NUMBER", int | None: "INT"}
    return kinds.get(annotation, "TEXT")
