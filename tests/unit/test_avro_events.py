"""The hand-written encoders of the payment events write exactly fastavro's bytes, or step
aside (for a value they do not expect, or a schema whose layout changed)."""

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

from payment_worker.adapters import avro_events
from payment_worker.adapters.avro_codec import AvroCodec, DecodeError, SchemaSet
from tests.unit.test_avro_reply import amounts, ids

SCHEMAS = SchemaSet()


def fastavro_bytes(name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMAS.writers[name], record)
    return buf.getvalue()


def encoder(name: str) -> avro_events.EventEncoder:
    found = avro_events.event_encoder(name, SCHEMAS.raw[name])
    assert found is not None, f"{name}: schema changed; update EventEncoder and its sha256"
    return found


# Long texts too: their lengths' varints are past the encoders' ready-made table of 8192. Only
# characters UTF-8 can write, as st.text's (a lone surrogate is refused: tested apart).
texts = st.text(max_size=40) | st.builds(
    lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(8100, 8300)
)
micros = st.integers(min_value=-(2**63), max_value=2**63 - 1)
common = {
    "eventId": ids,
    "commandId": ids,
    "paymentId": ids,
    "orderId": ids,
    "customerId": ids,
    "reservationId": st.none() | ids,
    "amount": amounts,
    "currency": st.sampled_from(["USD", "EUR", "JPY"]),
    "paymentMethod": texts,
}
succeeded = st.fixed_dictionaries(
    {**common, "transactionId": texts, "processedAt": micros, "status": st.just("succeeded")}
)
failed = st.fixed_dictionaries(
    {
        **common,
        "errorCode": texts,
        "errorMessage": texts,
        "failureReason": texts,
        "attemptedAt": micros,
        "status": st.just("failed"),
    }
)


def test_both_event_schemas_have_the_layout_their_encoders_write() -> None:
    """If this fails, an event schema changed: update EventEncoder and its sha256."""
    assert sorted(AvroCodec(SCHEMAS).direct) == [
        "PaymentFailed",
        "PaymentReply",
        "PaymentSucceeded",
    ]


def test_a_changed_schema_switches_its_encoder_off() -> None:
    """A field's type changed: no encoder, and the codec writes that event with fastavro."""
    changed = copy.deepcopy(SCHEMAS.raw["PaymentSucceeded"])
    changed["fields"][9]["type"] = ["null", "string"]  # transactionId made optional
    assert avro_events.event_encoder("PaymentSucceeded", changed) is None
    assert avro_events.event_encoder("PaymentFailed", SCHEMAS.raw["PaymentSucceeded"]) is None


@settings(max_examples=300, deadline=None)
@given(succeeded)
def test_a_succeeded_event_has_fastavros_bytes(record: dict[str, Any]) -> None:
    """PaymentSucceeded, any ids, amounts, texts and instants: fastavro's bytes exactly."""
    assert encoder("PaymentSucceeded").encode(record) == fastavro_bytes("PaymentSucceeded", record)


@settings(max_examples=300, deadline=None)
@given(failed)
def test_a_failed_event_has_fastavros_bytes(record: dict[str, Any]) -> None:
    """PaymentFailed likewise."""
    assert encoder("PaymentFailed").encode(record) == fastavro_bytes("PaymentFailed", record)


def _event(**changes: Any) -> dict[str, Any]:
    record = {
        "eventId": str(uuid.uuid4()),
        "commandId": str(uuid.uuid4()),
        "paymentId": str(uuid.uuid4()),
        "orderId": str(uuid.uuid4()),
        "customerId": str(uuid.uuid4()),
        "reservationId": None,
        "amount": Decimal("25.00"),
        "currency": "USD",
        "paymentMethod": "credit_card",
        "transactionId": "sim_1",
        "processedAt": 1_765_000_000_000_000,
        "status": "succeeded",
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": 25.0},  # a float is never money
        {"amount": Decimal("25.001")},  # more places than the scale
        {"amount": Decimal("NaN")},
        {"amount": Decimal("1" * 17 + ".00")},  # more digits than the precision
        {"processedAt": 2**63},  # past a long
        {"processedAt": True},
        {"currency": None},
        {"paymentId": 12},
        {"paymentMethod": "\ud800"},  # a lone surrogate: not UTF-8, and fastavro refuses it
    ],
)
def test_a_value_it_does_not_expect_goes_to_fastavro(changes: dict[str, Any]) -> None:
    """The encoder answers None; the codec then writes through fastavro, which refuses the
    record as it always did (or writes it, where fastavro accepts the value)."""
    record = _event(**changes)
    assert encoder("PaymentSucceeded").encode(record) is None
    codec = AvroCodec(SCHEMAS)
    try:
        expected = fastavro_bytes("PaymentSucceeded", record)
    except Exception as exc:
        with pytest.raises(type(exc)):
            codec.encode("PaymentSucceeded", record)
    else:
        assert codec.encode("PaymentSucceeded", record).endswith(expected)


def test_a_missing_field_goes_to_fastavro() -> None:
    """A record without one of the schema's fields: no bytes from the encoder."""
    record = _event()
    del record["transactionId"]
    assert encoder("PaymentSucceeded").encode(record) is None


@settings(max_examples=50, deadline=None)
@given(failed)
def test_the_codec_writes_an_event_as_fastavro_would(record: dict[str, Any]) -> None:
    """What the codec writes for an event (single-object framing) decodes as fastavro's
    bytes under the same framing do, or fails to decode as they do."""
    codec = AvroCodec(SCHEMAS)
    value = codec.encode("PaymentFailed", record)
    theirs = value[:10] + fastavro_bytes("PaymentFailed", record)
    assert value == theirs
    try:
        expected = codec.decode("PaymentFailed", theirs)
    except DecodeError:  # an instant past datetime's range
        with pytest.raises(DecodeError):
            codec.decode("PaymentFailed", value)
        return
    assert codec.decode("PaymentFailed", value) == expected
