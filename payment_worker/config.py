"""Settings: every PAYMENT_* variable of the contract, validated once at start-up."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from payment_worker.exceptions import ConfigurationError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
_API_KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
_STRIPE_KEY = re.compile(r"(sk|rk)_[A-Za-z0-9_]{1,250}")


class Settings(BaseSettings):
    """The one configuration object, read from the environment only."""

    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_config: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    db_schema: str = "bc_payment"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    ordering_url: str = "http://127.0.0.1:5002"
    inventory_url: str = "http://127.0.0.1:5003"
    gateway_latency_ms: Annotated[tuple[int, int], NoDecode] = (100, 500)
    gateway_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    gateway_unknown_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    gateway: Literal["simulated", "stripe"] = "simulated"
    stripe_api_key: SecretStr | None = None  # required when gateway is stripe
    stripe_api_base: str = "https://api.stripe.com"
    # Not http_timeout_s (2 s, for Ordering and Inventory): a card authorization can take
    # Stripe several seconds, and an answer cut short is an unknown outcome, not a retry.
    stripe_timeout_s: float = Field(default=30.0, gt=0)
    schema_registry_url: str | None = None
    topic_commands: str = "process-payment"
    topic_succeeded: str = "payment-succeeded"
    topic_failed: str = "payment-failed"
    topic_replies: str = "payment-replies"
    topic_dlq: str = "process-payment-dlq"
    consumer_group: str = "payment-worker"
    reconcile_after_s: float = Field(default=60.0, gt=0)
    shim_port: int = Field(default=5004, ge=1, le=65535)
    shim_reply_timeout_s: float = Field(default=15.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    reply_topic_pattern: Annotated[re.Pattern[str], NoDecode] = re.compile(".+")
    outbox_max_attempts: int = Field(default=20, ge=1, le=1000)
    topic_partitions: int = Field(default=6, ge=1, le=10_000)  # for `payment-worker topics`
    topic_replication: int | None = Field(default=None, ge=1, le=32_767)  # None: broker's
    # Not in the contract's list: tuning knobs with safe defaults.
    log_level: str = Field(default="INFO", pattern="^(?i)(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["json", "console"] | None = None  # None: JSON unless on a terminal
    shim_group: str = "payment-shim"
    shim_max_in_flight: int = Field(default=2000, ge=1)
    shim_body_timeout_s: float = Field(default=10.0, gt=0)
    max_in_flight: int = Field(default=2000, ge=1)
    http_timeout_s: float = Field(default=2.0, gt=0)
    http_retry_budget_s: float = Field(default=5.0, gt=0)
    # Production connections: TLS, credentials and limits (docs/operations.md).
    ordering_ca_file: FilePath | None = None
    ordering_cert_file: FilePath | None = None
    ordering_key_file: FilePath | None = None
    ordering_authorization: SecretStr | None = None
    inventory_ca_file: FilePath | None = None
    inventory_cert_file: FilePath | None = None
    inventory_key_file: FilePath | None = None
    inventory_authorization: SecretStr | None = None
    http_idle_timeout_s: float = Field(default=15.0, gt=0)
    http_max_response_bytes: int = Field(default=1 << 20, ge=1024)
    schema_registry_user_info: SecretStr | None = None
    schema_registry_bearer_token: SecretStr | None = None
    schema_registry_logical_cluster: str = ""
    schema_registry_ca_file: FilePath | None = None
    schema_registry_auto_register: bool = True
    shim_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    shim_metrics_public: bool = False
    shim_tls_cert_file: FilePath | None = None
    shim_tls_key_file: FilePath | None = None

    @field_validator("gateway_latency_ms", mode="before")
    @classmethod
    def _latency_range(cls, value: object) -> tuple[int, int]:
        if isinstance(value, tuple | list) and len(value) == 2:
            low, high = int(value[0]), int(value[1])
        else:
            text = str(value).strip()
            match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", text)
            if not match:
                raise ValueError("expected milliseconds as 'LOW-HIGH' (e.g. 100-500) or 'N'")
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) else low
        if low > high:
            raise ValueError("the low end of the range is above the high end")
        return low, high

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object of librdkafka properties")
        return value

    @field_validator("reply_topic_pattern", mode="before")
    @classmethod
    def _regex(cls, value: object) -> re.Pattern[str]:
        if isinstance(value, re.Pattern):
            return value
        try:
            return re.compile(str(value))
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None

    @field_validator("db_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("expected a lower-case SQL identifier")
        return value

    @field_validator(
        "topic_commands", "topic_succeeded", "topic_failed", "topic_replies", "topic_dlq"
    )
    @classmethod
    def _topic(cls, value: str) -> str:
        if not _TOPIC.match(value):
            raise ValueError("expected a Kafka topic name ([A-Za-z0-9._-], 1-249 characters)")
        return value

    @field_validator(
        "schema_registry_url",
        "metrics_port",
        "topic_replication",
        "log_format",
        "ordering_ca_file",
        "ordering_cert_file",
        "ordering_key_file",
        "ordering_authorization",
        "inventory_ca_file",
        "inventory_cert_file",
        "inventory_key_file",
        "inventory_authorization",
        "schema_registry_user_info",
        "schema_registry_bearer_token",
        "schema_registry_ca_file",
        "shim_tls_cert_file",
        "shim_tls_key_file",
        "stripe_api_key",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ordering_authorization", "inventory_authorization")
    @classmethod
    def _header_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _HEADER_VALUE.fullmatch(value.get_secret_value()):
            raise ValueError("expected one header value of printable ASCII (e.g. 'Bearer abc')")
        return value

    @field_validator("stripe_api_key")
    @classmethod
    def _stripe_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _STRIPE_KEY.fullmatch(value.get_secret_value()):
            raise ValueError("expected a Stripe secret or restricted key (sk_... or rk_...)")
        return value

    @field_validator("stripe_api_base")
    @classmethod
    def _stripe_base(cls, value: str) -> str:
        url = httpx.URL(value)
        local = url.host in ("127.0.0.1", "localhost", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and local):
            raise ValueError("expected https:// (plain http only to a stand-in on this machine)")
        return value.rstrip("/")

    @field_validator("schema_registry_user_info")
    @classmethod
    def _user_info(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("expected 'user:password'")
        return value

    @field_validator("shim_api_keys", mode="before")
    @classmethod
    def _api_keys(cls, value: object) -> tuple[SecretStr, ...]:
        if isinstance(value, tuple | list):
            keys = [k.get_secret_value() if isinstance(k, SecretStr) else str(k) for k in value]
        else:
            keys = [k.strip() for k in str(value or "").split(",") if k.strip()]
        for number, key in enumerate(keys, 1):
            if not _API_KEY.fullmatch(key):
                raise ValueError(
                    f"key {number}: expected 16-256 characters of [A-Za-z0-9._~+/=-],"
                    " keys separated by commas"
                )
        return tuple(SecretStr(k) for k in keys)

    @model_validator(mode="after")
    def _connections(self) -> Settings:
        for service in ("ordering", "inventory"):
            tls = [
                f"PAYMENT_{service.upper()}_{part.upper()}_FILE"
                for part in ("ca", "cert", "key")
                if getattr(self, f"{service}_{part}_file") is not None
            ]
            url = getattr(self, f"{service}_url")
            if tls and not url.startswith("https://"):
                raise ValueError(
                    f"{tls[0]} is set but PAYMENT_{service.upper()}_URL is not https://"
                )
            _pair(self, f"{service}_cert_file", f"{service}_key_file")
        _pair(self, "shim_tls_cert_file", "shim_tls_key_file")
        if self.gateway == "stripe" and self.stripe_api_key is None:
            raise ValueError("PAYMENT_STRIPE_API_KEY is required when PAYMENT_GATEWAY is stripe")
        if self.schema_registry_user_info and self.schema_registry_bearer_token:
            raise ValueError(
                "PAYMENT_SCHEMA_REGISTRY_USER_INFO and PAYMENT_SCHEMA_REGISTRY_BEARER_TOKEN"
                " are both set: choose one"
            )
        return self

    def api_key_digests(self) -> list[bytes]:
        """SHA-256 of each shim API key: what the shim compares, in constant time."""
        return [hashlib.sha256(k.get_secret_value().encode()).digest() for k in self.shim_api_keys]

    @field_validator("database_url", "redis_url", "ordering_url", "inventory_url", mode="after")
    @classmethod
    def _has_scheme(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if "://" not in text:
            raise ValueError("expected a URL with a scheme")
        return value if isinstance(value, SecretStr) else text.rstrip("/")

    def own_topics(self) -> list[str]:
        """The five topics of the contract's section 2, as configured."""
        return [
            self.topic_commands,
            self.topic_succeeded,
            self.topic_failed,
            self.topic_replies,
            self.topic_dlq,
        ]

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka properties shared by every client (PAYMENT_KAFKA_CONFIG wins)."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_config}


def _pair(settings: Settings, cert: str, key: str) -> None:
    if (getattr(settings, cert) is None) != (getattr(settings, key) is None):
        raise ValueError(
            f"PAYMENT_{cert.upper()} and PAYMENT_{key.upper()} go together: set both or neither"
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; ConfigurationError names the variable that is wrong."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across variables: the message names them
            raise ConfigurationError(message) from None
        field = str(error["loc"][0])
        raise ConfigurationError(f"PAYMENT_{field.upper()}: {message}") from None
