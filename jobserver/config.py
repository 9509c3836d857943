"""The job server's settings: one frozen pydantic-settings class, built once at start-up.

Layers, lowest first: the defaults below, a TOML file (``--config PATH`` or
``JOBSERVER_CONFIG=PATH``), the environment (``JOBSERVER_<NAME>``, handed in as a mapping)
and command-line flags (``--kebab-name``), see :mod:`infra.settings_layers`. Every
field carries its description and bounds, so the CLI, the checks and the documentation in
``config/jobserver.toml`` cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from infra.settings_layers import ConfigError, LayeredSettings

__all__ = ["ConfigError", "Settings", "webhook_key"]

ENV_PREFIX = "JOBSERVER_"
WEBHOOK_SECRET_PREFIX = "whsec_"

LogLevel = Literal["debug", "info", "warning", "error"]
CallbackOrder = Literal["in_order", "shuffled"]
DialectName = Literal["work-sample", "predictions"]


class Settings(LayeredSettings):
    """Every knob of the job server; see ``config/jobserver.toml`` for the documentation."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    config_variable = ENV_PREFIX + "CONFIG"

    # Protocol
    dialect: DialectName = Field(
        default="work-sample",
        description=(
            "the API spoken: work-sample (POST /start, GET /status/{id}) or predictions "
            "(POST /v1/predictions, GET /v1/predictions/{id}, as Replicate's)"
        ),
    )
    # Serving
    host: str = Field(default="127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(default=8001, ge=0, le=65535, description="TCP port; 0 picks a free one")
    backlog: int = Field(default=4096, ge=1, description="listen() backlog")
    log_level: LogLevel = Field(default="info", description="log level")
    access_log: bool = Field(default=False, description="log every request")
    shutdown_timeout: float = Field(
        default=10.0, ge=0, description="seconds to drain open requests on shutdown"
    )
    max_body_size: int = Field(
        default=65536, ge=1, description="largest /start body in bytes (else 413)"
    )
    max_head_size: int = Field(
        default=16384,
        ge=1024,
        description="largest request head (request line and headers) in bytes (else 431)",
    )
    max_headers: int = Field(default=100, ge=8, description="most header lines (else 431)")
    max_proof_size: int = Field(
        default=16 * 1024 * 1024, ge=1, description="largest /verify body in bytes (else 413)"
    )
    request_timeout: float = Field(
        default=600.0,
        ge=0.001,
        description="deadline of one /start handling, s, gate wait included (else 504)",
    )
    # Jobs
    secret: str = Field(
        default="jobserver-dev-secret", min_length=1, description="HMAC-SHA1 key of job proofs"
    )
    job_duration: float = Field(default=0.5, ge=0, description="mean job duration, s")
    job_duration_spread: float = Field(
        default=0.02, ge=0, description="standard deviation of job duration, s"
    )
    seed: int | None = Field(default=None, description="seed of every random choice")
    max_running: int = Field(
        default=0, ge=0, description="most jobs running at once; 0 = unlimited"
    )
    queue_size: int = Field(
        default=1000, ge=0, description="jobs waiting for a slot when max_running is reached"
    )
    status_ttl: float = Field(
        default=300.0, ge=0, description="seconds a finished job stays in /status"
    )
    # Callbacks
    callback_secret: str = Field(default="", description="Standard Webhooks signing secret")
    callback_attempts: int = Field(default=5, ge=1, description="delivery attempts per callback")
    callback_timeout: float = Field(
        default=10.0, ge=0.001, description="deadline of one delivery attempt, s"
    )
    callback_backoff: float = Field(
        default=0.5, ge=0, description="first retry delay, s, doubled per attempt"
    )
    callback_backoff_max: float = Field(default=10.0, ge=0, description="cap of the retry delay, s")
    callback_connections: int = Field(
        default=1000, ge=1, description="callback requests in flight at once (pooled connections)"
    )
    callback_order: CallbackOrder = Field(
        default="in_order",
        description=(
            "in_order: each callback sent as its job ends; shuffled: from one pending pool, "
            "in random order, by callback_senders senders"
        ),
    )
    callback_senders: int = Field(
        default=8, ge=1, description="senders of the pending pool (callback_order shuffled)"
    )
    callback_before_answer: float = Field(
        default=0.0,
        ge=0,
        description=(
            "seconds a wait: false /start holds for its job; a job done by then is called "
            "back before /start answers; 0 = off"
        ),
    )
    # Faults
    failure_rate: float = Field(default=0.0, ge=0, le=1, description="share of jobs that fail")
    callback_drop_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of callbacks never sent"
    )
    callback_duplicate_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of callbacks sent twice"
    )
    callback_delay: float = Field(
        default=0.0, ge=0, description="seconds before a callback is sent"
    )
    start_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of /start answered with an error"
    )
    start_error_status: int = Field(
        default=503, ge=500, le=599, description="status of injected /start errors"
    )
    start_error_count: int = Field(
        default=0, ge=0, description="the first N /start requests answer 503"
    )
    start_latency: float = Field(
        default=0.0, ge=0, description="seconds spent in the account gate per /start"
    )
    status_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of GET /status answered 500"
    )
    honour_disconnects: bool = Field(
        default=False,
        description="a /start whose client leaves before its job is created starts none",
    )
    # Network
    latency: float = Field(
        default=0.0,
        ge=0,
        description="simulated network delay one way, s: on each request, answer and callback",
    )

    @field_validator("seed", mode="before")
    @classmethod
    def _unset_seed(cls, value: object) -> object:
        # JOBSERVER_SEED= (or "none") unsets a seed that the file gave.
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("callback_secret")
    @classmethod
    def _secret_decodes(cls, value: str) -> str:
        try:
            webhook_key(value)
        except binascii.Error:
            raise ValueError("the part after whsec_ is not base64") from None
        return value


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a callback secret: base64 after ``whsec_``, else the UTF-8 bytes."""
    if secret.startswith(WEBHOOK_SECRET_PREFIX):
        return base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    return secret.encode()
