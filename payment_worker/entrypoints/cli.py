"""The command line's words: each command's description, the variables it reads (with their
defaults, read from Settings) and an example, shown by `payment-worker COMMAND --help`."""

from __future__ import annotations

import argparse
import re
from typing import Any

from pydantic import SecretStr

from payment_worker.config import Settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

KAFKA = ["kafka_bootstrap_servers", "kafka_config"]
DATABASE = ["database_url", "db_schema"]
TOPICS = ["topic_commands", "topic_succeeded", "topic_failed", "topic_replies", "topic_dlq"]
REGISTRY = [
    "schema_registry_url",
    "schema_registry_user_info",
    "schema_registry_bearer_token",
    "schema_registry_logical_cluster",
    "schema_registry_ca_file",
    "schema_registry_auto_register",
]
SERVICES = [
    "ordering_url",
    "inventory_url",
    *(f"{s}_{p}" for s in ("ordering", "inventory") for p in ("ca_file", "cert_file", "key_file")),
    "ordering_authorization",
    "inventory_authorization",
    "http_timeout_s",
    "http_retry_budget_s",
    "http_idle_timeout_s",
    "http_max_response_bytes",
]
PROCESSING = [
    "redis_url",
    "gateway",
    "stripe_api_key",
    "stripe_api_base",
    "stripe_timeout_s",
    "gateway_latency_ms",
    "gateway_failure_rate",
    "gateway_unknown_rate",
    "reply_topic_pattern",
    "outbox_max_attempts",
    "max_in_flight",
]
LOGS = ["log_level", "log_format"]

