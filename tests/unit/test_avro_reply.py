"""The hand-written PaymentReply encoder writes exactly fastavro's bytes, or steps aside."""

from __future__ import annotations

import copy
import io
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payment_worker.adapters import avro_reply
from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.service.messages import PAYMENT_RECORD
from payment_worker.testing import reply_payment

SCHEMAS = SchemaSet()
OUTCOMES = SCHEMAS.raw["PaymentReply"]["fields"][3]["type"]["symbols"]


def fastavro_bytes(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMAS.writers["PaymentReply"], record)
    return buf.getvalue()


texts = st.text(max_size=40)  # any unicode: multi-byte UTF-8 lengths included
optional_texts = st.none() | texts
ids = st.uuids().map(str)
micros = st.integers(min_value=-(2**62), max_value=2**62)
amounts = st.decimals(
    min_value=Decimal("-9999999999999999.99"),
    max_value=Decimal("9999999999999999.99"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)


def payments_with(micros: st.SearchStrategy[int]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "id": ids,
            "orderId": ids,
            "customerId": ids,
            "reservationId": st.none() | ids,
            "amount": amounts,
            "currency": st.sampled_from(["USD", "EUR", "JPY"]),
            "paymentMethod": texts,
            "status": st.sampled_from(["succeeded", "failed", "pending"]),
            "errorCode": optional_texts,
            "errorMessage": optional_texts,
            "failureReason": optional_texts,
            "transactionId": optional_texts,
            "createdAt": micros,
            "processedAt": st.none() | micros,
            "isSimulated": st.booleans(),
            "simulatedResponse": optional_texts,
        }
    )


def replies_with(micros: st.SearchStrategy[int]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "commandId": ids,
            "correlationId": texts,
            "orderId": ids,
            "outcome": st.sampled_from(OUTCOMES),
            "success": st.booleans(),
            "httpStatus": st.integers(min_value=-(2**31), max_value=2**31 - 1),
            "errorMessage": optional_texts,
            "duplicate": st.booleans(),
            "payment": st.none() | payments_with(micros).map(lambda p: (PAYMENT_RECORD, p)),
        }
    )


replies = replies_with(micros)  # any long: the bytes are compared, not read back
readable_replies = replies_with(st.integers(0, 4_000_000_000_000_000))  # up to year 2096


def test_the_encoder_is_on_for_the_shipped_schema() -> None:
    """If this fails, payment_reply.avsc changed: update ReplyEncoder and LAYOUT_SHA256."""
    assert avro_reply.matches(SCHEMAS.raw["PaymentReply"])
    assert AvroCodec(SCHEMAS).reply_encoder is not None


def test_a_changed_schema_switches_the_encoder_off() -> None:
    changed = copy.deepcopy(SCHEMAS.raw["PaymentReply"])
    changed["fields"][7]["type"] = "int"  # duplicate: boolean -> int
    assert not avro_reply.matches(changed)


@settings(max_examples=400, deadline=None)
@given(replies)
def test_same_bytes_as_fastavro(record: dict[str, Any]) -> None:
    encoder = avro_reply.ReplyEncoder(SCHEMAS.raw["PaymentReply"])
    assert encoder.encode(record) == fastavro_bytes(record)


@settings(max_examples=100, deadline=None)
@given(readable_replies)
def test_the_codec_round_trips_what_the_encoder_wrote(record: dict[str, Any]) -> None:
    codec = AvroCodec(SCHEMAS)
    decoded = codec.decode("PaymentReply", codec.encode("PaymentReply", record))
    assert decoded["commandId"] == record["commandId"]
    assert decoded["outcome"] == record["outcome"]
    payment = record["payment"]
    if payment is None:
        assert decoded["payment"] is None
    else:
        assert decoded["payment"]["amount"] == payment[1]["amount"]
        assert decoded["payment"]["errorCode"] == payment[1]["errorCode"]


