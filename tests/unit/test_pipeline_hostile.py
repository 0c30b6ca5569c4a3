"""The pipeline against hostile input, on fakes: bad headers are answered before anything is
looked up or charged, recorded answers go only to the same request however commands race
(rule I7), and invalid input never travels on with a card number in it."""

from __future__ import annotations

import struct
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from payment_worker.domain.model import Outcome, PaymentStatus
from payment_worker.domain.routing import ReplyRoute
from payment_worker.service.ports import OutboxMessage
from payment_worker.testing import command_record
from tests.unit.test_pipeline import TOPICS, World, _crash_mid_charge


@pytest.fixture
def world() -> World:
    return World()


def _only_reply(world: World) -> tuple[OutboxMessage, dict[str, Any]]:
    [message] = world.ledger.messages("reply")
    return message, world.codec.decode("PaymentReply", message.value)


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ([("reply-partition", b"99999999999")], "reply-partition"),
        ([("reply-partition", b"2147483648")], "reply-partition"),
        ([("reply-partition", "²".encode())], "reply-partition"),
        ([("kafka_replyPartition", b"\x01")], "kafka_replyPartition"),
        ([("reply-to", TOPICS.succeeded.encode())], "reply-to"),
        ([("reply-to", TOPICS.failed.encode())], "reply-to"),
        ([("reply-to", TOPICS.dlq.encode())], "reply-to"),
        ([("reply-to", TOPICS.commands.encode())], "reply-to"),
        ([("reply-to", b"no-such-topic")], "reply-to"),
        ([("reply-to", b"shim-replies"), ("reply-partition", b"4")], "reply-partition"),
        ([("kafka_replyTopic", b"no-such-topic")], "kafka_replyTopic"),
        ([("correlation-id", b"\xff\xfe")], "correlation-id"),
        ([("correlation-id", b"c" * 256)], "correlation-id"),
    ],
)
async def test_a_bad_header_is_answered_invalid_on_the_default_topic_before_any_work(
    world: World, headers: list[tuple[str, bytes]], name: str
) -> None:
    """A payable command with one bad routing header: one INVALID_REQUEST reply `Invalid
    header <name>: ...` on the default replies topic; no lookup, no charge, no payment, no
    event, nothing recorded."""
    command = world.payable()

    handled = await world.send(command, headers=headers)

    message, reply = _only_reply(world)
    assert handled.outcome is Outcome.INVALID_REQUEST
    assert (message.topic, message.partition) == (TOPICS.replies, None)
    assert reply["errorMessage"].startswith(f"Invalid header {name}: ")
    assert (reply["httpStatus"], reply["success"], reply["payment"]) == (400, False, None)
    assert (world.ordering.calls, world.gateway.calls) == (0, 0)
    assert world.ledger.payments == {} and world.ledger.entries == {}
    assert world.events() == []


async def test_a_bad_header_comes_before_a_bad_field(world: World) -> None:
    """Headers are checked before the fields: a command bad in both gets the header's answer."""
    await world.send(command_record(amount=Decimal(0)), headers=[("reply-partition", b"x")])
    _, reply = _only_reply(world)
    assert reply["errorMessage"].startswith("Invalid header reply-partition: ")


async def test_good_headers_route_the_reply_where_asked(world: World) -> None:
    """A reply topic and partition the broker has are honoured."""
    command = world.payable()
    await world.send(command, headers=[("reply-to", b"shim-replies"), ("reply-partition", b"3")])
    message, reply = _only_reply(world)
    assert (message.topic, message.partition, reply["outcome"]) == ("shim-replies", 3, "SUCCEEDED")