COMMANDS: dict[str, dict[str, Any]] = {
    "run": {
        "help": "run the worker (consume commands until SIGTERM)",
        "description": "Run the worker: consume PAYMENT_TOPIC_COMMANDS, answer every command and "
        "record its payment, until SIGTERM or SIGINT; then finish what is in flight, publish "
        "the outbox, commit offsets and exit 0. At start-up it waits for PostgreSQL, Kafka, "
        "the topics and the schema registry, saying which and why.",
        "variables": [
            *KAFKA,
            *DATABASE,
            *PROCESSING,
            *SERVICES,
            *TOPICS,
            "consumer_group",
            "reconcile_after_s",
            "metrics_port",
            *REGISTRY,
            *LOGS,
        ],
        "example": "PAYMENT_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 "
        "PAYMENT_DATABASE_URL=postgresql://payments@db:5432/payments payment-worker run",
    },
    "shim": {
        "help": "run the HTTP shim (POST /payments) on PAYMENT_SHIM_PORT",
        "description": "Run the HTTP shim: POST /payments becomes a command on "
        "PAYMENT_TOPIC_COMMANDS, and the worker's reply the HTTP answer; GET /health, /metrics, "
        "/openapi.json. It never touches the database.",
        "variables": [
            *KAFKA,
            "topic_commands",
            "topic_replies",
            "shim_port",
            "shim_reply_timeout_s",
            "shim_group",
            "shim_max_in_flight",
            "shim_body_timeout_s",
            "shim_api_keys",
            "shim_metrics_public",
            "shim_tls_cert_file",
            "shim_tls_key_file",
            *REGISTRY,
            *LOGS,
        ],
        "example": "PAYMENT_SHIM_PORT=5004 PAYMENT_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 "
        "payment-worker shim",
    },
    "migrate": {
        "help": "create or upgrade the database schema (safe to rerun)",
        "description": "Create or upgrade the schema PAYMENT_DB_SCHEMA (tables payments, "
        "command_ledger, outbox, schema_migrations). Safe to rerun, also concurrently. Refuses "
        "a schema newer than this code, and an applied migration whose file changed.",
        "variables": [*DATABASE, *LOGS],
        "example": "PAYMENT_DATABASE_URL=postgresql://payments@db:5432/payments "
        "payment-worker migrate",
    },
    "topics": {
        "help": "create the configured topics that are missing (--dry-run to look only)",
        "description": "Create the five topics of the contract, as configured, where they are "
        "missing: PAYMENT_TOPIC_PARTITIONS partitions, replication factor "
        "PAYMENT_TOPIC_REPLICATION (unset: the broker's default). Existing topics are left as "
        "they are and reported. Prints one line per topic; exits 0.",
        "variables": [*KAFKA, *TOPICS, "topic_partitions", "topic_replication", *LOGS],
        "example": "PAYMENT_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 PAYMENT_TOPIC_REPLICATION=3 "
        "payment-worker topics --dry-run",
    },
    "status": {
        "help": "print what is stuck and what is flowing (exit 0 healthy, 1 past a threshold, 2 "
        "unreachable)",
        "description": "Print, for the deployment these settings name: the lag of the worker's "
        "group per partition of PAYMENT_TOPIC_COMMANDS, the outbox backlog and its oldest row, "
        "parked rows by reason, pending payments and the oldest, dead letters of the last hour "
        "by reason, the last reconciler run. A table on a terminal, JSON with --json. Exits 0 "
        "when nothing is past a threshold, 1 when something is (each named), 2 when PostgreSQL "
        "or Kafka cannot be reached.",
        "variables": [*KAFKA, *DATABASE, "topic_commands", "consumer_group", *LOGS],
        "example": "payment-worker status --json --max-lag 5000",
    },
    "replay": {
        "help": "reprocess a topic safely (own consumer; the live group is untouched)",
        "description": "Reprocess a topic up to its end offsets seen at start, through the same "
        "pipeline as the worker: final outcomes are answered from the ledger, only new or "
        "ERROR commands do work. Its own consumer: the live group's offsets are untouched. "
        "Prints progress and a summary by outcome; exits 0.",
        "variables": [*KAFKA, *DATABASE, *PROCESSING, *SERVICES, *TOPICS, *REGISTRY, *LOGS],
        "example": "payment-worker replay --topic process-payment-dlq",
    },
    "outbox": {
        "help": "outbox retry: send the parked outbox rows again (all, or --topic's)",
        "description": "`outbox retry` hands the outbox rows parked after "
        "PAYMENT_OUTBOX_MAX_ATTEMPTS refusals back to the relays, due at once and with their "
        "refusals forgotten (the relays also do this by themselves, once a parked row of the "
        "same route goes through). Prints how many; exits 0.",
        "variables": [*DATABASE, *LOGS],
        "example": "payment-worker outbox retry --topic payment-replies",
    },
    "demo": {
        "help": "start everything on this machine and send sample payments",
        "description": "The first run: starts what is missing on this machine (a local Apache "
        "Kafka broker, or Tansu where no Java 17 is present, "
        "the development Ordering/Inventory server), migrates, runs the worker and the shim, "
        "sends sample payments and prints their outcomes. With --gateway stripe the worker "
        "charges Stripe's API on localstripe, a stand-in started here.",
        "variables": [*DATABASE, "redis_url", "kafka_bootstrap_servers", "shim_port", *LOGS],
        "example": "payment-worker demo --keep-running",
    },
}


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, re.Pattern):
        return str(value.pattern)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}-{value[1]}"
    if value in ((), {}):
        return "{}" if value == {} else "unset"
    return str(value)


def epilog(command: str) -> str:
    spec = COMMANDS[command]
    rows = [f"  PAYMENT_{name.upper()}  (default: {_default(name)})" for name in spec["variables"]]
    return (
        "environment (docs/operations.md and the README's configuration table say more):\n"
        + "\n".join(rows)
        + f"\n\nexample:\n  {spec['example']}"
    )


def log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def global_options() -> argparse.ArgumentParser:
    """Flags every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=log_level,
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: PAYMENT_LOG_LEVEL, else INFO)",
    )
    return common


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str
) -> argparse.ArgumentParser:
    spec = COMMANDS[name]
    return sub.add_parser(
        name,
        help=spec["help"],
        description=spec["description"],
        epilog=epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[global_options()],
    )
