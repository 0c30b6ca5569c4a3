"""What happens when things break: outages, poison records, crashes, Redis and broker loss."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from payment_worker.adapters.kafka import ensure_topics
from payment_worker.devstack.broker import Broker, free_port, local_broker, port_open
from payment_worker.testing import KafkaHarness, command_record
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def _order(devserver, amount: str = "30.00") -> dict:
    customer = str(uuid.uuid4())
    cmd = command_record(customerId=customer, amount=Decimal(amount))
    devserver.add_order(cmd["orderId"], customer, amount)
    return cmd


def _invariants(db, kafka, topics, commands: list[dict]) -> None:
    """Every command answered, no order paid twice, nothing pending, one event id per payment."""
    replies = kafka.replies(expect=len(commands), timeout_s=120)
    answered = {r.record["commandId"] for r in replies}
    assert answered >= {c["commandId"] for c in commands}
    assert (
        db.execute(
            "SELECT count(*) FROM (SELECT order_id FROM payments WHERE status = 'succeeded' "
            "GROUP BY order_id HAVING count(*) > 1) twice"
        ).fetchone()[0]
        == 0
    )
    assert db.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()[0] == 0
    succeeded = {
        r[0]
        for r in db.execute("SELECT id::text FROM payments WHERE status = 'succeeded'").fetchall()
    }
    events = kafka.read(topics.succeeded, expect=len(succeeded), decode="PaymentSucceeded")
    event_ids_by_payment: dict[str, set[str]] = {}
    for event in events:
        event_ids_by_payment.setdefault(event.record["paymentId"], set()).add(
            event.record["eventId"]
        )
    assert set(event_ids_by_payment) == succeeded
    assert all(len(ids) == 1 for ids in event_ids_by_payment.values())


def test_ordering_outage_answers_error_charges_nothing_and_a_retry_succeeds(
    start_worker, kafka, devserver, db, topics
):
    """Ordering 503s: bounded retries, ERROR reply, dead letter; the same command later succeeds."""
    start_worker()
    cmd = _order(devserver)
    devserver.fault("orders", status=503)
    try:
        kafka.send(cmd)
        [reply] = kafka.replies(expect=1)
    finally:
        devserver.clear_faults()
    assert reply.record["outcome"] == "ERROR" and reply.record["httpStatus"] == 500
    assert reply.record["errorMessage"].startswith("Payment processing error: ")
    assert db.execute("SELECT count(*) FROM payments").fetchone()[0] == 0
    [dead] = kafka.read(topics.dlq, expect=1)
    assert dead.headers["dlq-reason"] == b"retries-exhausted"
    kafka.send(cmd)  # ERROR is not final: the redelivered command is processed again
    second = kafka.replies(expect=2)[1].record
    assert second["outcome"] == "SUCCEEDED" and second["duplicate"] is False


def test_a_poison_record_is_dead_lettered_and_the_partition_keeps_flowing(
    start_worker, kafka, devserver, topics
):
    """Undecodable bytes go to the DLQ with their key, value, headers and reason; the next
    command on the same partition is processed."""
    start_worker()
    kafka.send(
        value=b"\xc3\x01not-avro-at-all", key=b"poison", partition=0, headers=[("origin", b"test")]
    )
    kafka.send(value=b"", key=b"empty", partition=0)
    cmd = _order(devserver)
    kafka.send(cmd, partition=0)
    [reply] = kafka.replies(expect=1)
    assert reply.record["commandId"] == cmd["commandId"]
    dead = kafka.read(topics.dlq, expect=2)
    # Records with different keys run concurrently: the dead letters' order is not fixed.
    assert sorted(d.key for d in dead) == [b"empty", b"poison"]
    first = next(d for d in dead if d.key == b"poison")
    assert first.value == b"\xc3\x01not-avro-at-all"
    assert first.headers["origin"] == b"test"
    assert first.headers["dlq-reason"] == b"unknown-schema"
    assert first.headers["dlq-topic"] == topics.commands.encode()
    assert first.headers["dlq-partition"] == b"0"
    assert first.headers["dlq-offset"] == b"0"
    assert next(d for d in dead if d.key == b"empty").headers["dlq-reason"] == b"undecodable"


def test_sigterm_finishes_in_flight_commands_and_exits_zero(start_worker, kafka, devserver, db):
    """SIGTERM: what was consumed is finished and answered, offsets committed, exit code 0."""
    worker = start_worker(PAYMENT_GATEWAY_LATENCY_MS="400-600")
    commands = [_order(devserver) for _ in range(20)]
    for cmd in commands:
        kafka.send(cmd, flush=False)
    kafka.flush()
    deadline = time.monotonic() + 20
    while "payment_succeeded" not in worker.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.stop() == 0
    done = db.execute("SELECT count(*) FROM payments WHERE status = 'succeeded'").fetchone()[0]
    assert db.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()[0] == 0
    assert len(kafka.replies(expect=done)) == done
    restarted = start_worker()
    assert len(kafka.replies(expect=20)) >= 20
    assert restarted.stop() == 0
    # The first run's work is not redone: exactly one row per order.
    assert db.execute("SELECT count(*) FROM payments").fetchone()[0] == 20


def test_worker_killed_mid_stream_and_restarted_loses_nothing_and_charges_once(
    start_worker, kafka, devserver, db, topics
):
    """SIGKILL twice in the middle of 300 commands: after restarts every command is answered,
    no order is paid twice, no payment stays pending, one event id per finalized payment."""
    commands = [
        _order(devserver, amount=f"{30 + i % 7}.{'13' if i % 10 == 0 else '00'}")
        for i in range(300)
    ]
    for cmd in commands:
        kafka.send(cmd, flush=False)
    kafka.flush()
    # A worker started after a kill joins once the broker has dropped the killed one: its
    # session (the broker's shortest, 6 s) ends that wait sooner than our default 10 s.
    env = {
        "PAYMENT_GATEWAY_LATENCY_MS": "100-500",
        "PAYMENT_RECONCILE_AFTER_S": "3",
        "PAYMENT_KAFKA_CONFIG": '{"session.timeout.ms": 6000}',
    }
    for _ in range(2):
        worker = start_worker(**env)
        deadline = time.monotonic() + 20
        while worker.logs().count("payment_") < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.kill()
        pending = db.execute("SELECT count(*) FROM payments WHERE status='pending'").fetchone()[0]
        print(f"killed with {pending} payments pending")
    final = start_worker(**env)
    _invariants(db, kafka, topics, commands)
    assert final.stop() == 0


def test_redis_stopped_mid_stream_keeps_payments_correct(
    start_worker, kafka, devserver, db, topics
):
    """Redis goes away: the worker logs it, counts it, and the database rules keep it correct."""
    port = free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        while not port_open("127.0.0.1", port):
            time.sleep(0.05)
        metrics_port = free_port()
        worker = start_worker(
            PAYMENT_REDIS_URL=f"redis://127.0.0.1:{port}/0",
            PAYMENT_GATEWAY_LATENCY_MS="50-100",
            PAYMENT_METRICS_PORT=str(metrics_port),
        )
        commands = [_order(devserver) for _ in range(60)]
        for cmd in commands[:20]:
            kafka.send(cmd, flush=False)
        kafka.flush()
        kafka.replies(expect=20)
        redis.terminate()
        redis.wait(10)
        for cmd in commands[20:]:
            kafka.send(cmd, flush=False)
            kafka.send({**cmd, "commandId": str(uuid.uuid4())}, partition=3, flush=False)
        kafka.flush()
        _invariants(db, kafka, topics, commands)
        assert "redis_degraded" in worker.logs()
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        degraded = next(
            line
            for line in metrics.splitlines()
            if line.startswith("payment_worker_redis_degraded_total ")
        )
        assert float(degraded.split()[-1]) > 0
    finally:
        if redis.poll() is None:
            redis.kill()


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker apart from the session's, for the tests that stop and kill it: started once for
    them (each leaves it running again, on the same data, with topics of its own)."""
    data = tmp_path_factory.mktemp("outage-broker")
    broker = local_broker(
        log_path=ARTIFACTS / f"broker-outage-{data.name}.log", data_dir=data / "kafka"
    ).start()
    yield broker
    broker.kill()


