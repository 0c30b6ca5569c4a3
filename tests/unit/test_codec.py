"""The Avro codec (adapters/avro_codec.py): single-object encoding, Confluent framing on a mock
registry, and DecodeError with the dead letter's reason for everything else."""

from __future__ import annotations

import asyncio
import struct
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payment_worker.adapters.avro_codec import (
    AvroCodec,
    DecodeError,
    RegistryPort,
    SchemaSet,
    registry_client,
    single_object_fingerprint,
)
from payment_worker.exceptions import RetryableError
from payment_worker.testing import command_record
from tests.scale import scale

AT = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


def _id() -> str:
    return str(uuid.uuid4())


def sample(name: str) -> dict[str, Any]:
    """A complete record of schema `name` with every field set."""
    if name == "ProcessPayment":
        return command_record(reservationId=_id(), amount=Decimal("1234.56"), requestedAt=AT)
    common = {
        "eventId": _id(),
        "commandId": _id(),
        "paymentId": _id(),
        "orderId": _id(),
        "customerId": _id(),
        "reservationId": _id(),
        "amount": Decimal("99.10"),
        "currency": "EUR",
        "paymentMethod": "credit_card",
    }
    if name == "PaymentSucceeded":
        return {
            **common,
            "transactionId": "txn_0123456789abcdef",
            "processedAt": AT,
            "status": "succeeded",
        }
    if name == "PaymentFailed":
        return {
            **common,
            "errorCode": "CARD_DECLINED",
            "errorMessage": "Your card was declined",
            "failureReason": "card_declined",
            "attemptedAt": AT,
            "status": "failed",
        }
    assert name == "PaymentReply"
    return {
        "commandId": _id(),
        "correlationId": "corr-1",
        "orderId": _id(),
        "outcome": "SUCCEEDED",
        "success": True,
        "httpStatus": 200,
        "errorMessage": None,
        "duplicate": False,
        "payment": {
            "id": _id(),
            "orderId": _id(),
            "customerId": _id(),
            "reservationId": None,
            "amount": Decimal("99.10"),
            "currency": "EUR",
            "paymentMethod": "credit_card",
            "status": "succeeded",
            "errorCode": None,
            "errorMessage": None,
            "failureReason": None,
            "transactionId": "txn_0123456789abcdef",
            "createdAt": AT,
            "processedAt": AT,
            "isSimulated": True,
            "simulatedResponse": "Success - TransactionId: txn_0123456789abcdef",
        },
    }


NAMES = ["ProcessPayment", "PaymentSucceeded", "PaymentFailed", "PaymentReply"]


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return SchemaSet()


@pytest.fixture(scope="module")
def codec(schemas: SchemaSet) -> AvroCodec:
    return AvroCodec(schemas)


def mock_registry() -> RegistryPort:
    """A RegistryPort on confluent-kafka's in-memory mock registry of its own."""
    client = AsyncSchemaRegistryClient.new_client({"url": f"mock://unit-{uuid.uuid4()}"})
    assert type(client).__name__ == "AsyncMockSchemaRegistryClient"
    return RegistryPort(client)


def loaded(codec: AvroCodec, name: str = "ProcessPayment", topic: str = "t") -> AvroCodec:
    """`codec` with the registry's id for `topic`'s subject loaded, as start-up does."""
    asyncio.run(codec.load(name, topic))
    return codec


def decoded(codec: AvroCodec, name: str, value: bytes | None) -> dict[str, Any]:
    """Decode as the pipeline does: what the value needs from the registry first."""
    asyncio.run(codec.load_value(value))
    return codec.decode(name, value)


# -- single-object encoding --------------------------------------------------------------------


def test_the_fingerprint_of_int_is_the_avro_specs_value() -> None:
    """CRC-64-AVRO of `"int"`, little-endian, is the spec's 8f5c393f1ad57572."""
    assert single_object_fingerprint('"int"') == bytes.fromhex("8f5c393f1ad57572")


@pytest.mark.parametrize("name", NAMES)
def test_single_object_round_trip(codec: AvroCodec, name: str) -> None:
    """Every schema's record decodes back equal to what was encoded."""
    record = sample(name)
    assert codec.decode(name, codec.encode(name, record)) == record


@pytest.mark.parametrize("name", NAMES)
def test_single_object_header_is_magic_and_little_endian_fingerprint(
    codec: AvroCodec, schemas: SchemaSet, name: str
) -> None:
    """Encoded bytes start with C3 01 and the CRC-64-AVRO of the schema's canonical form (LE)."""
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    canonical = to_parsing_canonical_form(schemas.writers[name])
    value = codec.encode(name, sample(name))
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def test_four_schemas_have_distinct_fingerprints(schemas: SchemaSet) -> None:
    """Each schema's fingerprint is its own, so the header says which record follows."""
    assert len(set(schemas.fingerprints.values())) == 4


