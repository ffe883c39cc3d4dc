"""Gateway configuration: environment (``ONECARD_*``, nested with ``__``) over a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class MqttConfig(BaseModel):
    #: MQTT client library behind the one-file adapter (docs/benchmarks.md records the choice).
    client: Literal["aiomqtt", "gmqtt", "lean"] = "lean"
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = "gateway"
    password: str | None = None
    client_id: str = "onecard-gateway-1"
    #: MQTT v5 shared-subscription group; several gateways with the same group share the load.
    shared_group: str | None = None
    #: Keep-alive with the broker: its last will (the retained `offline`) is published about
    #: 1.5 × this after the gateway goes silent (docs/reliability.md, partition).
    keepalive_s: int = 10


class HttpConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 9108  # /metrics, /livez, /readyz; 0 picks a free port


class DenyListConfig(BaseModel):
    poll_interval_ms: int = Field(default=50, ge=5, le=5000)
    snapshot_every_changes: int = Field(default=500, ge=1, le=1000)
    snapshot_max_age_s: float = Field(default=10.0, gt=0)
    #: Terminals stop approving offline once their list is older than this.
    max_offline_age_s: int = 600
    #: How long a kiosk loss report waits for online terminals to apply the change.
    applied_wait_ms: int = 300


class OfflineConfig(BaseModel):
    heartbeat_interval_s: int = 30
    offline_max_amount_fen: int = 2000
    offline_max_daily_fen: int = 5000
    offline_max_count: int = 500
    #: Settlement of uploaded offline sales (terminal contract §8.3): a sale dated more than this
    #: after the gateway's clock is refused ``clock_skew``.
    settle_clock_tolerance_s: int = Field(default=300, ge=0, le=86_400)
    #: A sale older than this when uploaded is refused ``too_late`` (recorded, never settled).
    settle_max_age_s: int = Field(default=7 * 86_400, ge=3_600, le=366 * 86_400)


class RequestConfig(BaseModel):
    #: A request is decided only until ``sent_ms`` + this (and within its MQTT Message Expiry);
    #: later it is answered ``expired`` and moves no money (terminal contract §6).
    ttl_ms: int = Field(default=5000, ge=500, le=600_000)
    #: A ``sent_ms`` further ahead of the gateway's clock than this is ``clock_skew``.
    clock_tolerance_ms: int = Field(default=2000, ge=0, le=60_000)
    #: How long a batch waits for the registry's write lock before answering ``unavailable``.
    lock_wait_ms: int = Field(default=2000, ge=10, le=60_000)
    #: A decision the writer has not finished after this is answered ``unavailable`` (the
    #: terminal retries with the same request id and gets the decision once it is durable).
    writer_timeout_ms: int = Field(default=4000, ge=100, le=120_000)
    #: Where SQLite tap decisions run: "process", a decision process of the gateway's own (its
    #: own interpreter lock: issue 14, gateway/tapengine.py); "thread", the writer thread inside
    #: the gateway. PostgreSQL always decides in the gateway (several writers, issue 12).
    engine: Literal["process", "thread"] = "process"


class HaConfig(BaseModel):
    """Several gateways on one PostgreSQL registry (issue 12, docs/operations.md)."""

    #: This instance's name in its retained status topic, logs and metrics; default: the MQTT
    #: client id (which must differ between instances anyway).
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: How often a follower asks for the leader lock and the leader checks it still holds it:
    #: the deny-list publisher and the scheduler move to a survivor within about this long.
    leader_retry_s: float = Field(default=1.0, gt=0, le=60)
    #: Group commit on PostgreSQL: at most this many requests per transaction.
    max_batch: int = Field(default=128, ge=1, le=1024)


class AlertsConfig(BaseModel):
    """Cardholder alerts (gateway/services/alerts.py)."""

    #: A debit taking the purse below this many fen tells the holder once; 0 turns it off.
    low_balance_fen: int = Field(default=1000, ge=0, le=100_000_000)
    #: At most one "lost/frozen card presented" alert per card per terminal in this window.
    presented_window_s: int = Field(default=600, ge=0, le=86_400)


class PaymentsConfig(BaseModel):
    """Online top-up through a payment provider (TOP-1, the app channel;
    gateway/services/payments.py). The signing key is never stored in the registry: give
    ``key_file`` (a file only the service user reads) or ``ONECARD_PAYMENTS__KEY``."""

    provider: Literal["sandbox"] = "sandbox"
    #: The provider's API (the sandbox: ``python -m gateway.payments.sandbox_app``).
    api_url: str = "http://127.0.0.1:8090"
    #: Where the provider posts its signed notifications: the web app's notify route.
    notify_url: str = "http://127.0.0.1:8080/pay/notify/sandbox"
    merchant_id: str = "onecard-demo"
    key: SecretStr | None = None
    key_file: Path | None = None
    #: Per top-up and per holder per campus day, in fen.
    min_amount_fen: int = Field(default=100, ge=1, le=100_000_000)
    max_amount_fen: int = Field(default=50_000, ge=1, le=100_000_000)
    max_daily_fen: int = Field(default=100_000, ge=1, le=100_000_000)
    #: An order not paid within this expires (closed at the provider first).
    order_ttl_s: int = Field(default=1800, ge=60, le=86_400)
    #: A pending order whose callback has not come after this is queried by the sweep.
    query_after_s: int = Field(default=60, ge=1, le=86_400)
    #: How often the web process sweeps pending orders.
    sweep_interval_s: float = Field(default=15.0, gt=0, le=3600)

    def signing_key(self) -> bytes:
        if self.key is not None:
            return self.key.get_secret_value().encode()
        if self.key_file is not None:
            return self.key_file.read_bytes().strip()
        msg = "payments: set key_file or ONECARD_PAYMENTS__KEY (the provider's signing key)"
        raise ValueError(msg)


class WebConfig(BaseModel):
    """``onecard web``: the cardholder self-service platform (issue 9)."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: Secure cookies (HTTPS only); switch off only for http://localhost in tests and the demo.
    cookie_secure: bool = True
    #: A session unused this long is over (the holder logs in again).
    idle_timeout_s: int = Field(default=900, ge=30, le=86_400)
    #: Login attempts that fail from one client address within the window before it waits.
    max_failures_per_address: int = Field(default=20, ge=1, le=10_000)
    address_window_s: int = Field(default=600, ge=1, le=86_400)
    #: The gateways' /metrics URLs: a web loss report waits (up to ``confirm_timeout_ms``) until
    #: each reports the new deny-list version before telling the holder the card is refused.
    gateway_metrics_urls: list[str] = Field(default_factory=list)
    confirm_timeout_ms: int = Field(default=2000, ge=0, le=30_000)
    #: Uvicorn trusts X-Forwarded-For only from these addresses (a reverse proxy in front).
    forwarded_allow_ips: str = "127.0.0.1"
    proxy_headers: bool = False


