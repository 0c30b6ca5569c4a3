"""A gateway that cannot say whether it charged: the payment stays pending through a crash, and
is settled by asking the gateway again with the same payment id, never charged twice and never
recorded failed while its outcome is unknown."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import pytest

from payment_worker.testing import command_record

pytestmark = pytest.mark.e2e


def _answers(logs) -> dict[str, set[tuple[bool, str | None]]]:
    """payment id -> the distinct known answers the gateway gave (DEBUG gateway_charge lines)."""
    answers: dict[str, set[tuple[bool, str | None]]] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"gateway_charge"' in line:
                entry = json.loads(line)
                if not entry.get("unknown"):
                    answers.setdefault(entry["payment_id"], set()).add(
                        (entry["success"], entry["transaction_id"] or entry["code"])
                    )
    return answers


def test_unknown_answers_survive_a_kill_and_are_settled_by_the_reconciler(
    start_worker, kafka, devserver, db, topics
):
    """Every charge's first answer is lost (PAYMENT_GATEWAY_UNKNOWN_RATE=1): each command is
    answered ERROR and its payment stays pending, none failed; the worker is SIGKILLed and
    restarted; the reconciler asks the gateway again with the same payment ids until it
    answers: every payment ends succeeded (or failed for a declined card), with one gateway
    answer and one event per payment id."""
    # The worker started after the kill joins once the broker has dropped the killed one: its
    # session (the broker's shortest, 6 s) ends that wait sooner than our default 10 s.
    env = {
        "PAYMENT_GATEWAY_UNKNOWN_RATE": "1",
        "PAYMENT_GATEWAY_LATENCY_MS": "0",
        "PAYMENT_RECONCILE_AFTER_S": "2",
        "PAYMENT_LOG_LEVEL": "DEBUG",
        "PAYMENT_KAFKA_CONFIG": '{"session.timeout.ms": 6000}',
    }
    commands = []
    for i in range(12):
        amount = "20.13" if i % 4 == 0 else "20.00"
        command = command_record(customerId=str(uuid.uuid4()), amount=Decimal(amount))
        devserver.add_order(command["orderId"], command["customerId"], amount)
        commands.append(command)
    first = start_worker(**{**env, "PAYMENT_RECONCILE_AFTER_S": "3600"})
    for command in commands:
        kafka.send(command, flush=False)
    kafka.flush()
    replies = kafka.replies(expect=len(commands), timeout_s=60)
    assert {r.record["outcome"] for r in replies} == {"ERROR"}
    assert all("answer is unknown" in r.record["errorMessage"] for r in replies)
    statuses = db.execute("SELECT status, count(*) FROM payments GROUP BY status").fetchall()
    assert statuses == [("pending", len(commands))]
    first.kill()

    second = start_worker(**env)
    deadline = time.monotonic() + 90
    while db.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()[0]:
        assert time.monotonic() < deadline, second.logs()[-3000:]
        time.sleep(0.2)
    rows = db.execute("SELECT order_id::text, status, error_code FROM payments").fetchall()
    declined = {c["orderId"] for c in commands if str(c["amount"]).endswith(".13")}
    assert len(rows) == len(commands)
    for order_id, status, code in rows:
        assert (status, code) == (
            ("failed", "CARD_DECLINED") if order_id in declined else ("succeeded", None)
        )
    answers = _answers([first.log_path, second.log_path])
    assert len(answers) == len(commands)
    assert all(len(a) == 1 for a in answers.values()), "a payment id got two answers"
    events = [
        *kafka.read(topics.succeeded, expect=len(commands) - len(declined)),
        *kafka.read(topics.failed, expect=len(declined)),
    ]
    assert len({e.headers["ce_subject"] for e in events}) == len(commands)
    assert len(events) == len(commands)
