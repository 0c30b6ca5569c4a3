"""The payment pipeline as a capable team would write it with FastStream (aiokafka), for
`make bench` to run beside the worker on the same topics, services and gateway.

Per command, in FastStream's default model (one message at a time per subscriber, the offset
committed after the handler returns, AckPolicy.ACK): decode the Avro command, GET the order
and the reservation (httpx, concurrently), take the order's Redis lock, insert the pending
payment (the order id is the idempotency key: a final payment for the order is answered
again), call the same simulated gateway as the worker, write the final payment and the outbox
rows (event and reply) in one transaction, publish the event and the reply, mark the rows sent.

What it leaves out, and the worker has: validation of hostile fields and headers beyond what a
bad record would crash, dead letters, reply routing other than `reply-to` and `correlation-id`,
the command ledger (rules I1-I7 by command id: here only the order id), an outbox relay for
rows a crash left unsent, the reconciler for payments left pending, a schema registry, replay.
It runs as `python -m bench.peers.faststream_peer` with the worker's PAYMENT_* variables.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis.asyncio as aioredis
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy
from psycopg import sql

from payment_worker.adapters.gateway import SimulatedGateway
from payment_worker.domain.model import Payment, PaymentStatus

ENV = os.environ
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TOPICS = {
    "commands": ENV.get("PAYMENT_TOPIC_COMMANDS", "process-payment"),
    "succeeded": ENV.get("PAYMENT_TOPIC_SUCCEEDED", "payment-succeeded"),
    "failed": ENV.get("PAYMENT_TOPIC_FAILED", "payment-failed"),
    "replies": ENV.get("PAYMENT_TOPIC_REPLIES", "payment-replies"),
}
TABLES = """
CREATE TABLE IF NOT EXISTS peer_payments (
    order_id uuid PRIMARY KEY, payment_id uuid NOT NULL, command_id uuid NOT NULL,
    customer_id uuid NOT NULL, amount numeric(18, 2) NOT NULL, currency text NOT NULL,
    status text NOT NULL, transaction_id text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS peer_outbox (
    id bigserial PRIMARY KEY, topic text NOT NULL, key bytea, value bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz);
"""


class Avro:
    """The contract's single-object encoding (C3 01, CRC-64-AVRO fingerprint, body)."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.prefix: dict[str, bytes] = {}
        for name, file in (
            ("ProcessPayment", "process_payment"),
            ("PaymentSucceeded", "payment_succeeded"),
            ("PaymentFailed", "payment_failed"),
            ("PaymentReply", "payment_reply"),
        ):
            schema = json.loads((SCHEMAS / f"{file}.avsc").read_text())
            self.schemas[name] = parse_schema(schema)
            canonical = to_parsing_canonical_form(schema)
            self.prefix[name] = b"\xc3\x01" + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))

    def decode(self, name: str, value: bytes) -> dict[str, Any]:
        if not value.startswith(self.prefix[name]):
            raise ValueError("not a single-object encoded " + name)
        record = schemaless_reader(io.BytesIO(value[10:]), self.schemas[name], None)
        assert isinstance(record, dict)
        return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in record.items()}

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self.prefix[name])
        schemaless_writer(out, self.schemas[name], record)
        return out.getvalue()


