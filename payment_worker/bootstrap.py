"""The composition root: the one place that builds concrete adapters and wires them."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import structlog

from payment_worker import metrics
from payment_worker.adapters.avro_codec import (
    AvroCodec,
    DecodeError,
    SchemaSet,
    registry_client,
)
from payment_worker.adapters.gateway import SimulatedGateway
from payment_worker.adapters.http_services import HttpInventory, HttpOrdering, JsonService
from payment_worker.adapters.kafka import (
    CommandProducer,
    DirectProducer,
    GroupLag,
    OutboxProducer,
    ReplyListener,
    ThreadedConsumer,
    TopicDirectory,
    fast_path_lease_s,
    reading_consumer,
)
from payment_worker.adapters.postgres import PostgresStore, make_pool
from payment_worker.adapters.redis_lock import RedisOrderLock
from payment_worker.adapters.stripe_gateway import StripeGateway
from payment_worker.config import Settings
from payment_worker.domain.routing import RouteRules
from payment_worker.entrypoints.gauges import StateGauges
from payment_worker.entrypoints.relay import OutboxRelay
from payment_worker.entrypoints.worker import Worker
from payment_worker.exceptions import ConfigurationError
from payment_worker.service.messages import MessageFactory, Topics
from payment_worker.service.pipeline import Pipeline, PipelineConfig
from payment_worker.service.ports import GatewayReferences

log = structlog.get_logger("payment_worker.bootstrap")

if TYPE_CHECKING:
    from payment_worker.entrypoints.shim import ShimClients


def topics(settings: Settings) -> Topics:
    return Topics(
        commands=settings.topic_commands,
        succeeded=settings.topic_succeeded,
        failed=settings.topic_failed,
        replies=settings.topic_replies,
        dlq=settings.topic_dlq,
    )


def route_rules(settings: Settings) -> RouteRules:
    """Where replies may go: never to the worker's own topics (contract section 2)."""
    return RouteRules(
        default_topic=settings.topic_replies,
        own_topics=frozenset(
            {
                settings.topic_commands,
                settings.topic_succeeded,
                settings.topic_failed,
                settings.topic_dlq,
            }
        ),
        topic_pattern=settings.reply_topic_pattern,
    )


def codec(settings: Settings) -> AvroCodec:
    registry = None
    if settings.schema_registry_url:
        user_info = settings.schema_registry_user_info
        token = settings.schema_registry_bearer_token
        registry = registry_client(
            settings.schema_registry_url,
            user_info=user_info.get_secret_value() if user_info else None,
            bearer_token=token.get_secret_value() if token else None,
            logical_cluster=settings.schema_registry_logical_cluster,
            ca_file=str(settings.schema_registry_ca_file or "") or None,
            auto_register=settings.schema_registry_auto_register,
        )
    return AvroCodec(SchemaSet(), registry)


async def redis_problem(settings: Settings) -> str | None:
    """Why Redis does not answer a PING within a second (None: it does)."""
    client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_connect_timeout=1.0, socket_timeout=1.0
    )
    try:
        await client.ping()
    except (aioredis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return None


def http_client_options(settings: Settings, service: str) -> dict[str, Any]:
    """HttpClient options for `service` ('ordering' or 'inventory'): its TLS context (CA,
    client certificate), its Authorization header, the idle expiry and the size cap."""
    prefix = f"PAYMENT_{service.upper()}"
    ca = getattr(settings, f"{service}_ca_file")
    cert = getattr(settings, f"{service}_cert_file")
    key = getattr(settings, f"{service}_key_file")
    authorization = getattr(settings, f"{service}_authorization")
    options: dict[str, Any] = {
        "idle_timeout_s": settings.http_idle_timeout_s,
        "max_response_bytes": settings.http_max_response_bytes,
        "headers": [("Authorization", authorization.get_secret_value())] if authorization else [],
    }
    if ca is None and cert is None:
        return options
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"{prefix}_CA_FILE: not a PEM CA certificate ({exc})") from None
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"{prefix}_CERT_FILE / {prefix}_KEY_FILE: not a PEM certificate and its"
                f" private key ({exc})"
            ) from None
    options["ssl_context"] = context
    return options


def shim_clients(settings: Settings) -> ShimClients:
    """The shim's command producer and reply listener (its own group on the reply topic)."""
    # Imported here: the shim's web stack (FastAPI) is the shim's alone, not every process's.
    from payment_worker.entrypoints.shim import ShimClients

    common = settings.kafka_common()
    listener_config = {
        **common,
        "group.id": settings.shim_group,
        "client.id": "payment-shim-replies",
    }
    return ShimClients(
        producer=CommandProducer({**common, "client.id": "payment-shim"}),
        listen=partial(ReplyListener, listener_config, settings.topic_replies),
    )