def test_malformed_uuid_strings_in_a_command_decode_as_plain_strings(codec: AvroCodec) -> None:
    """A command with malformed ids decodes (strings as sent) so validation can answer it."""
    record = command_record(orderId="not-a-uuid", customerId="", commandId="42")
    decoded = codec.decode("ProcessPayment", codec.encode("ProcessPayment", record))
    assert (decoded["orderId"], decoded["customerId"], decoded["commandId"]) == (
        "not-a-uuid",
        "",
        "42",
    )


def test_decoded_amount_is_a_decimal_with_scale_two(codec: AvroCodec) -> None:
    """A command's amount comes back as the exact Decimal, never a float."""
    record = command_record(amount=Decimal("123456789012.34"))
    amount = codec.decode("ProcessPayment", codec.encode("ProcessPayment", record))["amount"]
    assert type(amount) is Decimal
    assert amount.as_tuple() == Decimal("123456789012.34").as_tuple()


def test_nested_reply_payment_amount_is_a_decimal(codec: AvroCodec) -> None:
    """The amount inside PaymentReply.payment also decodes as a Decimal."""
    decoded = codec.decode("PaymentReply", codec.encode("PaymentReply", sample("PaymentReply")))
    assert type(decoded["payment"]["amount"]) is Decimal
    assert decoded["payment"]["amount"] == Decimal("99.10")


# -- Confluent framing -------------------------------------------------------------------------


# SchemaRegistryClient.new_client() returns the mock for `mock://`, so its docstring's promise
# fails with RegistryUnavailable ("unsupported protocol 'mock://'") on the first encode.
def test_registry_client_accepts_a_mock_url(schemas: SchemaSet) -> None:
    """registry_client("mock://...") gives a working in-memory registry for tests."""
    codec = loaded(AvroCodec(schemas, registry_client(f"mock://unit-{uuid.uuid4()}")))
    record = command_record()
    assert decoded(codec, "ProcessPayment", codec.encode("ProcessPayment", record, "t")) == record


def test_confluent_framing_is_zero_and_the_registered_schema_id(schemas: SchemaSet) -> None:
    """With a registry, encode writes 0x00 then the subject's schema id, big-endian."""
    registry = mock_registry()
    codec = loaded(AvroCodec(schemas, registry), topic="cmds")
    value = codec.encode("ProcessPayment", command_record(), "cmds")
    subject = registry.subject("cmds-value")
    assert subject is not None and subject[1] is None  # our schema, registered
    assert value[:1] == b"\x00"
    assert value[1:5] == struct.pack(">I", subject[0])


def test_encoding_for_a_subject_not_loaded_is_a_bug_caught_loudly(schemas: SchemaSet) -> None:
    """encode never calls the registry itself (that would block the event loop): a subject
    nobody loaded is a programming error, not a silent network call."""
    with pytest.raises(RuntimeError, match="before load"):
        AvroCodec(schemas, mock_registry()).encode("ProcessPayment", command_record(), "x")


@pytest.mark.parametrize("name", NAMES)
def test_confluent_round_trip(schemas: SchemaSet, name: str) -> None:
    """A record in Confluent framing decodes back equal through the registry."""
    codec = loaded(AvroCodec(schemas, mock_registry()), name, "topic-x")
    record = sample(name)
    assert decoded(codec, name, codec.encode(name, record, "topic-x")) == record


def test_codec_with_registry_still_reads_single_object(schemas: SchemaSet) -> None:
    """A registry-configured worker reads single-object commands too (both framings)."""
    record = command_record()
    value = AvroCodec(schemas).encode("ProcessPayment", record)
    assert AvroCodec(schemas, mock_registry()).decode("ProcessPayment", value) == record


def test_encode_without_topic_uses_single_object_even_with_registry(schemas: SchemaSet) -> None:
    """Without a topic there is no subject, so the codec falls back to single-object."""
    value = AvroCodec(schemas, mock_registry()).encode("ProcessPayment", command_record())
    assert value[:2] == b"\xc3\x01"


class UnreachableRegistry:
    """A registry client whose every call fails as a network outage would."""

    async def register_schema(self, subject: str, schema: object) -> int:
        raise ConnectionError("registry unreachable")

    async def get_schema(self, schema_id: int) -> object:
        raise ConnectionError("registry unreachable")


# registry outage as a processing failure: handle_failure then loops until the registry is back
# and answers the command ERROR and dead-letters it (processing-error) instead of processing it.
def test_unreachable_registry_is_a_retryable_error(schemas: SchemaSet) -> None:
    """A registry outage while decoding is retryable (the worker waits), not a decode failure."""
    value = loaded(AvroCodec(schemas, mock_registry())).encode(
        "ProcessPayment", command_record(), "t"
    )
    codec = AvroCodec(schemas, RegistryPort(UnreachableRegistry()))
    with pytest.raises(Exception) as info:
        decoded(codec, "ProcessPayment", value)
    assert not isinstance(info.value, DecodeError)
    assert isinstance(info.value, RetryableError)