@pytest.mark.parametrize("outage", ["stopped", "killed"])
def test_a_broker_stopped_or_killed_mid_stream_and_restarted_loses_nothing(
    outage, outage_broker, start_worker, devserver, db, topics
):
    """A broker of its own, stopped (SIGTERM: a controlled shutdown) or killed (SIGKILL) while
    payments are being charged, then restarted on the same data: every command answered, no
    order paid twice, nothing pending, and every event relayed once the broker is back."""
    broker = outage_broker
    if broker.process is None or broker.process.poll() is not None:
        broker.start()  # an earlier case failed while it was down
    ensure_topics(
        {"bootstrap.servers": broker.bootstrap},
        {
            topics.commands: 4,
            topics.succeeded: 2,
            topics.failed: 2,
            topics.replies: 2,
            topics.dlq: 1,
        },
    )
    kafka = KafkaHarness(broker.bootstrap, topics)
    # The restarted broker holds the group's old member until its session ends: the
    # broker's shortest (6 s) rather than our 10 s lets the worker back in sooner.
    start_worker(
        PAYMENT_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        PAYMENT_GATEWAY_LATENCY_MS="300-600",
        PAYMENT_KAFKA_CONFIG=json.dumps({"message.timeout.ms": 3000, "session.timeout.ms": 6000}),
    )
    commands = [_order(devserver) for _ in range(40)]
    for cmd in commands[:20]:
        kafka.send(cmd, flush=False)
    kafka.flush()
    deadline = time.monotonic() + 30
    while db.execute("SELECT count(*) FROM payments").fetchone()[0] < 10:
        assert time.monotonic() < deadline, "no payments began"
        time.sleep(0.05)
    pending = db.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()
    (broker.stop if outage == "stopped" else broker.kill)()
    assert pending[0] > 0, "the outage did not fall while payments were being charged"
    time.sleep(4)  # past message.timeout.ms: the producers give their deliveries up
    broker.start()
    for cmd in commands[20:]:
        kafka.send(cmd, flush=False)
    kafka.flush()
    deadline = time.monotonic() + 90
    while db.execute(
        "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL)"
        " + (SELECT count(*) FROM payments WHERE status = 'pending')"
        " + (%s - (SELECT count(*) FROM payments))",
        (len(commands),),
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "not every command was paid and relayed"
        time.sleep(0.2)
    _invariants(db, kafka, topics, commands)
    paid = {r[0] for r in db.execute("SELECT order_id::text FROM payments").fetchall()}
    assert paid == {c["orderId"] for c in commands}


def test_a_reply_topic_deleted_while_its_commands_are_in_flight_is_parked_alone(
    start_worker, kafka, devserver, db, topics, broker
):
    """Commands answering on a caller's reply topic are being charged when that topic is
    deleted: their replies are parked and counted (the topic is never created again by asking
    for it), while every other command's reply and every payment's event is delivered."""
    callers = f"caller-replies-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker})
    ensure_topics({"bootstrap.servers": broker}, {callers: 2})
    metrics_port = free_port()
    # librdkafka takes a topic missing from the metadata for a deleted one only after
    # topic.metadata.propagation.max.ms (30 s by default; until then the replies' deliveries
    # just time out, uncounted, as in an outage): 3 s lets the sweeper's next round meet it.
    start_worker(
        PAYMENT_GATEWAY_LATENCY_MS="1500-2000",
        PAYMENT_OUTBOX_MAX_ATTEMPTS="1",
        PAYMENT_KAFKA_CONFIG=json.dumps(
            {"message.timeout.ms": 3000, "topic.metadata.propagation.max.ms": 3000}
        ),
        PAYMENT_METRICS_PORT=str(metrics_port),
    )
    theirs = [_order(devserver) for _ in range(5)]
    ours = [_order(devserver) for _ in range(10)]
    for cmd in theirs:
        kafka.send(cmd, headers=[("reply-to", callers.encode())], flush=False)
    for cmd in ours:
        kafka.send(cmd, flush=False)
    kafka.flush()
    deadline = time.monotonic() + 30
    while db.execute("SELECT count(*) FROM payments").fetchone()[0] < 15:
        assert time.monotonic() < deadline, "the commands were not all taken up"
        time.sleep(0.05)
    for future in admin.delete_topics([callers]).values():
        future.result(10)
    replies = kafka.replies(expect=10, timeout_s=60)
    assert {r.record["commandId"] for r in replies} == {c["commandId"] for c in ours}
    events = kafka.read(topics.succeeded, expect=15, decode="PaymentSucceeded")
    assert {e.record["orderId"] for e in events} == {c["orderId"] for c in theirs + ours}
    deadline = time.monotonic() + 60
    parked = 0
    while parked < 5:
        assert time.monotonic() < deadline, f"{parked} of the 5 replies parked"
        time.sleep(0.2)
        parked = db.execute(
            "SELECT count(*) FROM outbox WHERE topic = %s AND parked_at IS NOT NULL"
            " AND sent_at IS NULL",
            (callers,),
        ).fetchone()[0]
    assert db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0] == 5
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    counted = next(
        line for line in metrics.splitlines()
        if line.startswith('payment_worker_outbox_parked_total{kind="reply"}')
    )  # fmt: skip
    assert float(counted.split()[-1]) == 5
    assert callers not in admin.list_topics(timeout=10).topics
