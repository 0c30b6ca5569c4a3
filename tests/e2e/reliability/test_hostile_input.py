"""Generated hostile input through the real worker (Hypothesis, real broker, database and
Redis): random headers (oversized, not UTF-8, repeated, every routing header with random
bytes), random bodies (valid Avro with random fields, truncated Avro, other schemas, both
framings with unknown fingerprints and ids, raw bytes) and card numbers in random spellings.

Whatever arrives: every decodable command gets exactly one reply, nothing stays pending, no
reply lands outside the reply topics, no card number is kept anywhere, and the group's
committed offsets reach the end of the topic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import unicodedata
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from payment_worker.adapters.kafka import ensure_topics
from payment_worker.adapters.kafka.consumer import readable_headers
from payment_worker.domain.cards import mask_card_numbers_in_bytes, redacted
from payment_worker.testing import command_record
from tests.e2e.reliability.conftest import scale
from tests.rawkafka import RawProducer
from tests.strategies import Hostile, hostile_record

pytestmark = pytest.mark.e2e

_SEPARATED = re.compile(r"(?<=[0-9])[ .\-_/]{1,3}(?=[0-9])")


def searchable(text: str) -> str:
    """Text as a card number would be searched for in it: NFKC, every decimal digit in ASCII,
    the separators between two digits taken out ("4111 1111" reads 41111111)."""
    chars = []
    for char in unicodedata.normalize("NFKC", text):
        digit = unicodedata.decimal(char, None)
        chars.append(str(digit) if digit is not None else char)
    return _SEPARATED.sub("", "".join(chars))


def _card_leaks(cases: list[Hostile], haystacks: dict[str, str]) -> list[str]:
    cards = {card for case in cases for card in case.cards}
    spelled = {s for case in cases for s in case.spelled}
    found = []
    for where, text in haystacks.items():
        flat = searchable(text)
        found += [f"{card} in {where}" for card in cards if card in flat]
        found += [f"{s!r} in {where}" for s in spelled if s in text]
    return found


def _canonical(command_id: str) -> str:
    try:
        return str(uuid.UUID(command_id))
    except ValueError:
        return command_id


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def test_generated_hostile_records_never_wedge_leak_or_keep_a_card(
    start_worker, kafka, devserver, db, topics, broker, worker_env, report
):
    """Each generated record is produced to the commands topic of a live worker; then every
    property is checked over all of them (the record at fault is named on failure)."""
    alt_replies = topics.replies + "-alt"
    ensure_topics({"bootstrap.servers": broker}, {alt_replies: 2})
    orders = []
    for i in range(15):
        order = {
            "orderId": str(uuid.uuid4()),
            "customerId": str(uuid.uuid4()),
            "amount": ["10.00", "25.13", "7.66", "30.00", "99.99"][i % 5],
        }
        devserver.add_order(order["orderId"], order["customerId"], order["amount"])
        orders.append(order)
    context = {
        "reply_topics": [topics.replies, alt_replies],
        "own": [topics.commands, topics.succeeded, topics.failed, topics.dlq],
        "orders": orders,
    }
    worker = start_worker()

    producer = Producer({"bootstrap.servers": broker, "linger.ms": 5})
    cases: list[Hostile] = []
    delivered: dict[int, int] = {}

    def on_delivery(error: Any, message: Any) -> None:
        assert error is None, error
        delivered[message.partition()] = max(
            delivered.get(message.partition(), -1), message.offset()
        )

    examples = scale(300, 10_000)

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def produce(data: st.DataObject) -> None:
        case = data.draw(hostile_record(len(cases), context))
        cases.append(case)
        producer.produce(
            topics.commands,
            key=case.key,
            value=case.value,
            headers=case.headers,
            on_delivery=on_delivery,
        )
        producer.poll(0)

    produce()
    assert producer.flush(60) == 0
    decodable = [c for c in cases if c.decodable]
    expected_ids = Counter(_canonical(c.command["commandId"]) for c in decodable)

    # Wait until the group has committed every record: the worker is done with all of them.
    deadline = time.monotonic() + scale(180, 1200)
    group = worker_env["PAYMENT_CONSUMER_GROUP"]
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = kafka.committed(group, topics.commands)
        if all(committed.get(p, -1) >= last + 1 for p, last in delivered.items()):
            break
        time.sleep(1)
    stuck = {
        p: (committed.get(p), last + 1)
        for p, last in delivered.items()
        if committed.get(p, -1) < last + 1
    }
    assert not stuck, f"committed offsets short of the end (committed, end): {stuck}"

    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and db.execute(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"
        ).fetchone()[0]
    ):
        time.sleep(0.5)
    replies = [*kafka.replies(timeout_s=120), *kafka.replies(topic=alt_replies, timeout_s=60)]
    per_command = Counter(_canonical(r.record["commandId"]) for r in replies if r.record)
    missing = [i for i in expected_ids if per_command[i] < expected_ids[i]]
    extra = [i for i, n in per_command.items() if n > expected_ids.get(i, 0)]
    dead = kafka.read(topics.dlq, idle_s=2.0)
    elsewhere = [
        (topic, r.offset)
        for topic in (topics.succeeded, topics.failed, topics.dlq, topics.commands)
        for r in kafka.read(topic, idle_s=1.0)
        if r.headers.get("ce_type") == b"ticketing.payment.reply.v1"
    ]
    pending = db.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()[0]
    parked = db.execute("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL").fetchone()[0]
    unsent = db.execute(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"
    ).fetchone()[0]
    created = {name for name in kafka.producer.list_topics(timeout=10).topics}

    stored = " ".join(
        [
            *(row[0] for row in db.execute("SELECT p::text FROM payments p")),
            *(row[0] for row in db.execute("SELECT l::text FROM command_ledger l")),
            *(
                _text(key)
                + _text(value)
                + " ".join(n + _text(bytes.fromhex(h or "")) for n, h in headers)
                for key, value, headers in db.execute("SELECT key, value, headers FROM outbox")
            ),
        ]
    )
    haystacks = {
        "the database": stored,
        "replies": " ".join(
            _text(r.value) + _text(r.key) + " ".join(_text(v) for v in r.headers.values())
            for r in replies
        ),
        "dead letters": " ".join(
            _text(d.value) + _text(d.key) + " ".join(n + _text(v) for n, v in d.header_list)
            for d in dead
        ),
        "events": " ".join(
            _text(e.value) for t in (topics.succeeded, topics.failed) for e in kafka.read(t)
        ),
        "the worker's log": worker.logs(),
    }
    leaks = _card_leaks(cases, haystacks)

    kinds = Counter(c.kind for c in cases)
    report.sent, report.replies, report.dead_letters = len(cases), len(replies), len(dead)
    report.stuck_pending, report.lost = int(pending), len(missing)
    report.notes = {
        "kinds": dict(sorted(kinds.items())),
        "with a card number": sum(1 for c in cases if c.cards),
        "with routing headers": sum(1 for c in cases if c.headers),
        "outcomes": dict(Counter(r.record["outcome"] for r in replies if r.record).most_common()),
        "parked": int(parked),
        "leaks": len(leaks),
        "replies outside reply topics": len(elsewhere),
    }

    by_id = {_canonical(c.command["commandId"]): c for c in decodable}
    assert not missing, f"{len(missing)} decodable commands without a reply, e.g. " + "; ".join(
        f"{i}: {by_id[i].headers!r:.300} {by_id[i].command!r:.300}" for i in missing[:3]
    )
    assert not extra, f"{len(extra)} commands with more than one reply, e.g. {extra[:3]}"
    undecodable = [
        d for d in dead if d.headers["dlq-reason"] in (b"undecodable", b"unknown-schema")
    ]
    errors = sum(1 for r in replies if r.record and r.record["outcome"] == "ERROR")
    assert len(undecodable) == len(cases) - len(decodable), "undecodable records dead-lettered once"
    assert len(dead) - len(undecodable) == errors, "each ERROR dead-lettered, nothing else"
    assert pending == 0, "a payment stayed pending"
    assert unsent == 0, "outbox rows left unsent"
    assert not elsewhere, f"replies outside the reply topics: {elsewhere[:5]}"
    assert not [t for t in created if t.startswith("no-such-topic-")], "a hostile topic was created"
    assert not leaks, f"card numbers kept: {leaks[:5]}"


# librdkafka reads a header name up to its first NUL byte (confluent-kafka and the raw reader
# alike), so the bytes after one cannot be kept: names are generated without NUL.
_RAW_NAMES = st.binary(min_size=1, max_size=16).filter(lambda name: b"\x00" not in name)


def _payable(devserver: Any) -> dict[str, Any]:
    command = command_record(amount=Decimal("10.00"))
    devserver.add_order(command["orderId"], command["customerId"], "10.00")
    return command


def _utf8(names: list[bytes]) -> bool:
    try:
        for name in names:
            name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_generated_header_names_of_random_bytes_never_stop_the_worker(
    start_worker, kafka, devserver, topics, broker, worker_env, report
):
    """Payable commands whose header names are random bytes, written below confluent-kafka:
    a record with a name that is not UTF-8 is dead-lettered `undecodable` with every name kept
    (those in hex) and is not answered; any other is answered once. The worker stays up, a
    good command after them on each partition is answered, and a replay of the topic exits 0."""
    worker = start_worker()
    producer = RawProducer(broker)
    sent: list[tuple[dict[str, Any], list[tuple[bytes, bytes | None]]]] = []

    @settings(
        max_examples=scale(40, 1000),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(st.tuples(_RAW_NAMES, st.none() | st.binary(max_size=40)), max_size=4),
        st.integers(min_value=0, max_value=3),
    )
    def produce(headers: list[tuple[bytes, bytes | None]], partition: int) -> None:
        command = _payable(devserver)
        producer.produce(
            topics.commands,
            key=command["orderId"].encode(),
            value=kafka.codec.encode("ProcessPayment", command, topics.commands),
            headers=headers,
            partition=partition,
        )
        sent.append((command, headers))

    try:
        produce()
        producer.flush(60)
    finally:
        producer.close()
    goods = [kafka.send(_payable(devserver), partition=p) for p in range(4)]

    unreadable = {c["orderId"]: h for c, h in sent if not _utf8([n for n, _ in h])}
    answered = {c["commandId"] for c, _ in sent if c["orderId"] not in unreadable}
    answered |= {g["commandId"] for g in goods if g is not None}
    replies = kafka.replies_by_command(expect=len(answered), timeout_s=120)
    dead = kafka.read(topics.dlq, expect=len(unreadable), timeout_s=60)
    report.sent, report.replies, report.dead_letters = len(sent) + 4, len(replies), len(dead)
    report.notes = {"names not UTF-8": len(unreadable)}

    assert worker.process.poll() is None, worker.logs()[-3000:]
    assert set(replies) == answered, "each readable command answered, no unreadable one"
    assert all(len(r) == 1 for r in replies.values()), "one reply each"
    assert len(dead) == len(unreadable)
    for letter in dead:
        assert letter.headers["dlq-reason"] == b"undecodable"
        # As every dead letter, with what looks like a card number masked (§4): a name's hex
        # can hold a run of digits that passes Luhn.
        expected = [
            (redacted(name), None if value is None else mask_card_numbers_in_bytes(value)[0])
            for name, value in readable_headers(unreadable[(letter.key or b"").decode()])
        ]
        assert letter.header_list[: len(expected)] == expected
    assert worker.stop() == 0
    from tests.e2e.test_replay import replay

    replayed = replay(worker_env)
    assert replayed.returncode == 0, replayed.stdout[-2000:] + replayed.stderr[-2000:]
    result = subprocess.run(
        [sys.executable, "-m", "payment_worker", "replay"],
        env={**os.environ, **worker_env},
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
