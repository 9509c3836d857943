"""The proxy's settings: one frozen pydantic-settings class, built once at start-up.

Precedence, lowest first: the defaults below, the TOML file (``--config PATH``, or
``JOBPROXY_CONFIG=PATH`` without the flag), environment variables ``JOBPROXY_<NAME>``
and command-line flags ``--<name>`` (see :mod:`infra.settings_layers`).
``config/proxy.toml`` documents every setting with its default.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from infra.settings_layers import ConfigError, LayeredSettings
from proxy.dialects.dialect import DialectError, load_dialect

__all__ = ["ConfigError", "Settings", "reachable_url", "signing_key"]

ENV_PREFIX = "JOBPROXY_"
REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRET_PREFIX = "whsec_"
HTTP_SCHEMES = ("http", "https")
WILDCARD_HOSTS = ("0.0.0.0", "", "::")
REDIS_SCHEMES = ("redis", "rediss", "unix")
LogLevel = Literal["debug", "info", "warning", "error"]
TransportChoice = Literal["native", "httpx"]


class Settings(LayeredSettings):
    """Every knob of the proxy. See ``config/proxy.toml`` for what each one does."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    config_variable = ENV_PREFIX + "CONFIG"

    host: str = Field(
        default="127.0.0.1", description="address to listen on; 0.0.0.0 in a container"
    )
    port: int = Field(default=8000, ge=0, le=65_535, description="TCP port; 0 picks a free one")
    upstream_url: str = Field(
        default="http://127.0.0.1:8001",
        description="base URL of the job server: the proxy starts jobs and reads their "
        "status below it",
    )
    upstream_dialect: str = Field(
        default="work-sample",
        description="the job server's protocol: work-sample, predictions, or the path of a "
        "dialect TOML file",
    )
    public_url: str = Field(
        default="",
        description="base URL at which the job server calls back (<public_url>/callback/"
        "<token>); empty: http://<host>:<bound port>",
    )
    redis_url: str = Field(
        default="",
        description="Redis URL of the shared mode (several replicas); empty: one process",
    )
    replica_id: str = Field(
        default="",
        description="name of this replica inside callback tokens; empty: random per start",
    )
    callback_secret: str = Field(
        default="",
        description="Standard Webhooks secret of callbacks (whsec_<base64> or text), the job "
        "server's own; empty: callbacks are not signed",
    )
    job_deadline: float = Field(
        default=30.0, gt=0, description="seconds a held request may wait for its job (then 504)"
    )
    max_pending: int = Field(default=10_000, ge=1, description="held requests at most (503 beyond)")
    max_body_size: int = Field(
        default=65_536, ge=1, description="largest request or callback body, bytes (413 beyond)"
    )
    max_head_size: int = Field(
        default=16_384,
        ge=1_024,
        description="largest request head (request line and headers), bytes (431 beyond)",
    )
    max_headers: int = Field(
        default=100, ge=8, description="most header lines of a request (431 beyond)"
    )
    start_timeout: float = Field(
        default=5.0, gt=0, description="seconds to connect to the job server for one /start attempt"
    )
    start_retry_budget: float = Field(
        default=3.0,
        ge=0,
        description="seconds of failing during which a /start is retried when safe",
    )
    poll_k: float = Field(
        default=2.0,
        ge=0,
        description="callbacks are expected within mean + poll_k deviations of their lateness",
    )
    poll_initial: float = Field(
        default=1.0,
        gt=0,
        description="seconds a callback is expected within before two callbacks were seen",
    )
    poll_backoff_base: float = Field(
        default=0.05, gt=0, description="shortest pause between status polls of a job, seconds"
    )
    poll_backoff_cap: float = Field(
        default=1.0, description="longest pause between status polls of a job, seconds (≥ the base)"
    )
    poll_lost_grace: float = Field(
        default=1.0,
        ge=0,
        description="seconds after acceptance from which a 404 poll means job_lost",
    )
    poll_lost_after: float = Field(
        default=10.0,
        gt=0,
        description="seconds without a usable status answer (failing all along) that make a "
        "polled job job_lost",
    )
    poll_max_in_flight: int = Field(
        default=32, ge=1, description="status polls under way at once, over all jobs"
    )
    poll_timeout: float = Field(
        default=2.0, gt=0, description="seconds to wait for one poll's answer"
    )
    result_ttl: float = Field(
        default=300.0,
        ge=0,
        description="seconds a finished job is kept for GET /jobs/{ref}, and an "
        "Idempotency-Key's claim and result for retries (in Redis in shared mode)",
    )
    max_results: int = Field(
        default=100_000,
        ge=1,
        description="finished jobs kept for GET /jobs/{ref}, and Idempotency-Key claims and "
        "results, this process keeps at most, of each; the oldest leave first",
    )
    stream_heartbeat: float = Field(
        default=15.0,
        gt=0,
        description="seconds between keep-alive comments on a quiet event stream",
    )
    drain_timeout: float = Field(
        default=25.0,
        ge=0,
        description="on SIGTERM/SIGINT: seconds held requests may finish (then 503)",
    )
    upstream_transport: TransportChoice = Field(
        default="native", description="outbound transport: native (the proxy's own) or httpx"
    )
    upstream_max_connections: int = Field(
        default=1_000, ge=1, description="connections to the job server at most, kept alive"
    )
    upstream_max_per_account: int = Field(
        default=100, ge=1, description="/start requests of one account in flight at most"
    )
    backlog: int = Field(
        default=4_096, ge=1, description="listen backlog: connections the kernel queues"
    )
    log_level: LogLevel = Field(default="info", description="log level")
    access_log: bool = Field(default=False, description="log every request")
    address_file: str = Field(
        default="",
        description="file the proxy writes its URL to once it serves, for the health check "
        "(python -m proxy.healthcheck); empty: none",
    )

    @field_validator("upstream_url")
    @classmethod
    def _upstream_url_is_set(cls, value: str) -> str:
        if not value:
            raise ValueError("must be set")
        return value

    @field_validator("upstream_url", "public_url", "redis_url")
    @classmethod
    def _url_is_absolute(cls, value: str, info: ValidationInfo) -> str:
        schemes = REDIS_SCHEMES if info.field_name == "redis_url" else HTTP_SCHEMES
        parts = urlsplit(value)
        if value and not (
            parts.scheme in schemes and (bool(parts.netloc) or parts.scheme == "unix")
        ):
            raise ValueError(f"must be an absolute URL ({', '.join(schemes)})")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url_is_a_base(cls, value: str) -> str:
        # Callbacks go to <public_url>/callback/<token>: a trailing slash would double it,
        # and a query or fragment would end up in the middle of the URL.
        parts = urlsplit(value)
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise ValueError("must be a base URL: no query (?) and no fragment (#)")
        return value.rstrip("/")

    @field_validator("upstream_dialect")
    @classmethod
    def _dialect_compiles(cls, value: str) -> str:
        # Compiled here so that a wrong file stops the start with one line.
        try:
            load_dialect(value)
        except DialectError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica_id_fits_in_tokens(cls, value: str) -> str:
        # The id is the first part of every callback token: <replica>.<random>.<mac>.
        if value and not REPLICA_ID.fullmatch(value):
            raise ValueError("must be 1 to 64 letters, digits, - or _")
        return value

    @field_validator("callback_secret")
    @classmethod
    def _secret_decodes(cls, value: str) -> str:
        # Checked here so that a bad secret stops the start with one line, not a traceback.
        try:
            signing_key(value)
        except ValueError:
            raise ValueError("the part after whsec_ is not base64") from None
        return value

    @field_validator("poll_backoff_cap")
    @classmethod
    def _cap_above_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("poll_backoff_base")
        if base is not None and value < base:
            raise ValueError(f"must not be below poll_backoff_base ({base})")
        return value

    def with_public_url(self, bound_port: int) -> Settings:
        """Fill in ``public_url`` from the bound address when it was not configured."""
        if self.public_url:
            return self
        return self.with_changes(public_url=reachable_url(self.host, bound_port))


def reachable_url(host: str, port: int) -> str:
    """The base URL at which a client on this machine reaches a server listening on
    ``host:port``; a wildcard address (any interface) is reached at 127.0.0.1."""
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def signing_key(secret: str) -> bytes:
    """The HMAC key a callback secret stands for: the base64-decoded part after
    ``whsec_`` (Standard Webhooks), else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError("callback_secret: the part after whsec_ is not base64") from None
    return secret.encode()
