"""Settings (config.py load_settings): the contract's defaults, and one clear error naming the
variable for every bad value."""

from __future__ import annotations

import os

import pytest

from payment_worker.config import load_settings
from payment_worker.exceptions import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PAYMENT_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("PAYMENT_"):
            monkeypatch.delenv(name)


def error_for(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    """The ConfigurationError message load_settings gives with `name` set to `value`."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    return str(info.value)


def test_default_database_schema_is_bc_payment() -> None:
    """Without PAYMENT_DB_SCHEMA the schema is bc_payment."""
    assert load_settings().db_schema == "bc_payment"


def test_default_topics_are_the_contracts() -> None:
    """The five topics default to the names of contract section 2."""
    s = load_settings()
    assert (s.topic_commands, s.topic_succeeded, s.topic_failed, s.topic_replies, s.topic_dlq) == (
        "process-payment",
        "payment-succeeded",
        "payment-failed",
        "payment-replies",
        "process-payment-dlq",
    )


def test_default_consumer_group_is_payment_worker() -> None:
    """The consumer group defaults to payment-worker."""
    assert load_settings().consumer_group == "payment-worker"


def test_default_timings_and_ports() -> None:
    """Reconcile age 60 s, shim port 5004 and reply timeout 15 s by default."""
    s = load_settings()
    assert (s.reconcile_after_s, s.shim_port, s.shim_reply_timeout_s) == (60, 5004, 15)


def test_default_gateway_latency_is_100_to_500_ms() -> None:
    """The simulated gateway's latency defaults to (100, 500) ms, as the C# one."""
    assert load_settings().gateway_latency_ms == (100, 500)


def test_default_failure_rate_is_zero_and_no_registry() -> None:
    """No injected failures and no schema registry (single-object encoding) by default."""
    s = load_settings()
    assert (s.gateway_failure_rate, s.schema_registry_url) == (0.0, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", (0, 0)), ("100-500", (100, 500)), ("50 - 75", (50, 75)), ("250", (250, 250))],
)
def test_gateway_latency_reads_a_range_or_a_single_value(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[int, int]
) -> None:
    """PAYMENT_GATEWAY_LATENCY_MS takes `LOW-HIGH` or one number (`0` turns latency off)."""
    monkeypatch.setenv("PAYMENT_GATEWAY_LATENCY_MS", value)
    assert load_settings().gateway_latency_ms == expected


def test_kafka_config_json_object_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """PAYMENT_KAFKA_CONFIG's JSON object is merged into every client's properties."""
    monkeypatch.setenv("PAYMENT_KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("PAYMENT_KAFKA_CONFIG", '{"session.timeout.ms": 6000}')
    assert load_settings().kafka_common() == {
        "bootstrap.servers": "broker:9092",
        "session.timeout.ms": 6000,
    }


def test_topic_names_can_be_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """PAYMENT_TOPIC_COMMANDS renames the commands topic."""
    monkeypatch.setenv("PAYMENT_TOPIC_COMMANDS", "team.process-payment_v2")
    assert load_settings().topic_commands == "team.process-payment_v2"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYMENT_GATEWAY_LATENCY_MS", "fast"),
        ("PAYMENT_GATEWAY_LATENCY_MS", "500-100"),
        ("PAYMENT_GATEWAY_LATENCY_MS", "-5"),
        ("PAYMENT_KAFKA_CONFIG", "{not json"),
        ("PAYMENT_KAFKA_CONFIG", "[1, 2]"),
        ("PAYMENT_KAFKA_CONFIG", '"a string"'),
        ("PAYMENT_GATEWAY_FAILURE_RATE", "2"),
        ("PAYMENT_GATEWAY_FAILURE_RATE", "-0.1"),
        ("PAYMENT_DB_SCHEMA", "bc_payment;drop"),
        ("PAYMENT_DB_SCHEMA", "BcPayment"),
        ("PAYMENT_TOPIC_COMMANDS", "process payment"),
        ("PAYMENT_TOPIC_DLQ", "dlq/x"),
        ("PAYMENT_SHIM_PORT", "70000"),
        ("PAYMENT_RECONCILE_AFTER_S", "0"),
        ("PAYMENT_SHIM_REPLY_TIMEOUT_S", "soon"),
        ("PAYMENT_DATABASE_URL", "localhost"),
        ("PAYMENT_GATEWAY", "paypal"),
        ("PAYMENT_STRIPE_API_KEY", "pk_live_publishable"),
        ("PAYMENT_STRIPE_API_BASE", "http://api.stripe.example"),
        ("PAYMENT_STRIPE_TIMEOUT_S", "0"),
    ],
)
def test_bad_value_error_starts_with_the_variable_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A bad value raises ConfigurationError whose one-line message starts with `NAME: `."""
    message = error_for(monkeypatch, name, value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_bad_database_url_error_does_not_echo_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error for a malformed database URL does not print the value (it may hold a password)."""
    message = error_for(monkeypatch, "PAYMENT_DATABASE_URL", "user:hunter2@db")
    assert "hunter2" not in message