avro = Avro()
# acks=all with the idempotent producer, as a team publishing payment events would configure
# it (the worker's librdkafka producer is idempotent too): a retried send is not written twice.
# aiokafka's idempotent producer works on Apache Kafka 4.1 (its InitProducerId is answered); on
# Tansu, which answers that request with an error, the peer cannot start (`bench.run --broker
# tansu` runs it without: PAYMENT_PEER_IDEMPOTENCE=0).
# Its per-message "Received"/"Processed" lines at DEBUG, as a service in production would run.
broker = KafkaBroker(
    ENV.get("PAYMENT_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    acks="all",
    enable_idempotence=ENV.get("PAYMENT_PEER_IDEMPOTENCE", "1") != "0",
    log_level=logging.DEBUG,
)
app = FastStream(broker)
state: dict[str, Any] = {}
latency = ENV.get("PAYMENT_GATEWAY_LATENCY_MS", "100-500").split("-")
gateway = SimulatedGateway((int(latency[0]), int(latency[-1])))


@app.on_startup
async def open_clients() -> None:
    db = await psycopg.AsyncConnection.connect(ENV["PAYMENT_DATABASE_URL"], autocommit=True)
    await db.execute(
        sql.SQL("SET search_path TO {}").format(
            sql.Identifier(ENV.get("PAYMENT_DB_SCHEMA", "public"))
        )
    )
    await db.execute(TABLES)
    state["db"] = db
    state["ordering"] = httpx.AsyncClient(base_url=ENV["PAYMENT_ORDERING_URL"], timeout=2.0)
    state["inventory"] = httpx.AsyncClient(base_url=ENV["PAYMENT_INVENTORY_URL"], timeout=2.0)
    state["redis"] = aioredis.Redis.from_url(
        ENV.get("PAYMENT_REDIS_URL", "redis://127.0.0.1:6379/0")
    )


@app.after_shutdown
async def close_clients() -> None:
    await state["db"].close()
    await state["ordering"].aclose()
    await state["inventory"].aclose()
    await state["redis"].aclose()


def _reply(
    command: dict[str, Any],
    correlation: str,
    outcome: str,
    status: int,
    error: str | None,
    payment: dict[str, Any] | None,
    duplicate: bool = False,
) -> bytes:
    return avro.encode(
        "PaymentReply",
        {
            "commandId": command["commandId"],
            "correlationId": correlation,
            "orderId": command["orderId"],
            "outcome": outcome,
            "success": outcome == "SUCCEEDED",
            "httpStatus": status,
            "errorMessage": error,
            "duplicate": duplicate,
            "payment": payment,
        },
    )


async def _checked(command: dict[str, Any]) -> tuple[str, int, str] | None:
    """Why the order or the reservation refuses the command (None: both accept it)."""
    order, reservation = await asyncio.gather(
        state["ordering"].get(f"/orders/{command['orderId']}"),
        state["inventory"].get(f"/reservations/{command['reservationId']}")
        if command["reservationId"]
        else asyncio.sleep(0, None),
    )
    if order.status_code == 404:
        return "NOT_FOUND", 404, "Order not found"
    order.raise_for_status()
    body = order.json()
    if body.get("customerId") != command["customerId"]:
        return "UNAUTHORIZED", 401, "Unauthorized: the order belongs to another customer"
    if Decimal(str(body.get("totalAmount"))) != command["amount"]:
        return "VALIDATION_FAILED", 400, "Order validation failed: amount mismatch"
    if reservation is not None:
        if reservation.status_code == 404:
            return "VALIDATION_FAILED", 400, "Reservation not found"
        if reservation.json().get("status") != "Active":
            return "VALIDATION_FAILED", 400, "Reservation is not active"
    return None


@broker.subscriber(
    TOPICS["commands"],
    group_id=ENV.get("PAYMENT_CONSUMER_GROUP", "payment-peer"),
    auto_offset_reset="earliest",
    ack_policy=AckPolicy.ACK,
)
async def process_payment(msg: KafkaMessage) -> None:
    command = avro.decode("ProcessPayment", msg.body)
    headers = msg.headers
    correlation = headers.get("correlation-id") or command["commandId"]
    reply_topic = headers.get("reply-to") or TOPICS["replies"]
    key = command["orderId"].encode()
    refused = await _checked(command)
    if refused is not None:
        await broker.publish(_reply(command, correlation, *refused, None), reply_topic, key=key)
        return
    redis, db = state["redis"], state["db"]
    lock = f"peer-lock:{command['orderId']}"
    token = uuid.uuid4().hex
    while not await redis.set(lock, token, nx=True, px=30_000):  # noqa: ASYNC110  (a Redis lock: nothing to wait on locally)
        await asyncio.sleep(0.01)
    try:
        payment = Payment(
            id=uuid.uuid4(),
            order_id=uuid.UUID(command["orderId"]),
            customer_id=uuid.UUID(command["customerId"]),
            reservation_id=None,
            amount=command["amount"],
            currency=command["currency"],
            payment_method=command["paymentMethod"],
            status=PaymentStatus.PENDING,
            created_at=datetime.now(UTC),
            command_id=uuid.UUID(command["commandId"]),
        )
        inserted = await (
            await db.execute(
                "INSERT INTO peer_payments (order_id, payment_id, command_id, customer_id, amount,"
                " currency, status) VALUES (%s, %s, %s, %s, %s, %s, 'pending')"
                " ON CONFLICT (order_id) DO NOTHING RETURNING payment_id",
                (
                    payment.order_id,
                    payment.id,
                    payment.command_id,
                    payment.customer_id,
                    payment.amount,
                    payment.currency,
                ),
            )
        ).fetchone()
        if inserted is None:  # the order was paid (or is being paid): its payment answers
            row = await (
                await db.execute(
                    "SELECT status FROM peer_payments WHERE order_id = %s", (payment.order_id,)
                )
            ).fetchone()
            outcome = "SUCCEEDED" if row and row[0] == "succeeded" else "CONFLICT"
            await broker.publish(
                _reply(
                    command,
                    correlation,
                    outcome,
                    200 if outcome == "SUCCEEDED" else 409,
                    None,
                    None,
                    duplicate=True,
                ),
                reply_topic,
                key=key,
            )
            return
        result = await gateway.charge(payment)
        final = payment.finalized(result, datetime.now(UTC))
        common = {
            "orderId": command["orderId"],
            "customerId": command["customerId"],
            "reservationId": command["reservationId"],
            "amount": final.amount,
            "currency": final.currency,
            "paymentMethod": final.payment_method,
        }
        fields = {
            "id": str(final.id),
            **common,
            "status": str(final.status),
            "errorCode": final.error_code,
            "errorMessage": final.error_message,
            "failureReason": final.failure_reason,
            "transactionId": final.transaction_id,
            "createdAt": final.created_at,
            "processedAt": final.processed_at,
            "isSimulated": True,
            "simulatedResponse": None,
        }
        event_fields = {
            "eventId": str(uuid.uuid4()),
            "commandId": command["commandId"],
            "paymentId": str(final.id),
            **common,
        }
        if result.success:
            event_topic = TOPICS["succeeded"]
            event = avro.encode(
                "PaymentSucceeded",
                {
                    **event_fields,
                    "transactionId": final.transaction_id or "",
                    "processedAt": final.processed_at,
                    "status": "succeeded",
                },
            )
            answer = _reply(command, correlation, "SUCCEEDED", 200, None, fields)
        else:
            event_topic = TOPICS["failed"]
            event = avro.encode(
                "PaymentFailed",
                {
                    **event_fields,
                    "errorCode": final.error_code or "",
                    "errorMessage": final.error_message or "",
                    "failureReason": final.failure_reason or "",
                    "attemptedAt": final.processed_at,
                    "status": "failed",
                },
            )
            answer = _reply(
                command, correlation, "PAYMENT_FAILED", 422, final.error_message, fields
            )
        async with db.transaction():
            await db.execute(
                "UPDATE peer_payments SET status = %s, transaction_id = %s WHERE order_id = %s",
                (str(final.status), final.transaction_id, final.order_id),
            )
            rows = await (
                await db.execute(
                    "INSERT INTO peer_outbox (topic, key, value) VALUES (%s, %s, %s), (%s, %s, %s)"
                    " RETURNING id",
                    (event_topic, key, event, reply_topic, key, answer),
                )
            ).fetchall()
        await broker.publish(event, event_topic, key=key)
        await broker.publish(answer, reply_topic, key=key)
        await db.execute(
            "UPDATE peer_outbox SET sent_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],)
        )
    finally:
        if await redis.get(lock) == token.encode():
            await redis.delete(lock)


if __name__ == "__main__":
    asyncio.run(app.run())
