"""`payment-worker replay`: reprocessing a topic safely, through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal

import pytest

from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e


def replay(
    worker_env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "payment_worker", "replay", *args],
        env={**os.environ, **worker_env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _orders(devserver, n: int) -> list[dict]:
    """n commands: most succeed, every 7th is declined, every 11th has an unknown order."""
    commands = []
    for i in range(n):
        customer = str(uuid.uuid4())
        amount = "15.13" if i % 7 == 3 else "15.00"
        cmd = command_record(customerId=customer, amount=Decimal(amount))
        if i % 11 != 5:
            devserver.add_order(cmd["orderId"], customer, amount)
        commands.append(cmd)
    return commands


def _send_batched(kafka, commands: list[dict]) -> None:
    """As a client sends: many records to a batch, one flush at the end (replay's bounds are
    the broker's real end offsets, whatever the batches)."""
    for cmd in commands:
        kafka.send(cmd, flush=False)
    kafka.flush()


def _count(db, query: str) -> int:
    return int(db.execute(query).fetchone()[0])


def test_replaying_processed_commands_changes_nothing_and_answers_the_same(
    start_worker, kafka, devserver, db, topics, worker_env
):
    """Replay of already processed commands: no new payment rows, no new event ids, and every
    command answered again with its original outcome (duplicate=true)."""
    commands = _orders(devserver, 300)
    _send_batched(kafka, commands)
    worker = start_worker()
    originals = {r.record["commandId"]: r.record for r in kafka.replies(expect=300)}
    assert len(originals) == 300
    worker.stop()
    payments_before = _count(db, "SELECT count(*) FROM payments")
    events_before = {
        r.record["eventId"] for r in kafka.read(topics.succeeded, decode="PaymentSucceeded")
    }

    result = replay(worker_env, "--from-beginning")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answered from ledger" in result.stdout and "300" in result.stdout

    assert _count(db, "SELECT count(*) FROM payments") == payments_before
    events_after = {
        r.record["eventId"] for r in kafka.read(topics.succeeded, decode="PaymentSucceeded")
    }
    assert events_after == events_before
    replies = kafka.replies(expect=600)
    again = [r.record for r in replies if r.record["duplicate"]]
    assert len(again) == 300
    for reply in again:
        original = originals[reply["commandId"]]
        assert reply["outcome"] == original["outcome"]
        assert reply["httpStatus"] == original["httpStatus"]
        assert (reply["payment"] or {}).get("id") == (original["payment"] or {}).get("id")


def test_replay_split_across_processes_answers_every_command_once(
    start_worker, kafka, devserver, db, worker_env
):
    """--processes 3 on the 4 partitions (shards of 2, 1 and 1): every command is read by
    exactly one process and answered once more from the ledger; the summary adds them up."""
    commands = _orders(devserver, 120)
    _send_batched(kafka, commands)
    worker = start_worker()
    originals = {r.record["commandId"]: r.record for r in kafka.replies(expect=120)}
    worker.stop()
    payments_before = _count(db, "SELECT count(*) FROM payments")

    result = replay(worker_env, "--processes", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(3 processes)" in " ".join(result.stdout.split())
    rows = {
        " ".join(cells[:-1]): cells[-1]
        for cells in (ln.replace("│", " ").split() for ln in result.stdout.splitlines())
        if len(cells) >= 2
    }
    assert rows["records read"] == "120", result.stdout
    assert rows["answered from ledger"] == "120", result.stdout
    assert _count(db, "SELECT count(*) FROM payments") == payments_before
    again = Counter(
        r.record["commandId"] for r in kafka.replies(expect=240) if r.record["duplicate"]
    )
    assert again == Counter(set(originals))  # each command once, none twice, none left out
    for reply in kafka.replies(expect=240):
        if reply.record["duplicate"]:
            assert reply.record["outcome"] == originals[reply.record["commandId"]]["outcome"]


def test_replay_after_restoring_an_older_backup_processes_exactly_the_lost_commands(
    start_worker, kafka, devserver, db, worker_env
):
    """Orders whose ledger and payments were deleted (an older backup restored) are processed
    again by a replay; the others are answered from the ledger."""
    commands = [
        command_record(customerId=str(uuid.uuid4()), amount=Decimal("9.00")) for _ in range(60)
    ]
    for cmd in commands:
        devserver.add_order(cmd["orderId"], cmd["customerId"], "9.00")
    _send_batched(kafka, commands)
    worker = start_worker()
    kafka.replies(expect=60)
    worker.stop()
    lost = [c["orderId"] for c in commands[:12]]
    db.execute(
        "DELETE FROM outbox WHERE payment_id IN "
        "(SELECT id FROM payments WHERE order_id::text = ANY(%s))",
        (lost,),
    )
    db.execute("DELETE FROM command_ledger WHERE order_id::text = ANY(%s)", (lost,))
    db.execute("DELETE FROM payments WHERE order_id::text = ANY(%s)", (lost,))

    result = replay(worker_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _count(db, "SELECT count(*) FROM payments WHERE status = 'succeeded'") == 60
    fresh = db.execute(
        "SELECT order_id::text FROM payments WHERE created_at > now() - interval '2 minutes' "
        "AND id NOT IN (SELECT payment_id FROM command_ledger WHERE finished_at < "
        "(SELECT min(created_at) FROM payments WHERE order_id::text = ANY(%s)))",
        (lost,),
    ).fetchall()
    assert set(lost) <= {r[0] for r in fresh}
    summary = result.stdout
    assert "processed anew" in summary
    line = next(ln for ln in summary.splitlines() if "processed anew" in ln)
    assert "12" in line


def test_commands_that_failed_during_an_outage_are_completed_by_replay(
    start_worker, kafka, devserver, db, worker_env, topics
):
    """ERROR is not final: a replay after the Ordering outage completes those commands, and the
    dead letters replay too (--topic of the DLQ) without charging anyone twice."""
    commands = [
        command_record(customerId=str(uuid.uuid4()), amount=Decimal("7.00")) for _ in range(5)
    ]
    for cmd in commands:
        devserver.add_order(cmd["orderId"], cmd["customerId"], "7.00")
    worker = start_worker()
    devserver.fault("orders", status=503)
    try:
        _send_batched(kafka, commands)
        replies = kafka.replies(expect=5)
    finally:
        devserver.clear_faults()
    assert {r.record["outcome"] for r in replies} == {"ERROR"}
    worker.stop()
    assert _count(db, "SELECT count(*) FROM payments") == 0
    dead = kafka.read(topics.dlq, expect=5)
    assert len(dead) == 5

    result = replay(worker_env, "--topic", topics.dlq)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _count(db, "SELECT count(*) FROM payments WHERE status = 'succeeded'") == 5

    again = replay(worker_env)  # the commands topic too: now answered from the ledger
    assert again.returncode == 0, again.stderr[-3000:]
    assert _count(db, "SELECT count(*) FROM payments") == 5


def test_republish_events_re_emits_the_original_event_ids(
    start_worker, kafka, devserver, db, topics, worker_env
):
    """--republish-events publishes each finalized payment's event again, same event id."""
    commands = _orders(devserver, 20)
    _send_batched(kafka, commands)
    worker = start_worker()
    kafka.replies(expect=20)
    worker.stop()
    first = kafka.read(topics.succeeded, decode="PaymentSucceeded")
    result = replay(worker_env, "--republish-events")
    assert result.returncode == 0, result.stderr[-3000:]
    both = kafka.read(topics.succeeded, expect=2 * len(first), decode="PaymentSucceeded")
    counts = Counter(e.record["eventId"] for e in both)
    assert set(counts) == {e.record["eventId"] for e in first}
    assert set(counts.values()) == {2}


def test_timestamps_bound_what_replay_reads(start_worker, kafka, devserver, worker_env):
    """--from-timestamp/--to-timestamp read only the commands produced in that window."""
    early = _orders(devserver, 5)
    _send_batched(kafka, early)
    time.sleep(1.2)
    start_ms = int(time.time() * 1000)
    middle = _orders(devserver, 4)
    _send_batched(kafka, middle)
    time.sleep(1.2)
    stop_ms = int(time.time() * 1000)
    _send_batched(kafka, _orders(devserver, 3))
    result = replay(
        worker_env, "--from-timestamp", str(start_ms), "--to-timestamp", str(stop_ms), "--dry-run"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if "records read" in ln)
    assert line.replace("│", " ").split()[-1] == "4", result.stdout + result.stderr


def test_replay_of_a_missing_topic_exits_non_zero_with_a_clear_line(worker_env):
    """A topic that does not exist: exit code 1 and one line saying so."""
    result = replay(worker_env, "--topic", f"no-such-topic-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_more_processes_than_partitions_with_a_start_timestamp(kafka, devserver, worker_env):
    """--processes 6 on 4 partitions leaves two processes without a partition: they end at once,
    also with --from-timestamp (which asks the broker for offsets of no partition at all)."""
    _send_batched(kafka, _orders(devserver, 8))
    result = replay(worker_env, "--processes", "6", "--from-timestamp", "0", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if "records read" in ln)
    assert line.replace("│", " ").split()[-1] == "8", result.stdout + result.stderr


def test_split_replay_of_a_missing_topic_reports_it_once(worker_env):
    """The same with the replay split: every process fails alike, one line says so."""
    name = f"no-such-topic-{uuid.uuid4().hex[:6]}"
    result = replay(worker_env, "--topic", name, "--processes", "2")
    assert result.returncode == 1
    assert result.stderr.count("does not exist") == 1, result.stderr[-2000:]


def test_replay_alongside_a_live_worker_charges_nobody_twice(
    start_worker, kafka, devserver, db, worker_env
):
    """A replay and the live worker on the same new commands: one succeeded payment each."""
    commands = _orders(devserver, 80)
    _send_batched(kafka, commands)
    worker = start_worker(wait=False, PAYMENT_GATEWAY_LATENCY_MS="20-80")
    result = replay({**worker_env, "PAYMENT_GATEWAY_LATENCY_MS": "20-80"})
    assert result.returncode == 0, result.stderr[-3000:]
    kafka.replies(expect=160, timeout_s=90)
    worker.stop()
    assert (
        _count(
            db,
            "SELECT count(*) FROM (SELECT order_id FROM payments WHERE status = "
            "'succeeded' GROUP BY order_id HAVING count(*) > 1) x",
        )
        == 0
    )
    assert _count(db, "SELECT count(*) FROM payments WHERE status = 'pending'") == 0
    paid = {c["orderId"] for i, c in enumerate(commands) if i % 7 != 3 and i % 11 != 5}
    got = {
        r[0]
        for r in db.execute(
            "SELECT order_id::text FROM payments WHERE status = 'succeeded'"
        ).fetchall()
    }
    assert got == paid


def _summary(result: subprocess.CompletedProcess[str], row: str) -> int:
    """The count of one row of replay's summary table."""
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if len(cells) == 2 and cells[0] == row:
            return int(cells[1])
    raise AssertionError(f"no row {row!r} in:\n{result.stdout}\n{result.stderr[-2000:]}")


def test_dry_run_writes_nothing_and_undecodable_records_are_counted_not_dead_lettered(
    kafka, devserver, db, worker_env, topics
):
    """A topic with an undecodable record among commands: --dry-run reports them and writes
    nothing (no reply, dead letter, payment or ledger entry); the real replay then answers the
    commands and counts the undecodable record without dead-lettering it again."""
    commands = _orders(devserver, 4)
    _send_batched(kafka, commands[:2])
    kafka.send(value=b"\xc3\x01 not an Avro command", key=b"garbage")
    _send_batched(kafka, commands[2:])

    dry = replay(worker_env, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert _summary(dry, "records read") == 5
    assert _summary(dry, "undecodable") == 1
    assert _summary(dry, "processed anew") == 4
    assert kafka.read(topics.replies, idle_s=1.0) == []
    assert kafka.read(topics.dlq, idle_s=0.5) == []
    assert _count(db, "SELECT count(*) FROM payments") == 0
    assert _count(db, "SELECT count(*) FROM command_ledger") == 0

    real = replay(worker_env)
    assert real.returncode == 0, real.stderr[-3000:]
    assert _summary(real, "undecodable") == 1
    assert _summary(real, "dead letters written") == 0
    assert len(kafka.replies(expect=4, timeout_s=60)) == 4
    assert kafka.read(topics.dlq, idle_s=0.5) == []


def test_replay_without_a_broker_exits_non_zero_with_a_clear_line(worker_env):
    """No broker at the configured address: exit code 1 and one line saying it cannot be
    reached, instead of waiting forever."""
    from payment_worker.devstack.broker import free_port

    env = {**worker_env, "PAYMENT_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = replay(env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "cannot reach the broker" in result.stderr, result.stderr[-2000:]
