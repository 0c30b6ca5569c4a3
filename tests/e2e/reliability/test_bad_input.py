"""Bad input through the real worker and shim: dead-lettered or rejected with a clear
message, never a crash, never stored where it must not be."""

from __future__ import annotations

import struct
import uuid
from decimal import Decimal

import httpx
import pytest

from payment_worker.adapters.avro_codec import SchemaSet
from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e

CARD = "4111111111111111"


def test_corrupt_records_are_dead_lettered_with_a_reason_and_the_partition_keeps_flowing(
    start_worker, kafka, devserver, topics, report
):
    """Truncated Avro, a wrong fingerprint, Confluent framing with an unknown schema id, an
    empty value and a null key: each dead-lettered with its reason; the valid command behind
    them on the same partition is answered."""
    fingerprint = SchemaSet().fingerprints["ProcessPayment"]
    valid = kafka.codec.encode("ProcessPayment", command_record(), topics.commands)
    corrupt = {
        b"truncated": (valid[: len(valid) // 2], "undecodable"),
        b"fingerprint": (b"\xc3\x01" + b"\x00" * 8 + valid[10:], "unknown-schema"),
        b"confluent": (b"\x00" + struct.pack(">I", 4242) + valid[10:], "unknown-schema"),
        b"empty": (b"", "undecodable"),
        b"garbage": (b"\xff\xfe{not avro}", "undecodable"),
    }
    assert valid.startswith(b"\xc3\x01" + fingerprint)
    start_worker()
    for key, (value, _) in corrupt.items():
        kafka.send(value=value, key=key, partition=2)
    kafka.send(value=b"", key=None, partition=2)  # a null key and an empty value
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal("3.00"))
    devserver.add_order(cmd["orderId"], customer, "3.00")
    kafka.send(cmd, partition=2)
    [reply] = kafka.replies(expect=1)
    assert reply.record["outcome"] == "SUCCEEDED"
    dead = kafka.read(topics.dlq, expect=len(corrupt) + 1)
    report.sent, report.replies, report.dead_letters = len(corrupt) + 2, 1, len(dead)
    reasons = {d.key: d.headers["dlq-reason"].decode() for d in dead}
    for key, (value, reason) in corrupt.items():
        assert reasons[key] == reason, (key, reasons)
        assert next(d for d in dead if d.key == key).value == value
    assert None in reasons


def test_sql_looking_and_control_character_strings_are_stored_verbatim(
    start_worker, kafka, devserver, db, report
):
    """A payment method full of SQL and control characters is stored as is, never run."""
    method = "x'); DROP TABLE payments; --\t\u0007\u202e"
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal("4.00"), paymentMethod=method)
    devserver.add_order(cmd["orderId"], customer, "4.00")
    start_worker()
    kafka.send(cmd)
    [reply] = kafka.replies(expect=1)
    report.sent = report.replies = 1
    assert reply.record["outcome"] == "SUCCEEDED"
    stored = db.execute(
        "SELECT payment_method FROM payments WHERE order_id::text = %s", (cmd["orderId"],)
    ).fetchone()[0]
    assert stored == method
    assert db.execute("SELECT count(*) FROM payments").fetchone()[0] == 1


def test_card_numbers_are_rejected_and_appear_nowhere(
    start_worker, start_shim, kafka, devserver, db, topics, report, database_url
):
    """A card number in the payment method (Kafka or HTTP; spaces, dots, underscores) is
    INVALID_REQUEST; an undecodable record holding one is dead-lettered with it masked; it is
    in no table, no log line, no reply, no dead letter and no metric."""
    worker = start_worker(PAYMENT_LOG_LEVEL="DEBUG")
    shim = start_shim()
    customer = str(uuid.uuid4())
    spaced = "4111 1111 1111 1111"
    cmd = command_record(customerId=customer, paymentMethod=f"visa {spaced}")
    devserver.add_order(cmd["orderId"], customer, "10.50")
    kafka.send(cmd)
    dotted = command_record(customerId=customer, paymentMethod="visa 4111.1111.1111.1111")
    kafka.send(dotted)
    underscored = command_record(customerId=customer, paymentMethod="4111__1111__1111__1111")
    kafka.send(underscored)
    kafka.send(value=b"\xff not avro, card 4111-1111-1111-1111", key=b"k")
    response = httpx.post(
        shim.url + "/payments",
        timeout=30,
        json={
            "orderId": cmd["orderId"],
            "customerId": customer,
            "amount": "10.50",
            "paymentMethod": CARD,
        },
    )
    assert response.status_code == 400
    assert response.json()["errorMessage"] == "PaymentMethod must not contain a card number"
    replies = kafka.replies(expect=3)
    report.sent, report.replies = 5, 4
    assert [r.record["outcome"] for r in replies] == ["INVALID_REQUEST"] * 3
    [dead] = kafka.read(topics.dlq, expect=1)
    assert dead.value == b"\xff not avro, card 4111-11**-****-1111"
    assert dead.headers["dlq-redacted"] == b"card-number"
    haystacks = {
        "worker log": worker.logs(),
        "shim log": shim.logs(),
        "replies": b"".join(r.value or b"" for r in kafka.replies()).decode("latin-1"),
        "dead letters": str([(d.headers, d.value) for d in kafka.read(topics.dlq, idle_s=0.5)]),
        "worker metrics": "",
        "shim metrics": httpx.get(shim.url + "/metrics").text,
    }
    dump = db.execute(
        "SELECT coalesce(string_agg(t::text, ' '), '') FROM ("
        " SELECT p::text AS t FROM payments p UNION ALL SELECT l::text FROM command_ledger l"
        " UNION ALL SELECT encode(o.value, 'escape') || o.headers::text FROM outbox o) x"
    ).fetchone()[0]
    haystacks["database"] = dump
    for where, text in haystacks.items():
        for needle in (CARD, spaced, "4111-1111", "4111.1111", "4111__1111"):
            assert needle not in text, f"card number found in {where}"
