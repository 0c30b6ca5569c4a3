"""Replay's fast path (service/replay.py) on fakes: records sorted by what the ledger knows,
one ledger query per batch with valid command ids only, and the answers it gives again."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from payment_worker.domain.model import Outcome
from payment_worker.service.ports import RecordedAnswer
from payment_worker.service.replay import Kind, look_up, prepare_batch, replies_for
from payment_worker.testing import command_record, reply_payment
from tests.unit.test_pipeline import World

PAYMENT = reply_payment(
    id="0b6f2f3e-8a9c-4d2e-9f1a-2b3c4d5e6f70",
    orderId=None,  # filled per test
    customerId=None,
    amount=Decimal("10.50"),
)


class FakeBatchLedger:
    """recorded_answers over a dict; refuses ids that are not UUIDs, as PostgreSQL does."""

    def __init__(self, answers: dict[str, RecordedAnswer]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    async def recorded_answers(self, command_ids: list[str]) -> dict[str, RecordedAnswer]:
        self.asked.append(list(command_ids))
        for command_id in command_ids:
            uuid.UUID(command_id)  # ValueError, like `invalid input syntax for type uuid`
        return {c: self.answers[c] for c in command_ids if c in self.answers}

    async def recorded_events(self, payment_ids: list[str]) -> list[Any]:
        return []

    async def record_many(self, messages: list[Any]) -> list[Any]:
        return []


def _recorded(command: dict[str, Any], **overrides: Any) -> RecordedAnswer:
    fields: dict[str, Any] = {
        "command_id": command["commandId"],
        "order_id": command["orderId"],
        "customer_id": command["customerId"],
        "amount": command["amount"],
        "currency": command["currency"],
        "final": True,
        "outcome": Outcome.SUCCEEDED,
        "error_message": None,
        "payment_id": PAYMENT["id"],
        "payment": {
            **PAYMENT,
            "orderId": command["orderId"],
            "customerId": command["customerId"],
        },
    }
    fields.update(overrides)
    return RecordedAnswer(**fields)


async def test_batch_is_sorted_by_what_the_ledger_knows() -> None:
    """In one batch: a recorded command is RECORDED, a new one NEW, an invalid one (its id not
    even a UUID) INVALID; the ledger is asked once, for the valid commands only."""
    world = World()
    recorded, new = command_record(), command_record()
    invalid = command_record(commandId="not-a-uuid", orderId="nope")
    ledger = FakeBatchLedger({recorded["commandId"]: _recorded(recorded)})
    records = [world.inbound(c) for c in (recorded, invalid, new)]

    items = await prepare_batch(world.pipeline, records)
    await look_up(items, ledger)

    assert [i.kind for i in items] == [Kind.RECORDED, Kind.INVALID, Kind.NEW]
    assert ledger.asked == [[recorded["commandId"], new["commandId"]]]


async def test_not_final_or_other_request_is_processed_anew() -> None:
    """A ledger entry in progress, or for another amount (a CONFLICT, decided by the
    pipeline), does not answer from the ledger."""
    world = World()
    in_progress, other_amount = command_record(), command_record()
    ledger = FakeBatchLedger(
        {
            in_progress["commandId"]: _recorded(in_progress, final=False, outcome=None),
            other_amount["commandId"]: _recorded(other_amount, amount=Decimal("99.00")),
        }
    )
    items = await prepare_batch(
        world.pipeline, [world.inbound(in_progress), world.inbound(other_amount)]
    )

    await look_up(items, ledger)

    assert [i.kind for i in items] == [Kind.NEW, Kind.NEW]


async def test_a_recorded_payment_of_another_order_or_customer_is_never_answered() -> None:
    """An entry whose payment belongs to another order or customer (a ledger contradicting
    itself) is not answered from the ledger: the pipeline refuses it as the worker does,
    so replay cannot hand one customer's payment to another."""
    world = World()
    other_order, other_customer = command_record(), command_record()
    ledger = FakeBatchLedger(
        {
            other_order["commandId"]: _recorded(
                other_order,
                payment={
                    **PAYMENT,
                    "orderId": str(uuid.uuid4()),
                    "customerId": other_order["customerId"],
                },
            ),
            other_customer["commandId"]: _recorded(
                other_customer,
                payment={
                    **PAYMENT,
                    "orderId": other_customer["orderId"],
                    "customerId": str(uuid.uuid4()),
                },
            ),
        }
    )
    items = await prepare_batch(
        world.pipeline, [world.inbound(other_order), world.inbound(other_customer)]
    )

    await look_up(items, ledger)

    assert [i.kind for i in items] == [Kind.NEW, Kind.NEW]


async def test_recorded_answer_is_the_recorded_outcome_marked_duplicate() -> None:
    """The reply given again carries the recorded outcome and payment, `duplicate: true`,
    to the command's reply route."""
    world = World()
    recorded = command_record()
    ledger = FakeBatchLedger({recorded["commandId"]: _recorded(recorded)})
    items = await prepare_batch(world.pipeline, [world.inbound(recorded)])
    await look_up(items, ledger)

    [message] = replies_for(world.pipeline, items)

    reply = world.codec.decode("PaymentReply", message.value)
    assert message.topic == "payment-replies"
    assert (reply["outcome"], reply["duplicate"], reply["success"]) == ("SUCCEEDED", True, True)
    assert reply["payment"]["id"] == PAYMENT["id"]
    assert reply["payment"]["transactionId"] == "txn_0123456789abcdef"
    assert reply["commandId"] == recorded["commandId"]
