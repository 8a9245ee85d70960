"""Settings: flags > environment (``AGENTCAST_*``, then seed 002's ``WEBSOCKET_*``) >
YAML file > defaults.

The YAML file holds agentcast's flat keys and may hold seed 002's ``websocket:`` section
as written (:mod:`agentcast.compat.seed002` maps it). Secret settings (``SecretStr``:
``llm_api_key``, ``jwt_secret``) show as ``**********`` in every repr and dump; read them
with ``.get_secret_value()`` where they are used, nowhere else.

:func:`load_settings` builds validated :class:`Settings`; an invalid value raises
:class:`~agentcast.errors.ConfigError` naming the field and the reason.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from agentcast.compat import seed002
from agentcast.errors import ConfigError
from agentcast.security.origin import parse_origin_setting

__all__ = ["Settings", "load_settings"]

_KIB = 1024
_MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the server. Times are in seconds, sizes in bytes."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTCAST_", extra="forbid", validate_assignment=True
    )

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    insecure: bool = Field(
        False, description="Allow open dev mode (no auth) on a non-loopback address."
    )

    # -- authentication (agentcast.security) --
    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 secret of client tokens (at least 32 bytes; never printed). "
        "Setting it (or a key below) turns authentication on.",
    )
    jwt_public_key_file: str = Field(
        "", description="PEM public key (RSA or EC) verifying RS256/ES256 client tokens."
    )
    jwt_jwks_url: str = Field(
        "", description="JWKS URL of the token issuer (cached; fetched again on an unknown kid)."
    )
    jwt_algorithms: list[str] = Field(
        default_factory=list,
        description="Accepted token algorithms (default: HS256 with a secret, the key's "
        "with a key file, RS256 and ES256 with a JWKS URL); never taken from the token.",
    )
    jwt_audience: str = Field("", description="Required `aud` claim (empty: not checked).")
    jwt_issuer: str = Field("", description="Required `iss` claim (empty: not checked).")
    jwt_leeway: float = Field(30.0, ge=0, le=600, description="Clock skew allowed (seconds).")
    jwt_jwks_timeout: float = Field(5.0, gt=0, le=60, description="JWKS fetch deadline.")
    jwt_jwks_cache: float = Field(300.0, gt=0, description="JWKS cache lifetime (seconds).")
    jwt_claims: list[str] = Field(
        default_factory=list,
        description="Token claims kept on the principal for the application's policy "
        "(`principal.claims`; `*`: all). None by default: a copy costs memory per connection.",
    )
    auth: str = Field(
        "",
        description="The application's own authenticator/authorizer: package.module:factory "
        "(called with the settings).",
    )
    auth_timeout: float = Field(
        5.0,
        ge=0,
        description="A /ws handshake without credentials must send an `auth` message within "
        "this long (0: such handshakes get HTTP 401).",
    )
    auth_expiry_grace: float = Field(
        30.0, ge=0, description="A connection whose token expired is closed after this long."
    )
    ticket_ttl: float = Field(
        60.0, gt=0, le=600, description="Lifetime of a single-use WebSocket ticket."
    )
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug|trace)$")
    log_format: str = Field(
        "text",
        pattern="^(text|json)$",
        description="Log lines as text, or as one JSON object per line (time, level, logger, "
        "message, connection/user/topic where known; tokens redacted).",
    )
    access_log: bool = Field(
        False, description="Log every HTTP request (uvicorn's access log; on at debug level)."
    )
    dashboard: bool = Field(
        True,
        description="Serve the web dashboard at / (docs/dashboard.md); false leaves / to "
        "an application that mounts agentcast's routes into its own.",
    )
    # -- observability (docs/observability.md) --
    metrics_public: bool = Field(
        False,
        description="Serve /metrics without credentials even with authentication on (a "
        "scrape network); otherwise it needs the admin scope once authentication is on.",
    )
    readyz_timeout: float = Field(
        2.0, gt=0, le=60, description="/readyz: how long the broker and store may take to answer."
    )
    # -- origins, TLS, secrets and seed 002's names (docs/security.md) -----------------
    origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port], exact) allowed besides the "
        "server's own; the CORS allow-list too (empty: same-origin pages only). "
        "Environment: a JSON list or comma-separated.",
    )
    tls_certfile: str = Field("", description="TLS certificate chain (PEM): serve https/wss.")
    tls_keyfile: str = Field("", description="TLS private key (PEM) of tls_certfile.")
    auth_required: bool = Field(
        False,
        description="Refuse to start without authentication configured (seed 002's "
        "security.authentication.enabled).",
    )
    token_expiry: float = Field(
        3600.0,
        gt=0,
        description="Lifetime of tokens `agentcast token` mints without --ttl "
        "(seed 002's token_expiry).",
    )
    broker_url: str = Field(
        "memory://",
        description="Broker URL: memory:// (one process) or redis://host:6379/0?prefix=agentcast "
        "(several processes and hosts; docs/scaling.md).",
    )
    producer_ttl: float = Field(
        3600.0,
        gt=0,
        description="How long the broker remembers an idempotent producer after its last "
        "publish (a retry later than that is published again; docs/scaling.md).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Server processes on one port (`serve --workers`); more than one needs "
        "a shared broker (redis://).",
    )
    cluster_url: str = Field(
        "",
        description="Where the nodes share connection counts per user, rate-limit "
        "consumption and presence: memory:// (this process only) or "
        "redis://host:port/db?prefix=name; empty: broker_url.",
    )
    node_heartbeat: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds between a node's heartbeats in the cluster state.",
    )
    node_ttl: float = Field(
        5.0,
        gt=0,
        le=600,
        description="A node whose heartbeat is older than this is dead: its connections "
        "and presence no longer count (more than node_heartbeat).",
    )
    cluster_sync_interval: float = Field(
        0.25,
        gt=0,
        le=60,
        description="Seconds between exchanges of rate-limit consumption between nodes "
        "(the cross-node overshoot is bounded by nodes × rate × this).",
    )
    store_url: str = Field(
        "sqlite:///agentcast.db",
        description="Run store: sqlite:///path.db or postgresql://user@host/db; empty: none.",
    )

    ping_interval: float = Field(20.0, gt=0, description="WebSocket ping period.")
    ping_timeout: float = Field(
        20.0, gt=0, description="Close when a ping is unanswered this long."
    )
    idle_timeout: float = Field(
        300.0, gt=0, description="Close connections with no subscription and no command this long."
    )
    close_timeout: float = Field(5.0, gt=0, description="Wait this long for the closing handshake.")
    shutdown_timeout: float = Field(10.0, gt=0, description="Graceful shutdown deadline.")

    max_message_bytes: int = Field(64 * _KIB, ge=128, description="Largest client frame.")
    max_event_bytes: int = Field(256 * _KIB, ge=64, description="Largest event `data` (JSON).")
    max_subscriptions: int = Field(1000, ge=1, description="Topics per connection.")
    outbox_max_bytes: int = Field(
        4 * _MIB, ge=4 * _KIB, description="Slow-consumer bound: queued bytes per connection."
    )
    outbox_max_frames: int = Field(
        16384, ge=16, description="Slow-consumer bound: queued frames per connection."
    )
    write_high_water: int = Field(
        256 * _KIB, ge=_KIB, description="Transport buffer above which a connection counts as slow."
    )

    publish_batch: int = Field(
        2048,
        ge=1,
        le=65536,
        description="A producer publishing in a tight loop yields to the event loop after "
        "this many events (or 16,384 deliveries): more events per flush amortize writes "
        "(unicast bursts), fewer bound the latency a burst adds.",
    )

    history_max_events: int = Field(1000, ge=1, description="History per topic: events.")
    history_max_bytes: int = Field(4 * _MIB, ge=_KIB, description="History per topic: bytes.")
    history_max_age: float = Field(
        3600.0, ge=0, description="History per topic: seconds (0: no age bound)."
    )

    # -- limits (issue 11; docs/security.md "Limits") ----------------------------------
    history_max_total_bytes: int = Field(
        256 * _MIB,
        ge=_MIB,
        description="In-process history of all topics together (memory broker): past it "
        "the least recently published topics lose their history first.",
    )
    max_connections: int = Field(
        10_000, ge=1, description="WebSocket connections at once (HTTP 503 beyond)."
    )
    max_connections_per_user: int = Field(
        100, ge=1, description="WebSocket connections at once per principal (HTTP 429 beyond)."
    )
    header_timeout: float = Field(
        10.0,
        ge=0,
        description="A request's headers (a WebSocket handshake's too) must arrive within this "
        "long from its first byte: HTTP 408 and closed after (slowloris; 0: no limit).",
    )
    max_pending_handshakes: int = Field(
        256,
        ge=1,
        description="WebSocket handshakes being authenticated at once (HTTP 503 beyond).",
    )
    max_http_body_bytes: int = Field(
        1 * _MIB, ge=_KIB, description="Largest HTTP request body (HTTP 413 beyond)."
    )
    replay_page_events: int = Field(
        500, ge=1, description="A replay reads the stored run this many events at a time."
    )
    rate_limit_chat_per_minute: float = Field(
        60.0, ge=0, description="chat:send per minute, per connection and per user (0: none)."
    )
    rate_limit_publish_per_minute: float = Field(
        6000.0,
        ge=0,
        description="Client publishes per minute (WebSocket events and HTTP requests), per "
        "connection and per user (0: none).",
    )
    rate_limit_commands_per_minute: float = Field(
        6000.0,
        ge=0,
        description="Commands of any type per minute, per connection and per user (0: none).",
    )
    rate_limit_burst: float = Field(
        1.0,
        ge=0.05,
        description="Bucket size as minutes of rate: the burst a client may send at once "
        "(1.0: a minute's worth).",
    )
    rate_limit_close_after: int = Field(
        20,
        ge=1,
        description="Refusals within rate_limit_close_window after which the connection "
        "is closed with 4429.",
    )
    rate_limit_close_window: float = Field(
        10.0, gt=0, description="Seconds over which rate_limit_close_after counts."
    )

    run_lease_ttl: float = Field(
        60.0,
        gt=0,
        description="A run with no event or lease renewal this long is sealed with publisher_lost.",
    )
    monitoring_interval: float = Field(
        10.0, gt=0, description="Seconds between monitoring:metrics frames (while subscribed)."
    )

    agent: str = Field(
        "",
        description="Default chat agent: package.module:factory (empty: the built-in "
        "offline agent, or the LLM upstream when llm_url is set).",
    )
    llm_url: str = Field(
        "", description="OpenAI-compatible base URL, e.g. http://localhost:1234/v1 (LM Studio)."
    )
    llm_model: str = Field("", description="Model name at llm_url.")
    llm_api_key: SecretStr = Field(
        SecretStr(""), description="API key for llm_url (empty: none); a secret: never shown."
    )
    llm_fallback_models: list[str] = Field(
        default_factory=list, description="Models tried in order when llm_model fails."
    )
    llm_concurrency: int = Field(
        4, ge=1, description="Generations at once per upstream; the rest wait in a fair queue."
    )
    llm_connect_timeout: float = Field(5.0, gt=0, description="Upstream connect timeout.")
    llm_read_timeout: float = Field(
        60.0, gt=0, description="Upstream silence after which a generation fails (stall)."
    )
    llm_max_retries: int = Field(2, ge=0, description="Retries before the first token.")
    llm_transport: Literal["auto", "native", "httpx"] = Field(
        "auto",
        description="HTTP client of completions: native (agentcast's event-stream reader, "
        "the fastest) or httpx (with proxy support); auto: native unless a proxy applies.",
    )
    llm_context_tokens: int = Field(
        4096, ge=256, description="The upstream model's context window (tokens)."
    )
    chat_context_tokens: int = Field(
        3072,
        ge=64,
        description="Token budget of a prompt: system prompt + recent messages + the new one "
        "(at most the model's context minus room for the answer).",
    )
    chat_system_prompt: str = Field(
        "You are a helpful assistant.", description="System prompt of LLM conversations."
    )
    chat_max_message_chars: int = Field(
        32_000, ge=1, description="Longest chat message accepted (characters)."
    )
    chat_history_limit: int = Field(
        10, ge=1, le=1000, description="Messages a chat:history returns by default."
    )
    chat_events_max_age: float | None = Field(
        None,
        ge=0,
        description="With a store: seconds a chat topic's events (deltas included) are kept "
        "for resuming across a restart (default: history_max_age; 0: until the "
        "conversation is deleted). Resuming from further back gets recovered: false and "
        "a snapshot.",
    )
    chat_idle_timeout: float = Field(
        600.0,
        gt=0,
        description="Seed 003 endpoint /api/v1/ws/{agent_id}: close after this long "
        "without a message (close code 4000).",
    )
    offline_tokens_per_second: float = Field(
        40.0, ge=0, description="Pace of the built-in offline agent (0: no pacing)."
    )

    gc_freeze: bool = Field(
        True,
        description="After start-up, move every live object to the garbage collector's "
        "permanent generation (gc.freeze): full collections then skip the ~10^5 objects of "
        "the loaded code, which otherwise stall the loop for tens of milliseconds "
        "(chat benchmark: p99 added delay 293 ms -> 4.7 ms).",
    )
    gc_full_every: int = Field(
        100,
        ge=0,
        description="With gc_freeze: a full (generation-2) collection at most every this "
        "many generation-1 collections (gc.set_threshold's third value; CPython's default "
        "10, 0 keeps the interpreter's). A full collection walks every live tracked object "
        "(~140 per chat conversation) and stalls the event loop for 10-70 ms; cyclic "
        "garbage that outlived the young generations waits longer to be freed.",
    )

    bench_endpoint: bool = Field(
        False, description="Serve GET /_bench/publish for the benchmark (never in production)."
    )

    @field_validator("origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: a JSON list or comma-separated
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
            value = [v for v in value if not isinstance(v, str) or v.strip()]
        if isinstance(value, list):
            return [parse_origin_setting(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError("jwt_secret is blank: set a random secret of at least 32 bytes")
        if len(secret.encode()) < 32:
            raise ValueError(
                f"jwt_secret is {len(secret.encode())} bytes long: use at least 32 random "
                "bytes (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value

    @property
    def jwt_configured(self) -> bool:
        """True when a JWT secret, public key file or JWKS URL is set."""
        return bool(self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_url)

    @model_validator(mode="after")
    def _one_key_source(self) -> Settings:
        sources = [self.jwt_secret, self.jwt_public_key_file, self.jwt_jwks_url]
        if sum(1 for source in sources if source) > 1:
            raise ValueError("set one of jwt_secret, jwt_public_key_file and jwt_jwks_url")
        return self

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.ping_timeout > self.ping_interval * 10:
            raise ValueError("ping_timeout must be at most 10 × ping_interval")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("tls_certfile and tls_keyfile go together: give both or neither")
        if self.node_ttl <= self.node_heartbeat:
            raise ValueError("node_ttl must be longer than node_heartbeat")
        return self

    @property
    def cluster_state_url(self) -> str:
        """``cluster_url``, or ``broker_url`` when it is empty."""
        return self.cluster_url or self.broker_url

    @property
    def loopback(self) -> bool:
        """True when ``host`` only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _yaml_file.get("path")
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, seed002.environment(os.environ)),
        ]
        if yaml_file is not None:
            sources.append(_YamlSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


class _YamlSource(YamlConfigSettingsSource):
    """The YAML file, with seed 002's ``websocket:`` section mapped onto flat settings."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(file_path)!r}: not a mapping of settings")
        return seed002.flatten(data)


_yaml_file: dict[str, Path | None] = {"path": None}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Validated settings from ``overrides`` (flags), the environment and ``config_file``.

    ``None`` overrides are ignored, so unset CLI flags fall through to the other sources.
    """
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file {str(config_file)!r} does not exist")
    _yaml_file["path"] = Path(config_file) if config_file is not None else None
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    finally:
        _yaml_file["path"] = None