async def test_a_reply_to_a_callers_topic_is_encoded_under_the_default_replies_subject(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract section 3: a reply routed to a caller's topic, by a command or by the
    reconciler finishing its stale payment, is encoded under the default replies topic's
    subject, and nothing is loaded (registered) under the caller's topic's subject."""
    loaded: list[str] = []
    subjects: list[str | None] = []
    encode = world.codec.encode

    async def load(name: str, topic: str) -> None:
        loaded.append(topic)

    def recording_encode(name: str, record: dict[str, Any], topic: str | None = None) -> bytes:
        subjects.append(topic)
        return encode(name, record, topic)

    monkeypatch.setattr(world.codec, "load", load)
    monkeypatch.setattr(world.codec, "encode", recording_encode)
    route = [("reply-to", b"shim-replies")]
    await world.send(world.payable(), headers=route)
    stale = world.payable()
    world.gateway.crash_next = 1
    with pytest.raises(ConnectionResetError):
        await world.send(stale, headers=route)
    [pending] = world.ledger.order_payments(stale["orderId"])
    stored = world.ledger.entries[pending.command_id].reply_route  # type: ignore[index]
    await world.pipeline.finish_stale(pending, ReplyRoute.from_json(stored))

    replies = world.ledger.messages("reply")
    assert [m.topic for m in replies][-2:] == ["shim-replies", "shim-replies"]
    assert "shim-replies" not in loaded
    assert "shim-replies" not in subjects
    assert TOPICS.replies in subjects


async def test_spring_routing_headers_are_checked_and_honoured(world: World) -> None:
    """Spring's kafka_replyTopic and 4-byte kafka_replyPartition route the reply."""
    command = world.payable()
    await world.send(
        command,
        headers=[
            ("kafka_replyTopic", b"shim-replies"),
            ("kafka_replyPartition", struct.pack(">i", 1)),
        ],
    )
    message, _ = _only_reply(world)
    assert (message.topic, message.partition) == ("shim-replies", 1)


async def test_the_default_topic_costs_no_broker_lookup(world: World) -> None:
    """A command without routing headers is answered without asking the broker anything."""
    await world.send(world.payable(), headers=[("correlation-id", b"c-1")])
    assert world.topics.lookups == 0


async def test_an_invalid_traceparent_is_ignored(world: World) -> None:
    """A malformed traceparent neither fails the command nor travels on to what it causes."""
    command = world.payable()
    await world.send(command, headers=[("traceparent", b"00-zz-zz-01")])
    message, reply = _only_reply(world)
    assert reply["outcome"] == "SUCCEEDED"
    assert "traceparent" not in dict(message.headers)
    assert all("traceparent" not in dict(e.headers) for e in world.events())


async def test_a_recorded_answer_races_to_another_customer_as_a_conflict(world: World) -> None:
    """The same new command id at once from two customers: A's for an order A has paid (I2
    records SUCCEEDED with A's payment under that id), B's for an order that does not exist.
    B's ledger insert loses the race to A's; B is answered CONFLICT, never A's payment."""
    paid = world.payable()
    await world.send(paid)
    [a_payment] = world.ledger.order_payments(paid["orderId"])
    shared = str(uuid.uuid4())
    a_again = {**paid, "commandId": shared}
    b_command = command_record(commandId=shared)  # another customer, an unknown order

    async def a_records_first() -> None:
        await world.send(a_again)

    world.ledger.before_record = a_records_first
    handled = await world.send(b_command)

    replies = world.replies()
    b_reply = replies[-1]
    assert b_reply["orderId"] == b_command["orderId"]
    assert (handled.outcome, b_reply["outcome"], b_reply["payment"]) == (
        Outcome.CONFLICT,
        "CONFLICT",
        None,
    )
    assert str(a_payment.id) not in str(b_reply)
    a_reply = replies[-2]
    assert (a_reply["outcome"], a_reply["payment"]["id"]) == ("SUCCEEDED", str(a_payment.id))


async def test_the_reconciler_sends_no_second_reply_for_a_payment_finished_meanwhile(
    world: World,
) -> None:
    """The command came back and finished its payment while the reconciler was charging it:
    the reconciler writes nothing (the command had its one reply)."""
    command = world.payable()
    pending = await _crash_mid_charge(world, command)

    async def command_comes_back() -> None:
        await world.send(command)

    world.gateway.before_answer = command_comes_back
    handled = await world.pipeline.finish_stale(pending, ReplyRoute(TOPICS.replies, None, "c"))

    assert (handled.outcome, handled.stored) == (None, [])
    assert len(world.replies()) == 1
    assert world.ledger.payments[pending.id].status is PaymentStatus.SUCCEEDED


async def test_an_invalid_commands_echoed_ids_have_their_card_numbers_masked(
    world: World,
) -> None:
    """An invalid command echoes its ids as received, but a card number in them is masked in
    the reply's body, key, subject and correlation id."""
    card = "4111 1111 1111 1111"
    command = command_record(commandId=f"cmd {card}", orderId=f"order {card}")

    await world.send(command)

    message, reply = _only_reply(world)
    assert reply["outcome"] == "INVALID_REQUEST"
    assert (reply["commandId"], reply["orderId"]) == (
        "cmd 4111 11** **** 1111",
        "order 4111 11** **** 1111",
    )
    everything = (
        (message.key or b"") + message.value + b"".join(v or b"" for _, v in message.headers)
    )
    assert card.encode() not in everything and b"4111 1111" not in everything


async def test_an_unexpected_failure_with_bad_headers_is_answered_on_the_default_topic(
    world: World,
) -> None:
    """handle_failure routes like handle: a bad reply-to is not followed, even for ERROR."""
    record = world.inbound(world.payable(), headers=[("reply-to", TOPICS.failed.encode())])
    handled = await world.pipeline.handle_failure(record, RuntimeError("boom"))
    message, reply = _only_reply(world)
    assert (message.topic, reply["outcome"], handled.dead_letter_reason) == (
        TOPICS.replies,
        "ERROR",
        "processing-error",
    )


async def test_a_dead_letter_masks_card_numbers_and_says_so(world: World) -> None:
    """An undecodable record holding card numbers (key, value, headers) is dead-lettered with
    every card number masked and `dlq-redacted: card-number`."""
    record = world.inbound(
        value=b"\xff garbage 4111-1111-1111-1111",
        headers=[("note", b"5555 5555 5555 4444"), ("4012888888881881", b"x")],
    )
    record = replace(record, key=b"4012888888881881")

    await world.pipeline.handle(record)

    [dead] = world.ledger.messages("dead_letter")
    headers = dict(dead.headers)
    assert dead.value == b"\xff garbage 4111-11**-****-1111"
    assert dead.key == b"401288******1881"
    assert headers["note"] == b"5555 55** **** 4444"
    assert "401288******1881" in headers
    assert headers["dlq-redacted"] == b"card-number"
    assert headers["dlq-reason"] == b"undecodable"


async def test_a_dead_letter_without_card_numbers_is_kept_as_received(world: World) -> None:
    """No card number, no masking: the record's bytes and headers go to the DLQ unchanged."""
    record = world.inbound(value=b"\xffnot avro 1234", headers=[("h", b"\x00\x01"), ("n", None)])
    await world.pipeline.handle(record)
    [dead] = world.ledger.messages("dead_letter")
    assert dead.value == b"\xffnot avro 1234"
    assert dead.headers[:2] == [("h", b"\x00\x01"), ("n", None)]
    assert "dlq-redacted" not in dict(dead.headers)


async def test_an_unreadable_record_is_dead_lettered_unanswered_whatever_it_holds(
    world: World,
) -> None:
    """A record the consumer could not read whole (header names not UTF-8) is dead-lettered
    `undecodable` with the reason, even when its value is a payable command: no reply, no
    charge, its headers kept as read (names in hex)."""
    command = world.payable()
    record = replace(
        world.inbound(command, headers=[("dlq-name-hex:fffe", b"v")]),
        unreadable="header names not UTF-8 (SystemError)",
    )

    handled = await world.pipeline.handle(record)

    assert handled.dead_letter_reason == "undecodable"
    assert world.ledger.messages("reply") == [] and world.gateway.calls == 0
    [dead] = world.ledger.messages("dead_letter")
    assert dead.headers[0] == ("dlq-name-hex:fffe", b"v")
    assert dict(dead.headers)["dlq-error"] == b"header names not UTF-8 (SystemError)"