@dataclass
class App:
    """Everything a worker process runs on; opened and closed by `open_app`."""

    settings: Settings
    store: PostgresStore
    codec: AvroCodec
    pipeline: Pipeline
    relay: OutboxRelay
    worker: Worker
    gateway: SimulatedGateway | StripeGateway
    gauges: StateGauges
    direct_sender: Callable[[], DirectProducer]  # replay's answers from the ledger
    reading_consumer: Callable[[], Any]  # replay's consumer: no group offsets, no commits


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings, *, client_id: str = "payment-worker", min_connections: int = 16
) -> AsyncIterator[App]:
    pool = make_pool(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        # The 4 group-commit steps (a batch of each at once), the relay, the reconciler:
        # opened up front, so the first burst of commands does not wait for connections.
        # (Replay asks for few: its lookups run one at a time, and every connection opened
        # costs PostgreSQL a backend start while the replay is timed.)
        min_size=min_connections,
        max_size=max(16, min(40, settings.max_in_flight // 10)),
    )
    redis_client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
        retry_on_timeout=False,
    )
    ordering = JsonService(
        "Ordering",
        settings.ordering_url,
        timeout_s=settings.http_timeout_s,
        retry_budget_s=settings.http_retry_budget_s,
        **http_client_options(settings, "ordering"),
    )
    inventory = JsonService(
        "Inventory",
        settings.inventory_url,
        timeout_s=settings.http_timeout_s,
        retry_budget_s=settings.http_retry_budget_s,
        **http_client_options(settings, "inventory"),
    )
    store = PostgresStore(pool)
    gateway = make_gateway(settings, store)
    await pool.open(wait=False)
    await ordering.open()
    await inventory.open()
    await gateway.open()
    the_codec = codec(settings)
    lag: GroupLag | None = None
    try:
        common: dict[str, Any] = settings.kafka_common()
        directory = TopicDirectory({**common, "client.id": f"{client_id}-metadata"})
        pipeline = Pipeline(
            decoder=the_codec,
            decode_error=DecodeError,
            messages=MessageFactory(the_codec, topics(settings)),
            ledger=store,
            ordering=HttpOrdering(ordering),
            inventory=HttpInventory(inventory),
            gateway=gateway,
            locks=RedisOrderLock(redis_client, on_degraded=metrics.REDIS_DEGRADED.inc),
            topics=directory,
            config=PipelineConfig(routes=route_rules(settings)),
        )
        outbox_producer = OutboxProducer({**common, "client.id": f"{client_id}-relay"})
        relay = OutboxRelay(
            store,
            outbox_producer,
            topics=directory,
            max_attempts=settings.outbox_max_attempts,
            sweep_older_than_s=fast_path_lease_s(outbox_producer.config),
        )
        consumer_config = {
            **common,
            "group.id": settings.consumer_group,
            "client.id": client_id,
        }
        worker = Worker(
            pipeline=pipeline,
            store=store,
            relay=relay,
            make_consumer=partial(ThreadedConsumer, consumer_config, [settings.topic_commands]),
            max_in_flight=settings.max_in_flight,
            group=settings.consumer_group,
            reconcile_after_s=settings.reconcile_after_s,
        )
        lag = GroupLag(
            {**common, "client.id": f"{client_id}-lag"},
            settings.consumer_group,
            settings.topic_commands,
        )
        yield App(
            settings,
            store,
            the_codec,
            pipeline,
            relay,
            worker,
            gateway,
            gauges=StateGauges(store, lag),
            direct_sender=partial(DirectProducer, common),
            reading_consumer=partial(reading_consumer, common),
        )
    finally:
        if lag is not None:
            await lag.close()
        await the_codec.close()
        await ordering.close()
        await inventory.close()
        await gateway.close()
        await redis_client.aclose()
        await pool.close()


async def check_gateway(gateway: SimulatedGateway | StripeGateway) -> None:
    """At start-up: a real gateway's key is asked about once. GatewayRefusedCredentials (one
    line, the worker does not start) when refused; a gateway that does not answer is logged
    and asked again by the first charge."""
    problem = await gateway.check_key()
    if problem is not None:
        log.warning("gateway_unreachable", variable="PAYMENT_STRIPE_API_BASE", error=problem)


def make_gateway(
    settings: Settings, references: GatewayReferences
) -> SimulatedGateway | StripeGateway:
    """The gateway PAYMENT_GATEWAY names (not opened yet: open_app opens and closes it);
    a real one records its references for payments in `references`."""
    if settings.gateway == "stripe":
        if settings.stripe_api_key is None:  # Settings refuses this; kept for the type checker
            raise ConfigurationError("PAYMENT_STRIPE_API_KEY is required with the Stripe gateway")
        return StripeGateway(
            settings.stripe_api_key.get_secret_value(),
            references,
            api_base=settings.stripe_api_base,
            timeout_s=settings.stripe_timeout_s,
            retry_budget_s=settings.http_retry_budget_s,
        )
    return SimulatedGateway(
        settings.gateway_latency_ms,
        settings.gateway_failure_rate,
        settings.gateway_unknown_rate,
    )


@contextlib.asynccontextmanager
async def open_status(settings: Settings) -> AsyncIterator[tuple[PostgresStore, GroupLag]]:
    """What `payment-worker status` reads: the database (a small pool that does not wait for
    it) and the worker group's lag."""
    pool = make_pool(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        min_size=1,
        max_size=2,
        timeout_s=5.0,
    )
    lag = GroupLag(
        {**settings.kafka_common(), "client.id": "payment-worker-status"},
        settings.consumer_group,
        settings.topic_commands,
    )
    await pool.open(wait=False)
    try:
        yield PostgresStore(pool), lag
    finally:
        await lag.close()
        await pool.close()