# -- production connections --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"PAYMENT_ORDERING_CA_FILE": "/no/such/ca.pem"}, "PAYMENT_ORDERING_CA_FILE: "),
        (
            {"PAYMENT_INVENTORY_CA_FILE": "/etc/hostname"},
            "PAYMENT_INVENTORY_CA_FILE is set but PAYMENT_INVENTORY_URL is not https://",
        ),
        (
            {"PAYMENT_ORDERING_URL": "https://o", "PAYMENT_ORDERING_CERT_FILE": "/etc/hostname"},
            "PAYMENT_ORDERING_CERT_FILE and PAYMENT_ORDERING_KEY_FILE go together",
        ),
        (
            {"PAYMENT_SHIM_TLS_KEY_FILE": "/etc/hostname"},
            "PAYMENT_SHIM_TLS_CERT_FILE and PAYMENT_SHIM_TLS_KEY_FILE go together",
        ),
        (
            {"PAYMENT_ORDERING_AUTHORIZATION": "Bearer a\r\nX-Evil: 1"},
            "PAYMENT_ORDERING_AUTHORIZATION: ",
        ),
        ({"PAYMENT_HTTP_IDLE_TIMEOUT_S": "0"}, "PAYMENT_HTTP_IDLE_TIMEOUT_S: "),
        ({"PAYMENT_HTTP_MAX_RESPONSE_BYTES": "10"}, "PAYMENT_HTTP_MAX_RESPONSE_BYTES: "),
        (
            {"PAYMENT_SCHEMA_REGISTRY_USER_INFO": "no-colon-here"},
            "PAYMENT_SCHEMA_REGISTRY_USER_INFO: ",
        ),
        (
            {
                "PAYMENT_SCHEMA_REGISTRY_USER_INFO": "u:p",
                "PAYMENT_SCHEMA_REGISTRY_BEARER_TOKEN": "t",
            },
            "are both set: choose one",
        ),
        (
            {"PAYMENT_SCHEMA_REGISTRY_AUTO_REGISTER": "sometimes"},
            "PAYMENT_SCHEMA_REGISTRY_AUTO_REGISTER: ",
        ),
        ({"PAYMENT_SHIM_API_KEYS": "short"}, "PAYMENT_SHIM_API_KEYS: key 1: "),
        ({"PAYMENT_SHIM_API_KEYS": "long-enough-key-0001,bad key with spaces"}, "key 2: "),
        ({"PAYMENT_SHIM_METRICS_PUBLIC": "perhaps"}, "PAYMENT_SHIM_METRICS_PUBLIC: "),
    ],
)
def test_a_bad_connection_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    """Each production setting is checked at start-up, alone and with the ones it goes with."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_secrets_never_appear_in_settings_reprs_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials are SecretStr: printed or logged settings show stars, and a bad key's
    error names its position, not its value."""
    monkeypatch.setenv("PAYMENT_ORDERING_AUTHORIZATION", "Bearer ordering-secret-1")
    monkeypatch.setenv("PAYMENT_SCHEMA_REGISTRY_USER_INFO", "svc:registry-secret-2")
    monkeypatch.setenv("PAYMENT_SHIM_API_KEYS", "shim-secret-key-000003")
    text = repr(load_settings()) + str(load_settings().model_dump())
    for secret in ("ordering-secret-1", "registry-secret-2", "shim-secret-key-000003"):
        assert secret not in text
    message = error_for(monkeypatch, "PAYMENT_SHIM_API_KEYS", "good-secret-key-00004,tiny-secret")
    assert "tiny-secret" not in message and "good-secret-key-00004" not in message


def test_connection_defaults() -> None:
    """Defaults: 15 s idle expiry, a 1 MiB answer cap, auto-register on, no shim keys, /metrics
    closed."""
    s = load_settings()
    assert (s.http_idle_timeout_s, s.http_max_response_bytes) == (15.0, 1 << 20)
    assert (s.schema_registry_auto_register, s.shim_metrics_public, s.shim_api_keys) == (
        True,
        False,
        (),
    )


def test_a_ca_file_that_is_not_a_certificate_stops_start_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The file exists but holds no PEM certificate: bootstrap says so, naming the variable."""
    from payment_worker.bootstrap import http_client_options

    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    settings = load_settings(ordering_url="https://o", ordering_ca_file=junk)
    with pytest.raises(ConfigurationError, match=r"^PAYMENT_ORDERING_CA_FILE: not a PEM CA"):
        http_client_options(settings, "ordering")


# -- the Stripe gateway ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "   "])
def test_the_stripe_gateway_without_a_key_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    """PAYMENT_GATEWAY=stripe with PAYMENT_STRIPE_API_KEY unset or blank: one line naming it."""
    if key is not None:
        monkeypatch.setenv("PAYMENT_STRIPE_API_KEY", key)
    message = error_for(monkeypatch, "PAYMENT_GATEWAY", "stripe")
    assert message == "PAYMENT_STRIPE_API_KEY is required when PAYMENT_GATEWAY is stripe"


def test_the_stripe_key_is_a_secret_and_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed key is refused without printing it, and a good one never shows in repr."""
    message = error_for(monkeypatch, "PAYMENT_STRIPE_API_KEY", "pk_test_hunter2")
    assert "hunter2" not in message
    monkeypatch.setenv("PAYMENT_GATEWAY", "stripe")
    monkeypatch.setenv("PAYMENT_STRIPE_API_KEY", "sk_test_hunter2")
    monkeypatch.setenv("PAYMENT_STRIPE_API_BASE", "http://127.0.0.1:8420/")
    settings = load_settings()
    assert settings.stripe_api_key is not None
    assert settings.stripe_api_key.get_secret_value() == "sk_test_hunter2"
    assert "hunter2" not in repr(settings)
    assert settings.stripe_api_base == "http://127.0.0.1:8420"


def test_the_simulated_gateway_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PAYMENT_GATEWAY the simulator runs, and it needs no Stripe key."""
    settings = load_settings()
    assert (settings.gateway, settings.stripe_api_key) == ("simulated", None)