class ConsoleConfig(BaseModel):
    """``onecard console``: the operator console (issue 11), a sibling of ``onecard web`` bound to
    the counter network; ``onecard reader-agent`` runs on each counter PC."""

    host: str = "127.0.0.1"
    port: int = 8090
    cookie_secure: bool = True
    #: An operator idle this long is logged out.
    idle_timeout_s: int = Field(default=600, ge=30, le=86_400)
    max_failures_per_address: int = Field(default=20, ge=1, le=10_000)
    address_window_s: int = Field(default=600, ge=1, le=86_400)
    #: Where the counter PC's browser reaches its reader agent (loopback only).
    reader_agent_url: str = "http://127.0.0.1:8765"
    #: The console's own origin, the only one the reader agent answers (CORS).
    origin: str = "http://127.0.0.1:8090"
    #: Mass-block guard-rail: more cards than this onto the deny list at once needs approval.
    mass_block_threshold: int = Field(default=50, ge=0, le=1_000_000)
    #: A read-only broker account (monitor) for the terminals' retained status.
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    #: The gateways' /metrics URLs for the live page.
    gateway_metrics_urls: list[str] = Field(default_factory=list)


class PrivacyConfig(BaseModel):
    """Retention of personal data in the leader gateway's scheduler (issue 15, PIPL art. 19;
    docs/privacy.md §5). The plan (a dry run: who is due) runs every ``interval_s`` and is
    logged masked, exported as ``onecard_retention_due_holders`` and audited; archiving and
    purging happen only with ``enabled = true`` and an ``archive_dir``."""

    #: Archive, then purge the personal fields of holders past their period (else: plan only).
    enabled: bool = False
    #: Days kept after a graduation / after any other deregistration (leaving, refund).
    after_graduation_days: int = Field(default=3 * 365, ge=30, le=36_500)
    after_termination_days: int = Field(default=3 * 365, ge=30, le=36_500)
    #: Where each purged holder's export goes first, encrypted (``holder-<id>.json.pii1``).
    archive_dir: Path | None = None
    #: How often the leader runs it (a day; the first run when it becomes the leader).
    interval_s: float = Field(default=86_400.0, gt=0, le=30 * 86_400)

    @model_validator(mode="after")
    def _archive_first(self) -> PrivacyConfig:
        if self.enabled and self.archive_dir is None:
            msg = "privacy: enabled = true needs archive_dir (each holder is archived first)"
            raise ValueError(msg)
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ONECARD_", env_nested_delimiter="__", extra="forbid"
    )

    db: str = "var/onecard.sqlite3"
    #: "uvloop" when installed (extra ``fast``), else the standard asyncio loop.
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    log_level: str = "INFO"
    scheduler_interval_s: float = 10.0
    max_in_flight: int = 256
    drain_timeout_s: float = 10.0
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    denylist: DenyListConfig = DenyListConfig()
    offline: OfflineConfig = OfflineConfig()
    requests: RequestConfig = RequestConfig()
    ha: HaConfig = HaConfig()
    web: WebConfig = WebConfig()
    console: ConsoleConfig = ConsoleConfig()
    alerts: AlertsConfig = AlertsConfig()
    payments: PaymentsConfig = PaymentsConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @property
    def instance_id(self) -> str:
        return self.ha.instance_id or self.mqtt.client_id

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_path)
        return (init_settings, env_settings, toml)


_toml_path: Path | None = None


def load_settings(toml: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``toml`` (optional), then ``ONECARD_*`` variables, then ``overrides``."""
    global _toml_path
    _toml_path = toml
    try:
        return Settings(**overrides)
    finally:
        _toml_path = None
