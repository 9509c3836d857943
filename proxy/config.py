"""The proxy's settings: one frozen dataclass, built once at start-up.

Precedence, lowest first: the defaults below, the TOML file (``--config PATH``),
environment variables ``JOBPROXY_<NAME>`` and command-line flags. ``config/proxy.toml``
documents every setting with its default.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

ENV_PREFIX = "JOBPROXY_"
REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://[^\s]+:\d+")
SECRET_PREFIX = "whsec_"
LogLevel = Literal["debug", "info", "warning", "error"]
TransportChoice = Literal["native", "httpx"]


class ConfigError(ValueError):
    """A setting has a bad value; the message names the key and the value."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the proxy. See ``config/proxy.toml`` for what each one does."""

    host: str = "127.0.0.1"
    port: int = 8000
    upstream_url: str = "http://127.0.0.1:8001"
    public_url: str = ""
    redis_url: str = ""
    replica_id: str = ""
    callback_secret: str = ""
    job_deadline: float = 30.0
    max_pending: int = 10_000
    max_body_size: int = 65_536
    start_timeout: float = 5.0
    start_retry_budget: float = 3.0
    poll_k: float = 2.0
    poll_initial: float = 1.0
    poll_backoff_base: float = 0.05
    poll_backoff_cap: float = 1.0
    poll_lost_grace: float = 1.0
    poll_max_failures: int = 5
    poll_timeout: float = 2.0
    result_ttl: float = 300.0
    drain_timeout: float = 25.0
    upstream_transport: TransportChoice = "native"
    upstream_max_connections: int = 1_000
    upstream_max_per_account: int = 100
    backlog: int = 4_096
    log_level: LogLevel = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        self._check_urls()
        self._check_numbers()
        self._check_secret()
        self._check_replica_id()
        for name, allowed in (
            ("log_level", get_args(LogLevel)),
            ("upstream_transport", get_args(TransportChoice)),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {allowed}")

    def _check_replica_id(self) -> None:
        # The id is the first part of every callback token: <replica>.<random>.<mac>.
        if self.replica_id and not REPLICA_ID.fullmatch(self.replica_id):
            raise ConfigError(
                f"replica_id: {self.replica_id!r} must be 1 to 64 letters, digits, - or _"
            )

    def _check_secret(self) -> None:
        # Checked here so that a bad secret stops the start with one line, not a traceback.
        signing_key(self.callback_secret)

    def _check_urls(self) -> None:
        for name in ("upstream_url", "public_url", "redis_url"):
            value = getattr(self, name)
            if value and not _is_absolute_url(value, redis=name == "redis_url"):
                raise ConfigError(f"{name}: {value!r} is not an absolute URL")
        if not self.upstream_url:
            raise ConfigError("upstream_url: must be set")

    def _check_numbers(self) -> None:
        positive = (
            "job_deadline",
            "start_timeout",
            "poll_initial",
            "poll_backoff_base",
            "poll_timeout",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: {getattr(self, name)!r} must be greater than 0")
        non_negative = (
            "start_retry_budget",
            "poll_k",
            "poll_lost_grace",
            "drain_timeout",
            "result_ttl",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}: {getattr(self, name)!r} must not be negative")
        if self.poll_backoff_cap < self.poll_backoff_base:
            raise ConfigError(
                f"poll_backoff_cap: {self.poll_backoff_cap!r} is below poll_backoff_base"
            )
        at_least_one = (
            "max_pending",
            "max_body_size",
            "upstream_max_connections",
            "upstream_max_per_account",
            "poll_max_failures",
            "backlog",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)!r} must be at least 1")
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"port: {self.port!r} is not a TCP port")

    def with_public_url(self, bound_port: int) -> Settings:
        """Fill in ``public_url`` from the bound address when it was not configured."""
        if self.public_url:
            return self
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return dataclasses.replace(self, public_url=f"http://{host}:{bound_port}")


def signing_key(secret: str) -> bytes:
    """The HMAC key a callback secret stands for: the base64-decoded part after
    ``whsec_`` (Standard Webhooks), else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ConfigError("callback_secret: the part after whsec_ is not base64") from None
    return secret.encode()


def _is_absolute_url(value: str, *, redis: bool) -> bool:
    parts = urlsplit(value)
    schemes = ("redis", "rediss", "unix") if redis else ("http", "https")
    return parts.scheme in schemes and (bool(parts.netloc) or parts.scheme == "unix")


def _coerce(name: str, kind: Any, value: object) -> object:
    """Turn a TOML or environment value into the field's type, or say why not."""
    if isinstance(kind, str):  # postponed annotations arrive as strings
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, str)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool | float):
                raise ValueError
            return int(value)  # type: ignore[call-overload]
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)  # type: ignore[arg-type]
            if not math.isfinite(number):
                raise ValueError
            return number
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        expected = getattr(kind, "__name__", "text")
        hint = service_link_hint(value) if isinstance(value, str) else ""
        raise ConfigError(f"{name}: {value!r} is not a valid {expected}{hint}") from None


def _field_kinds() -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for field in fields(Settings):
        kind = field.type
        if isinstance(kind, str) and kind not in ("str", "int", "float", "bool"):
            kind = "str"  # Literal aliases hold strings; __post_init__ checks the choice
        kinds[field.name] = kind
    return kinds


def service_link_hint(value: str) -> str:
    """Why an environment value like ``tcp://10.0.0.7:8000`` is there, and what to do."""
    if not SERVICE_LINK.fullmatch(value):
        return ""
    return (
        " (this looks like a Kubernetes service link, injected into every pod once a "
        "Service named jobproxy exists: set enableServiceLinks: false in the pod spec, "
        "rename the Service, or give this setting as a flag)"
    )


def load_settings(
    *,
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    warn: Callable[[str], None] = logger.warning,
) -> Settings:
    """Build the settings from defaults ← TOML file ← environment ← flags (``overrides``).

    Unknown ``JOBPROXY_*`` variables are reported through ``warn`` and ignored:
    orchestrators inject their own (Kubernetes service links). Only the value that wins
    is checked, so a flag can override a bad environment value.
    """
    kinds = _field_kinds()
    chosen: dict[str, tuple[str, object]] = {}  # name -> (where it came from, raw value)
    if config_path is not None:
        try:
            document = tomllib.loads(config_path.read_text())
        except OSError as exc:
            raise ConfigError(f"config: cannot read {str(config_path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {str(config_path)!r} is not valid TOML: {exc}") from None
        for key, value in document.items():
            if key not in kinds:
                raise ConfigError(f"{key}: unknown setting in {config_path}")
            chosen[key] = (key, value)
    for key, value in sorted((env or {}).items()):
        if not key.startswith(ENV_PREFIX):
            continue
        name = key.removeprefix(ENV_PREFIX).lower()
        if name not in kinds:
            warn(f"ignored {key}: no such setting")
            continue
        chosen[name] = (key, value)
    for name, value in (overrides or {}).items():
        if value is not None:
            chosen[name] = (name, value)
    values = {name: _coerce(source, kinds[name], value) for name, (source, value) in chosen.items()}
    return Settings(**values)  # type: ignore[arg-type]