# -- DecodeError and its reason ----------------------------------------------------------------


def reason_of(codec: AvroCodec, value: bytes | None, name: str = "ProcessPayment") -> str:
    with pytest.raises(DecodeError) as info:
        decoded(codec, name, value)
    return info.value.reason


@pytest.mark.parametrize("value", [b"", None])
def test_empty_value_is_undecodable(codec: AvroCodec, value: bytes | None) -> None:
    """An empty (or null) value is `undecodable`."""
    assert reason_of(codec, value) == "undecodable"


def test_truncated_body_is_undecodable(codec: AvroCodec) -> None:
    """Every truncation of a valid body is `undecodable`, never a partial record."""
    value = codec.encode("ProcessPayment", command_record())
    reasons = {reason_of(codec, value[:n]) for n in range(10, len(value))}
    assert reasons == {"undecodable"}


def test_truncated_header_is_undecodable(codec: AvroCodec) -> None:
    """C3 01 followed by fewer than 8 fingerprint bytes is `undecodable`."""
    assert reason_of(codec, b"\xc3\x01\x8f\x5c") == "undecodable"


def test_unknown_fingerprint_is_unknown_schema(codec: AvroCodec) -> None:
    """A single-object header with a fingerprint of no known schema is `unknown-schema`."""
    value = codec.encode("ProcessPayment", command_record())
    assert reason_of(codec, value[:2] + b"\x00" * 8 + value[10:]) == "unknown-schema"


def test_another_schemas_fingerprint_is_unknown_schema(codec: AvroCodec) -> None:
    """A PaymentReply read where a ProcessPayment is expected is `unknown-schema`."""
    value = codec.encode("PaymentReply", sample("PaymentReply"))
    assert reason_of(codec, value, "ProcessPayment") == "unknown-schema"


def test_confluent_framing_without_registry_is_unknown_schema(schemas: SchemaSet) -> None:
    """Confluent-framed bytes reaching a codec with no registry are `unknown-schema`."""
    value = loaded(AvroCodec(schemas, mock_registry())).encode(
        "ProcessPayment", command_record(), "t"
    )
    assert reason_of(AvroCodec(schemas), value) == "unknown-schema"


def test_unknown_schema_id_on_the_registry_is_unknown_schema(schemas: SchemaSet) -> None:
    """A schema id the registry does not know is `unknown-schema`."""
    value = loaded(AvroCodec(schemas, mock_registry())).encode(
        "ProcessPayment", command_record(), "t"
    )
    forged = b"\x00" + struct.pack(">I", 4242) + value[5:]
    assert reason_of(AvroCodec(schemas, mock_registry()), forged) == "unknown-schema"


def test_trailing_bytes_are_undecodable(codec: AvroCodec) -> None:
    """A valid record followed by extra bytes is `undecodable`."""
    value = codec.encode("ProcessPayment", command_record())
    assert reason_of(codec, value + b"\x00") == "undecodable"


@pytest.mark.parametrize("first", [b"{", b"\x01", b"\xc3\x02", b"\xff"])
def test_unknown_first_byte_is_undecodable(codec: AvroCodec, first: bytes) -> None:
    """Bytes that start with neither magic (e.g. JSON) are `undecodable`."""
    assert reason_of(codec, first + b'"orderId": 1}') == "undecodable"


_SCHEMAS = SchemaSet()
_PLAIN = AvroCodec(_SCHEMAS)
_REGISTERED = loaded(AvroCodec(_SCHEMAS, mock_registry()), topic="fuzz")
_REGISTERED_ID = _REGISTERED.encode("ProcessPayment", command_record(), "fuzz")[1:5]
_HEADS = {
    "none": b"",
    "single": b"\xc3\x01" + _SCHEMAS.fingerprints["ProcessPayment"],
    "other-schema": b"\xc3\x01" + _SCHEMAS.fingerprints["PaymentReply"],
    "confluent": b"\x00" + _REGISTERED_ID,
}
_VALID_BODY = _PLAIN.encode("ProcessPayment", command_record(reservationId=_id()))[10:]


def _overwrite(at: int, patch: bytes) -> bytes:
    """A valid command body with `patch` written over it at `at`: almost-right Avro."""
    return _VALID_BODY[:at] + patch + _VALID_BODY[at + len(patch) :]


_BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(_overwrite, st.integers(0, len(_VALID_BODY)), st.binary(min_size=1, max_size=6)),
)


@settings(
    max_examples=scale(300, 1000), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(prefix=st.sampled_from(sorted(_HEADS)), body=_BODIES)
def test_decode_raises_only_decode_error(prefix: str, body: bytes) -> None:
    """On random bytes (sometimes behind a correct header) decode returns or raises DecodeError."""
    for codec in (_PLAIN, _REGISTERED):
        try:
            record = decoded(codec, "ProcessPayment", _HEADS[prefix] + body)
        except DecodeError:
            continue
        assert isinstance(record, dict)
