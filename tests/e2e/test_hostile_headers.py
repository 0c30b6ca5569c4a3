"""Hostile headers and records through the real worker: each bad header gets its one
INVALID_REQUEST reply on the default replies topic, nothing is charged or left pending, no
reply lands on the worker's own topics, and the partition moves on (contract section 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest

from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.testing import command_record
from tests.rawkafka import produce_raw

pytestmark = pytest.mark.e2e

BAD_HEADERS = [
    [("reply-partition", b"99999999999")],
    [("reply-partition", b"2147483648")],
    [("reply-partition", "²".encode())],
    [("kafka_replyPartition", b"\x00\x01")],
    [("reply-to", b"{succeeded}")],
    [("reply-to", b"{failed}")],
    [("reply-to", b"{dlq}")],
    [("reply-to", b"{commands}")],
    [("kafka_replyTopic", b"{failed}")],
    [("reply-to", b"no-such-topic-{suffix}")],
    [("reply-to", b"{replies}"), ("reply-partition", b"9")],
    [("correlation-id", b"\xff\xfe")],
]


def _payable(devserver, amount: str = "12.00") -> dict:
    customer = str(uuid.uuid4())
    command = command_record(customerId=customer, amount=Decimal(amount))
    devserver.add_order(command["orderId"], customer, amount)
    return command


def _headers(template: list[tuple[str, bytes]], topics, suffix: str) -> list[tuple[str, bytes]]:
    names = {
        "succeeded": topics.succeeded,
        "failed": topics.failed,
        "dlq": topics.dlq,
        "commands": topics.commands,
        "replies": topics.replies,
        "suffix": suffix,
    }
    return [(n, v.decode("latin-1").format(**names).encode("latin-1")) for n, v in template]


def test_every_bad_header_is_answered_once_on_the_default_topic_and_nothing_is_charged(
    start_worker, kafka, devserver, db, topics, broker, worker_env
):
    """Payable commands, each with one bad routing header, then a good command on the same
    partition: each bad one is answered INVALID_REQUEST `Invalid header <name>: ...` on the
    default replies topic, none is charged or left pending, no reply goes anywhere else, the
    good one is charged, and the committed offset passes them all."""
    start_worker()
    suffix = uuid.uuid4().hex[:8]
    sent = []
    for template in BAD_HEADERS:
        command = _payable(devserver)
        kafka.send(command, headers=_headers(template, topics, suffix), partition=1)
        sent.append((command, template[-1][0]))
    good = _payable(devserver, "13.00")
    kafka.send(good, partition=1)

    replies = kafka.replies_by_command(expect=len(sent) + 1)
    for command, name in sent:
        [reply] = replies[command["commandId"]]
        assert reply.record["outcome"] == "INVALID_REQUEST", name
        assert reply.record["errorMessage"].startswith(f"Invalid header {name}: "), name
    assert replies[good["commandId"]][0].record["outcome"] == "SUCCEEDED"
    rows = db.execute("SELECT order_id::text, status FROM payments").fetchall()
    assert rows == [(good["orderId"], "succeeded")]
    for topic in (topics.succeeded, topics.failed, topics.dlq):
        kinds = [r.headers.get("ce_type") for r in kafka.read(topic, idle_s=1.0)]
        assert b"ticketing.payment.reply.v1" not in kinds, topic
    assert f"no-such-topic-{suffix}" not in kafka.producer.list_topics(timeout=10).topics
    deadline = time.monotonic() + 20
    while kafka.committed(worker_env["PAYMENT_CONSUMER_GROUP"], topics.commands)[1] < len(sent) + 1:
        assert time.monotonic() < deadline, "the partition's offset did not move past them"
        time.sleep(0.5)


def test_a_reply_topic_created_after_start_is_used_at_once(
    start_worker, kafka, devserver, topics, broker
):
    """A reply-to topic the worker has not seen yet is looked up on the broker, then used."""
    from payment_worker.adapters.kafka import ensure_topics

    start_worker()
    late = topics.replies + "-late"
    ensure_topics({"bootstrap.servers": broker}, {late: 2})
    command = _payable(devserver)
    kafka.send(command, headers=[("reply-to", late.encode()), ("reply-partition", b"1")])
    [reply] = kafka.replies(expect=1, topic=late)
    assert (reply.partition, reply.record["outcome"]) == (1, "SUCCEEDED")


def test_replay_survives_records_with_hostile_headers(
    start_worker, kafka, devserver, topics, worker_env
):
    """A topic holding commands with bad headers (a non-ASCII partition, an own topic) and an
    undecodable record replays to the end, exits 0 and answers each command once more."""
    worker = start_worker()
    commands = [_payable(devserver) for _ in range(2)]
    kafka.send(commands[0], headers=[("reply-partition", "²".encode())])
    kafka.send(commands[1], headers=[("reply-to", topics.failed.encode())])
    kafka.send(value=b"\xff not avro", key=b"x")
    kafka.replies(expect=2)
    worker.stop()

    result = subprocess.run(
        [sys.executable, "-m", "payment_worker", "replay"],
        env={**os.environ, **worker_env},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    replies = kafka.replies_by_command(expect=4)
    assert all(len(replies[c["commandId"]]) == 2 for c in commands)
    assert all(
        r.record["outcome"] == "INVALID_REQUEST" for c in commands for r in replies[c["commandId"]]
    )


def test_exactly_one_of_two_workers_finishes_a_stale_payment(
    start_worker, kafka, devserver, db, topics
):
    """A payment left pending whose command never comes back, two workers with a short
    reconcile age: it is charged once, announced by one event and answered by one reply."""
    command = _payable(devserver)
    payment_id, route = (
        str(uuid.uuid4()),
        '{"topic": "%s", "partition": null, "correlation_id": "c"}',
    )
    db.execute(
        "INSERT INTO payments (id, order_id, customer_id, amount, currency, payment_method,"
        " status, command_id, created_at) VALUES (%s, %s, %s, 12.00, 'USD', 'card', 'pending',"
        " %s, now() - interval '1 hour')",
        (payment_id, command["orderId"], command["customerId"], command["commandId"]),
    )
    db.execute(
        "INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,"
        " payment_id, reply_route, created_at) VALUES (%s, %s, %s, 12.00, 'USD', 'in_progress',"
        " %s, %s, now() - interval '1 hour')",
        (
            command["commandId"],
            command["orderId"],
            command["customerId"],
            payment_id,
            route % topics.replies,
        ),
    )
    workers = [
        start_worker(PAYMENT_RECONCILE_AFTER_S="1", PAYMENT_LOG_LEVEL="DEBUG") for _ in range(2)
    ]

    replies = kafka.replies(expect=1, timeout_s=30)
    time.sleep(3)  # both reconcilers have run several passes meanwhile
    replies = kafka.replies()
    events = kafka.read(topics.succeeded)
    assert [r.record["payment"]["id"] for r in replies] == [payment_id]
    assert len(events) == 1
    assert db.execute("SELECT status FROM payments").fetchall() == [("succeeded",)]
    charges = [
        line
        for w in workers
        for line in w.logs().splitlines()
        if "gateway_charge" in line and payment_id in line
    ]
    assert len(charges) == 1, charges


def test_a_reply_to_an_existing_internal_topic_is_refused(
    start_worker, kafka, devserver, db, topics, broker
):
    """A payable command whose reply-to names an existing topic starting with `_` (as
    `_schemas` and the broker's internals do), under the default pattern `.+`: answered
    INVALID_REQUEST `Invalid header reply-to: ...` on the default replies topic, nothing
    charged, and nothing written to that topic."""
    from payment_worker.adapters.kafka import ensure_topics

    internal = f"_internal-{uuid.uuid4().hex[:8]}"
    ensure_topics({"bootstrap.servers": broker}, {internal: 1})
    start_worker()
    command = _payable(devserver)
    kafka.send(command, headers=[("reply-to", internal.encode())])

    [reply] = kafka.replies(expect=1)
    assert reply.record["outcome"] == "INVALID_REQUEST"
    assert reply.record["errorMessage"].startswith("Invalid header reply-to: ")
    assert db.execute("SELECT count(*) FROM payments").fetchone() == (0,)
    assert kafka.read(internal, idle_s=1.0) == []


def _replay(worker_env) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "payment_worker", "replay"],
        env={**os.environ, **worker_env},
        capture_output=True,
        timeout=120,
    )


def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_worker_goes_on(
    start_worker, kafka, devserver, topics, broker, worker_env
):
    """A payable command whose header names include bytes ff fe (written below confluent-kafka,
    as any librdkafka producer can) is dead-lettered `undecodable` with that name kept in hex
    and its other headers as sent, and is not answered; the worker stays up, the good command
    after it on the same partition is answered, and a replay of the topic exits 0."""
    worker = start_worker()
    bad, good = _payable(devserver), _payable(devserver)
    value = AvroCodec(SchemaSet()).encode("ProcessPayment", bad, topics.commands)
    produce_raw(
        broker,
        topics.commands,
        key=bad["orderId"].encode(),
        value=value,
        headers=[(b"\xff\xfe", b"v"), (b"x-kept", b"as sent"), (b"\xc3(", None)],
        partition=0,
    )
    kafka.send(good, partition=0)

    [reply] = kafka.replies(expect=1)
    assert reply.record["commandId"] == good["commandId"]
    assert reply.record["outcome"] == "SUCCEEDED"
    [dead] = kafka.read(topics.dlq, expect=1)
    assert dead.headers["dlq-reason"] == b"undecodable"
    assert b"not UTF-8" in (dead.headers["dlq-error"] or b"")
    assert (dead.key, dead.value) == (bad["orderId"].encode(), value)
    assert dead.header_list[:3] == [
        ("dlq-name-hex:fffe", b"v"),
        ("x-kept", b"as sent"),
        ("dlq-name-hex:c328", None),
    ]
    assert worker.process.poll() is None, worker.logs()[-3000:]
    assert worker.stop() == 0

    result = _replay(worker_env)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    summary = result.stdout.decode(errors="replace")
    assert re.search(r"records read\W+2\b", summary), summary
    assert re.search(r"undecodable\W+1\b", summary), summary


def test_a_megabyte_digit_command_id_does_not_hold_up_another_partition(
    start_worker, kafka, devserver, topics
):
    """A command whose commandId is 900,000 digits (no 13-19 digit window passing Luhn, the
    search's worst case) is answered INVALID_REQUEST with its id cut to 255 characters, and a
    good command sent just after it on another partition is answered within 10 s."""
    worker = start_worker()
    huge = _payable(devserver)
    huge["commandId"] = "1" * 900_000  # near 1 MB, the producer's default limit
    good = _payable(devserver)
    kafka.send(huge, partition=0)
    sent = time.monotonic()
    kafka.send(good, partition=1)

    replies = kafka.replies_by_command(expect=1, timeout_s=10)
    assert good["commandId"] in replies, "the good command was not answered within 10 s"
    assert time.monotonic() - sent < 10
    assert replies[good["commandId"]][0].record["outcome"] == "SUCCEEDED"
    replies = kafka.replies_by_command(expect=2)
    [answer] = replies["1" * 255]
    assert answer.record["outcome"] == "INVALID_REQUEST"
    assert worker.process.poll() is None, worker.logs()[-3000:]
