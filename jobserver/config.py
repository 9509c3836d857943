"""The job server's settings: one frozen dataclass, built once at start-up.

Layers, lowest first: the dataclass defaults, a TOML file (``--config PATH``), the
environment (``JOBSERVER_<NAME>``, handed in as a mapping) and command-line flags
(``--kebab-name``). Every field carries its help text and bounds in its metadata, so the
CLI, the checks and the documentation in ``config/jobserver.toml`` cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

ENV_PREFIX = "JOBSERVER_"
NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG"})  # names the TOML file (see __main__)
SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://\S+:\d+")
WEBHOOK_SECRET_PREFIX = "whsec_"

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(ValueError):
    """A setting that is unknown or whose value is unusable; the message names both."""


def _doc(
    help_text: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    nonempty: bool = False,
) -> dict[str, Any]:
    return {"help": help_text, "min": minimum, "max": maximum, "nonempty": nonempty}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the job server; see ``config/jobserver.toml`` for the documentation."""

    # Serving
    host: str = field(default="127.0.0.1", metadata=_doc("address to listen on", nonempty=True))
    port: int = field(
        default=8001, metadata=_doc("TCP port; 0 picks a free one", minimum=0, maximum=65535)
    )
    backlog: int = field(default=4096, metadata=_doc("listen() backlog", minimum=1))
    log_level: LogLevel = field(default="info", metadata=_doc("log level"))
    access_log: bool = field(default=False, metadata=_doc("log every request"))
    shutdown_timeout: float = field(
        default=10.0, metadata=_doc("seconds to drain open requests on shutdown", minimum=0)
    )
    max_body_size: int = field(
        default=65536, metadata=_doc("largest /start body in bytes (else 413)", minimum=1)
    )
    max_proof_size: int = field(
        default=16 * 1024 * 1024,
        metadata=_doc("largest /verify body in bytes (else 413)", minimum=1),
    )
    request_timeout: float = field(
        default=600.0,
        metadata=_doc(
            "deadline of one /start handling, gate wait included (else 504)", minimum=0.001
        ),
    )
    # Jobs
    secret: str = field(
        default="jobserver-dev-secret",
        metadata=_doc("HMAC-SHA1 key of job proofs", nonempty=True),
    )
    job_duration: float = field(default=0.5, metadata=_doc("mean job duration, s", minimum=0))
    job_duration_spread: float = field(
        default=0.02, metadata=_doc("standard deviation of job duration, s", minimum=0)
    )
    seed: int | None = field(default=None, metadata=_doc("seed of every random choice"))
    max_running: int = field(
        default=0, metadata=_doc("most jobs running at once; 0 = unlimited", minimum=0)
    )
    queue_size: int = field(
        default=1000,
        metadata=_doc("jobs waiting for a slot when max_running is reached", minimum=0),
    )
    status_ttl: float = field(
        default=300.0, metadata=_doc("seconds a finished job stays in /status", minimum=0)
    )
    # Callbacks
    callback_secret: str = field(default="", metadata=_doc("Standard Webhooks signing secret"))
    callback_attempts: int = field(
        default=5, metadata=_doc("delivery attempts per callback", minimum=1)
    )
    callback_timeout: float = field(
        default=10.0, metadata=_doc("deadline of one delivery attempt, s", minimum=0.001)
    )
    callback_backoff: float = field(
        default=0.5, metadata=_doc("first retry delay, s, doubled per attempt", minimum=0)
    )
    callback_backoff_max: float = field(
        default=10.0, metadata=_doc("cap of the retry delay, s", minimum=0)
    )
    callback_connections: int = field(
        default=1000,
        metadata=_doc("callback requests in flight at once (pooled connections)", minimum=1),
    )
    # Faults
    failure_rate: float = field(
        default=0.0, metadata=_doc("share of jobs that fail", minimum=0, maximum=1)
    )
    callback_drop_rate: float = field(
        default=0.0, metadata=_doc("share of callbacks never sent", minimum=0, maximum=1)
    )
    callback_duplicate_rate: float = field(
        default=0.0, metadata=_doc("share of callbacks sent twice", minimum=0, maximum=1)
    )
    callback_delay: float = field(
        default=0.0, metadata=_doc("seconds before a callback is sent", minimum=0)
    )
    start_error_rate: float = field(
        default=0.0, metadata=_doc("share of /start answered with an error", minimum=0, maximum=1)
    )
    start_error_status: int = field(
        default=503, metadata=_doc("status of injected /start errors", minimum=500, maximum=599)
    )
    start_error_count: int = field(
        default=0, metadata=_doc("the first N /start requests answer 503", minimum=0)
    )
    start_latency: float = field(
        default=0.0, metadata=_doc("seconds spent in the account gate per /start", minimum=0)
    )
    # Network
    latency: float = field(
        default=0.0,
        metadata=_doc(
            "simulated network delay one way, s: on each request, answer and callback",
            minimum=0,
        ),
    )


