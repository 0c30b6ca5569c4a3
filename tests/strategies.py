"""Hypothesis strategies for hostile input: card numbers in many spellings, and Kafka records
as any producer could write them (random headers, random or broken bodies)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet

# Test card numbers (every one passes Luhn), 13 to 19 digits.
CARD_NUMBERS = [
    "4111111111111111",
    "4012888888881881",
    "5555555555554444",
    "5105105105105100",
    "378282246310005",
    "371449635398431",
    "6011111111111117",
    "30569309025904",
    "3530111333300000",
    "4222222222222",
    "6011000990139424",
    "4000000000000000006",
    "6759649826438453",
]

# Each digit in forms whose NFKC normalisation is that digit (or which are decimal digits of
# another script): ASCII, full-width, mathematical bold, superscript, Arabic-Indic.
_DIGIT_FORMS = [
    "0123456789",
    "０１２３４５６７８９",
    "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",
    "⁰¹²³⁴⁵⁶⁷⁸⁹",
    "٠١٢٣٤٥٦٧٨٩",
]
# Separators and their compatibility forms (no-break space, ideographic space, full-width).
_SEPARATORS = [" ", ".", "-", "_", "/", "\u00a0", "\u3000", "－", "．", "／", "＿"]


@st.composite
def spell_card_number(draw: st.DrawFn, digits: str) -> str:
    """`digits` written as a person or a hostile producer might: in groups, with one to three
    separators between them, each digit in one of several Unicode forms."""
    forms = draw(st.lists(st.sampled_from(_DIGIT_FORMS), min_size=1, max_size=2))
    out: list[str] = []
    i = 0
    while i < len(digits):
        size = draw(st.integers(min_value=1, max_value=len(digits) - i))
        group = digits[i : i + size]
        out.append("".join(draw(st.sampled_from(forms))[int(d)] for d in group))
        i += size
        if i < len(digits):
            out.append(
                "".join(draw(st.lists(st.sampled_from(_SEPARATORS), min_size=1, max_size=3)))
            )
    return "".join(out)


def digits_only(text: str) -> str:
    """The ASCII digits `text` holds once normalised (NFKC, other scripts' digits as ASCII)."""
    import unicodedata

    out = []
    for char in unicodedata.normalize("NFKC", text):
        value = unicodedata.decimal(char, None)
        if value is not None:
            out.append(str(value))
    return "".join(out)


@dataclass
class Hostile:
    """One generated record and what the test expects of it."""

    kind: str  # valid-avro | truncated | other-schema | unknown-fingerprint | confluent | bytes
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    command: dict[str, Any] | None = None  # the fields, for a decodable command
    cards: list[str] = field(default_factory=list)  # card numbers (digits) put anywhere in it
    spelled: list[str] = field(default_factory=list)  # ... and as they were written

    @property
    def decodable(self) -> bool:
        return self.kind == "valid-avro"


_CODEC = AvroCodec(SchemaSet())
_ROUTING = [
    "correlation-id",
    "reply-to",
    "reply-partition",
    "traceparent",
    "kafka_correlationId",
    "kafka_replyTopic",
    "kafka_replyPartition",
]


def _text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


@st.composite
def _card(draw: st.DrawFn, case: Hostile) -> str:
    digits = draw(st.sampled_from(CARD_NUMBERS))
    spelled = draw(spell_card_number(digits))
    case.cards.append(digits)
    case.spelled.append(spelled)
    return spelled


@st.composite
def _maybe_card(draw: st.DrawFn, case: Hostile, plain: st.SearchStrategy[str]) -> str:
    """A field's text: usually `plain`, sometimes a card number inside other text."""
    if draw(st.integers(0, 5)) == 0:
        return draw(_text(6)) + draw(_card(case)) + draw(_text(6))
    return draw(plain)


@st.composite
def _header_value(draw: st.DrawFn, name: str, topics: dict[str, Any], case: Hostile) -> bytes:
    """A routing header's value: plausible, wrong in one of the ways the contract names, or
    random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=draw(st.sampled_from([8, 300, 20_000]))))
    if name in ("reply-to", "kafka_replyTopic"):
        category = draw(st.sampled_from(["reply", "reply", "own", "missing", "illegal"]))
        if category == "reply":
            return str(draw(st.sampled_from(topics["reply_topics"]))).encode()
        if category == "own":
            return str(draw(st.sampled_from(topics["own"]))).encode()
        if category == "missing":
            return f"no-such-topic-{draw(st.integers(0, 10**6))}".encode()
        return draw(st.sampled_from([".", "..", "bad topic", "x" * 250, "é"])).encode()
    if name == "reply-partition":
        return draw(
            st.sampled_from(["0", "1", "7", "2147483647", "2147483648", "99999999999", "²", "-1"])
        ).encode()
    if name == "kafka_replyPartition":
        return draw(
            st.sampled_from([struct.pack(">i", 0), struct.pack(">i", 1), struct.pack(">i", -1)])
            | st.binary(max_size=6)
        )
    if name == "traceparent":
        return draw(
            st.sampled_from(
                [
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                    "garbage",
                ]
            )
        ).encode()
    # correlation-id, kafka_correlationId: text, sometimes long, sometimes a card number
    return draw(_maybe_card(case, _text(300))).encode()


@st.composite
def hostile_record(draw: st.DrawFn, serial: int, topics: dict[str, Any]) -> Hostile:
    """A record any producer of the commands topic could write. `serial` makes its command id
    unique; `topics` names the reply topics, the worker's own topics and the known orders
    (`orders`: dicts of orderId, customerId, amount) so that some commands pay for real."""
    case = Hostile("", None, None, [])
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 4]))):
        if draw(st.booleans()):
            name = draw(st.sampled_from(_ROUTING))
            value: bytes | None = draw(_header_value(name, topics, case))
            repeats = draw(st.sampled_from([1, 1, 1, 2]))
            for _ in range(repeats):
                headers.append((name, value))
                if repeats > 1 and draw(st.booleans()):
                    value = draw(_header_value(name, topics, case))
        else:
            headers.append((draw(_text(20)), draw(st.none() | st.binary(max_size=2000))))
    case.headers = headers

    order = draw(st.sampled_from(topics["orders"])) if draw(st.integers(0, 2)) > 0 else None
    command_id = draw(st.sampled_from(["canonical", "upper", "braced", "hex", "garbage"]))
    base = uuid.UUID(int=(serial << 64) | draw(st.integers(0, 2**64 - 1)), version=4)
    command_text = {
        "canonical": str(base),
        "upper": str(base).upper(),
        "braced": "{" + str(base) + "}",
        "hex": base.hex,
        "garbage": f"not-a-uuid-{serial}",
    }[command_id]
    fields: dict[str, Any] = {
        "commandId": command_text,
        "orderId": order["orderId"]
        if order
        else draw(_maybe_card(case, st.sampled_from([str(uuid.uuid4()), "", "123", "o" * 40]))),
        "customerId": order["customerId"]
        if order and draw(st.booleans())
        else draw(_maybe_card(case, st.sampled_from([str(uuid.uuid4()), "nobody"]))),
        "reservationId": draw(st.none() | st.sampled_from([str(uuid.uuid4()), "r"])),
        "amount": (
            Decimal(order["amount"])
            if order and draw(st.booleans())
            else draw(
                st.decimals(
                    min_value=Decimal("-10"),
                    max_value=Decimal("9999999999999999.99"),
                    places=2,
                    allow_nan=False,
                    allow_infinity=False,
                )
            )
        ),
        "currency": draw(st.sampled_from(["USD", "usd", "JPY", "EUR", "XXX", ""]) | _text(5)),
        "paymentMethod": draw(_maybe_card(case, st.sampled_from(["credit_card", ""]) | _text(60))),
        "requestedAt": datetime(2026, 1, 1, tzinfo=UTC),
    }
    if order is not None and draw(st.integers(0, 2)) > 0:
        # A command that could pay: the order's customer, amount and currency, a clean method
        # (the headers stay whatever was drawn).
        fields.update(
            customerId=order["customerId"],
            amount=Decimal(order["amount"]),
            currency="USD",
            paymentMethod="credit_card",
            reservationId=None,
        )
    body = _CODEC.encode("ProcessPayment", fields)
    kind = draw(
        st.sampled_from(
            ["valid-avro"] * 6
            + ["truncated", "other-schema", "unknown-fingerprint", "confluent", "bytes"]
        )
    )
    case.kind = kind
    if kind == "valid-avro":
        case.command = fields
        case.value = body
    elif kind == "truncated":
        case.value = body[: draw(st.integers(0, len(body) - 1))]
    elif kind == "other-schema":
        case.value = _CODEC.encode(
            "PaymentFailed",
            {
                "eventId": str(uuid.uuid4()),
                "commandId": command_text,
                "paymentId": str(uuid.uuid4()),
                "orderId": str(uuid.uuid4()),
                "customerId": str(uuid.uuid4()),
                "reservationId": None,
                "amount": Decimal("1.00"),
                "currency": "USD",
                "paymentMethod": fields["paymentMethod"],
                "errorCode": "X",
                "errorMessage": "x",
                "failureReason": "x",
                "attemptedAt": datetime(2026, 1, 1, tzinfo=UTC),
                "status": "failed",
            },
        )
    elif kind == "unknown-fingerprint":
        case.value = b"\xc3\x01" + draw(st.binary(min_size=8, max_size=8)) + body[10:]
    elif kind == "confluent":
        case.value = b"\x00" + struct.pack(">I", draw(st.integers(0, 2**32 - 1))) + body[10:]
    else:
        case.value = draw(st.none() | st.binary(max_size=300))
        if case.value and case.value[:2] == b"\xc3\x01":
            case.value = b"\xff" + case.value
    case.key = draw(
        st.sampled_from([str(fields["orderId"]).encode("utf-8", "replace"), None])
        | st.binary(max_size=40)
    )
    return case