def _reply(**changes: Any) -> dict[str, Any]:
    payment = reply_payment(simulatedResponse=None)
    record = {
        "commandId": str(uuid.uuid4()),
        "correlationId": "c-1",
        "orderId": payment["orderId"],
        "outcome": "SUCCEEDED",
        "success": True,
        "httpStatus": 200,
        "errorMessage": None,
        "duplicate": False,
        "payment": (PAYMENT_RECORD, payment),
    }
    for key, value in changes.items():
        if key.startswith("payment_"):
            payment[key.removeprefix("payment_")] = value
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(
    "changes",
    [
        {"outcome": "NOT_AN_OUTCOME"},
        {"httpStatus": "200"},
        {"success": 1},
        {"payment_amount": Decimal("25.001")},  # more decimals than the scale
        {"payment_amount": 25},
        {"payment_amount": Decimal("NaN")},
        {"payment_createdAt": 1.5},
        {"payment_errorCode": 7},
    ],
)
def test_values_it_does_not_expect_go_to_fastavro(changes: dict[str, Any]) -> None:
    """The encoder steps aside (None); the codec then gives the record to fastavro, which
    writes it or raises as it always did."""
    record = _reply(**changes)
    encoder = avro_reply.ReplyEncoder(SCHEMAS.raw["PaymentReply"])
    assert encoder.encode(record) is None
    codec = AvroCodec(SCHEMAS)
    try:
        expected: bytes | type[Exception] = fastavro_bytes(record)
    except Exception as exc:  # fastavro rejects it: so must the codec
        with pytest.raises(type(exc)):
            codec.encode("PaymentReply", record)
        return
    assert codec.encode("PaymentReply", record).endswith(expected)


def test_a_payment_given_as_a_plain_dict_and_uuid_objects_are_written_too() -> None:
    record = _reply()
    plain = {**record, "payment": record["payment"][1], "commandId": uuid.UUID(record["commandId"])}
    encoder = avro_reply.ReplyEncoder(SCHEMAS.raw["PaymentReply"])
    assert encoder.encode(plain) == fastavro_bytes(plain)


@pytest.mark.parametrize(
    "changes",
    [
        {"payment_amount": Decimal("25.000")},  # a third place, even a zero: fastavro refuses
        {"payment_amount": Decimal("0E-5")},
        {"payment_amount": Decimal("1.00000000000000000000000000001")},
        {"payment_createdAt": 2**63},  # beyond a long
        {"httpStatus": 2**31},  # beyond an int
        {"correlationId": uuid.uuid4()},  # a plain string field: no UUID objects there
        {"payment_errorCode": uuid.uuid4()},
    ],
)
def test_what_fastavro_refuses_is_left_to_fastavro(changes: dict[str, Any]) -> None:
    record = _reply(**changes)
    assert avro_reply.ReplyEncoder(SCHEMAS.raw["PaymentReply"]).encode(record) is None


def test_the_union_branch_must_be_named_in_full() -> None:
    record = _reply()
    record["payment"] = ("Payment", record["payment"][1])
    assert avro_reply.ReplyEncoder(SCHEMAS.raw["PaymentReply"]).encode(record) is None


def test_the_codec_writes_replies_with_the_hand_written_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fastavro is not called for a reply (it is for the other records)."""
    from payment_worker.adapters import avro_codec

    calls: list[Any] = []
    real = avro_codec.fastavro.schemaless_writer
    monkeypatch.setattr(
        avro_codec.fastavro,
        "schemaless_writer",
        lambda *args: calls.append(args) or real(*args),
    )
    record = _reply()
    value = AvroCodec(SCHEMAS).encode("PaymentReply", record)
    assert calls == []
    assert value.endswith(fastavro_bytes(record))


def test_amounts_kept_between_replies_are_told_apart_by_their_text() -> None:
    """One encoder, many replies: an amount written before is written the same again, and an
    equal amount with a third place (25.000 == 25.00) is still left to fastavro."""
    encoder = avro_reply.ReplyEncoder(SCHEMAS.raw["PaymentReply"])
    for amount in ["25.00", "25.00", "-0.01", "25.00", "9999999999999999.99", "-0.01"]:
        record = _reply(payment_amount=Decimal(amount))
        assert encoder.encode(record) == fastavro_bytes(record)
    assert encoder.encode(_reply(payment_amount=Decimal("25.000"))) is None
    fewer_places = _reply(payment_amount=Decimal("25.0"))  # fastavro writes it as 25.00
    assert encoder.encode(fewer_places) == fastavro_bytes(fewer_places)