SETTING_FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(Settings)
}
SETTING_TYPES: dict[str, Any] = typing.get_type_hints(Settings)


def env_name(name: str) -> str:
    """``callback_drop_rate`` → ``JOBSERVER_CALLBACK_DROP_RATE``."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """``callback_drop_rate`` → ``--callback-drop-rate``."""
    return "--" + name.replace("_", "-")


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a callback secret: base64 after ``whsec_``, else the UTF-8 bytes."""
    if secret.startswith(WEBHOOK_SECRET_PREFIX):
        return base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    return secret.encode()


def load_settings(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    config_path: Path | None,
    *,
    warn: Callable[[str], None] = logger.warning,
) -> Settings:
    """Build the settings from defaults ← TOML file ← ``JOBSERVER_*`` env ← flags.

    ``flags`` maps setting names to values (strings are parsed like env values). Unknown
    ``JOBSERVER_*`` variables are reported through ``warn`` and ignored: orchestrators
    inject their own (Kubernetes service links). Unknown TOML keys and flag names are
    errors. Only the value that wins is checked, so a flag can override a bad env value.
    """
    values: dict[str, object] = {}
    if config_path is not None:
        for name, raw in _read_toml(config_path).items():
            values[name] = _convert(name, raw, f"{config_path}", text=False)
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        name = key.removeprefix(ENV_PREFIX).lower()
        if name not in SETTING_FIELDS:
            warn(f"ignored {key}: no such setting")
        elif name not in flags:
            values[name] = _convert(name, env[key], key, text=True)
    for name, raw in flags.items():
        if name not in SETTING_FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _convert(name, raw, flag_name(name), text=isinstance(raw, str))
    return Settings(**values)  # type: ignore[arg-type]  # every value was checked against its field


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in document.items():
        if key not in SETTING_FIELDS:
            raise ConfigError(f"{path}: unknown setting {key} = {value!r}")
    return document


def _convert(name: str, raw: object, source: str, *, text: bool) -> object:
    """Check ``raw`` against the field's type and bounds; ``text`` values come from env/flags."""
    try:
        value = _parse(SETTING_TYPES[name], raw, text=text)
        _check_bounds(name, value)
    except ValueError as exc:
        hint = ""
        if text and isinstance(raw, str) and SERVICE_LINK.fullmatch(raw):
            hint = (
                "; this looks like a Kubernetes service link, injected into every pod once a "
                "Service named jobserver exists: set enableServiceLinks: false in the pod "
                "spec, rename the Service, or give this setting as a flag"
            )
        raise ConfigError(f"bad setting {name} = {raw!r} (from {source}): {exc}{hint}") from None
    return value


def _parse(hint: Any, raw: object, *, text: bool) -> object:
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return raw
    if hint == (int | None):
        if text and isinstance(raw, str) and raw.strip().lower() in ("", "none"):
            return None
        hint = int
    return _PARSERS[hint](raw, text=text)


def _parse_int(raw: object, *, text: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise ValueError("must be an integer")


def _parse_str(raw: object, *, text: bool) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    return raw


def _parse_bool(raw: object, *, text: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    raise ValueError("must be a boolean (true or false)")


def _parse_float(raw: object, *, text: bool) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if text and isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise ValueError("must be a number")


def _parse_finite(raw: object, *, text: bool) -> float:
    number = _parse_float(raw, text=text)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


_PARSERS: dict[type, Callable[..., object]] = {
    bool: _parse_bool,
    int: _parse_int,
    float: _parse_finite,
    str: _parse_str,
}


def _check_bounds(name: str, value: object) -> None:
    meta = SETTING_FIELDS[name].metadata
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = meta["min"], meta["max"]
        if low is not None and high is not None and not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        if low is not None and value < low:
            raise ValueError(f"must be at least {low:g}")
    if isinstance(value, str):
        if meta["nonempty"] and not value:
            raise ValueError("must not be empty")
        if name == "callback_secret":
            try:
                webhook_key(value)
            except binascii.Error:
                raise ValueError("a whsec_ secret must be base64 after the prefix") from None
