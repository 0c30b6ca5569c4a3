"""A hand-written Avro encoder for PaymentReply, the record written most often.

Every command is answered with one, and replay answers tens of thousands in a row. fastavro
spends ~16 µs on a reply with its payment, most of it per-call overhead (replay's profile:
a quarter of its time); writing the same bytes directly takes a few µs.

It is used only while `schemas/payment_reply.avsc` has the layout it was written for (checked
once, by `matches`), and only for values it expects: anything else makes `encode` return None,
and the caller falls back to fastavro, which either writes the record or says what is wrong
with it. Tests compare its bytes with fastavro's on many generated replies.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from decimal import Decimal
from typing import Any

# sha256 of the reply schema without docs and defaults (see `_layout`): change the schema and
# this encoder switches itself off until it is brought up to date (a unit test says so).
LAYOUT_SHA256 = "01a2fd4d8a033b754381e312ee864e8ed7c1bd150877de17ad1c1af4df4404e2"

# Zigzag varints of 0..8191, ready made: string lengths, the HTTP status, small numbers.
_VARINTS: list[bytes] = []
for _n in range(8192):
    _z, _out = _n << 1, bytearray()
    while _z >= 0x80:
        _out.append((_z & 0x7F) | 0x80)
        _z >>= 7
    _out.append(_z)
    _VARINTS.append(bytes(_out))
_TABLE_END = len(_VARINTS)


def _layout(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _layout(v) for k, v in node.items() if k not in ("doc", "default")}
    if isinstance(node, list):
        return [_layout(v) for v in node]
    return node


def layout_sha256(raw_schema: dict[str, Any]) -> str:
    text = json.dumps(_layout(raw_schema), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def matches(raw_schema: dict[str, Any]) -> bool:
    """True when the schema is the one this encoder writes."""
    return layout_sha256(raw_schema) == LAYOUT_SHA256


class _Unsupported(Exception):
    """A value this encoder does not write: fastavro takes the record."""


_INT_RANGE = range(-(2**31), 2**31)
_LONG_RANGE = range(-(2**63), 2**63)


def _long(n: int) -> bytes:
    """Zigzag varint of an int64 (callers check the range)."""
    if 0 <= n < _TABLE_END:
        return _VARINTS[n]
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(value: Any) -> bytes:
    if type(value) is not str:
        raise _Unsupported
    data = value.encode("utf-8")
    return _long(len(data)) + data


def _uuid(value: Any) -> bytes:
    """A string with logicalType uuid: fastavro takes a uuid.UUID there too."""
    if isinstance(value, uuid.UUID):
        value = str(value)
    return _string(value)


def _optional_string(value: Any) -> bytes:
    return b"\x00" if value is None else b"\x02" + _string(value)


def _optional_uuid(value: Any) -> bytes:
    return b"\x00" if value is None else b"\x02" + _uuid(value)


def _boolean(value: Any) -> bytes:
    if value is True:
        return b"\x01"
    if value is False:
        return b"\x00"
    raise _Unsupported


def _integer(value: Any, valid: range = _LONG_RANGE) -> bytes:
    if type(value) is not int or value not in valid:
        raise _Unsupported
    return _long(value)


def _decimal(value: Any, precision: int, scale: int) -> bytes:
    """bytes/decimal as fastavro writes it: the unscaled value, big-endian two's complement,
    in as few bytes as hold it and its sign."""
    if not isinstance(value, Decimal):
        raise _Unsupported
    _, digits, exponent = value.as_tuple()
    # fastavro's own checks (and its errors): no more places than the scale, even zeros; no
    # more digits than the precision; no NaN or infinity.
    if not isinstance(exponent, int) or exponent + scale < 0 or len(digits) > precision:
        raise _Unsupported
    unscaled = int(value.scaleb(scale))  # exact: only the exponent moves
    data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    return _long(len(data)) + data


class DirectEncoder:
    """What a hand-written encoder of one record shares (this one's and the events' in
    avro_events.py): `encode` gives the body, or None for a value it does not write; `_amount`
    writes a bytes/decimal amount of the given precision and scale."""

    def __init__(self, amount: dict[str, Any]) -> None:
        self._precision = int(amount["precision"])
        self._scale = int(amount.get("scale", 0))
        self._amounts: dict[str, bytes] = {}

    def encode(self, record: dict[str, Any]) -> bytes | None:
        """The body (no framing), or None for a record with a value this encoder does not
        write."""
        try:
            return self._body(record)
        except (_Unsupported, KeyError, ValueError, ArithmeticError):
            return None

    def _body(self, r: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _amount(self, value: Any) -> bytes:
        """The amount's bytes, kept per text of the amount (a few distinct prices recur);
        the text tells 25.00 from 25.000, which encode differently (the latter not at all)."""
        if type(value) is not Decimal:
            raise _Unsupported
        key = str(value)
        found = self._amounts.get(key)
        if found is None:
            found = _decimal(value, self._precision, self._scale)
            if len(self._amounts) >= 4096:
                self._amounts.clear()
            self._amounts[key] = found
        return found


class ReplyEncoder(DirectEncoder):
    """Writes a PaymentReply body (no framing) for the schema it was checked against."""

    def __init__(self, raw_schema: dict[str, Any]) -> None:
        fields = {f["name"]: f for f in raw_schema["fields"]}
        symbols = fields["outcome"]["type"]["symbols"]
        self._outcomes = {symbol: _long(i) for i, symbol in enumerate(symbols)}
        payment = next(t for t in fields["payment"]["type"] if isinstance(t, dict))
        namespace = payment.get("namespace") or raw_schema.get("namespace")
        self._payment_name = f"{namespace}.{payment['name']}" if namespace else payment["name"]
        super().__init__(next(f for f in payment["fields"] if f["name"] == "amount")["type"])

    def _body(self, r: dict[str, Any]) -> bytes:
        outcome = self._outcomes.get(r["outcome"])
        if outcome is None:
            raise _Unsupported
        out = bytearray(_uuid(r["commandId"]))
        out += _string(r["correlationId"])
        out += _uuid(r["orderId"])
        out += outcome
        out += _boolean(r["success"])
        out += _integer(r["httpStatus"], _INT_RANGE)
        out += _optional_string(r["errorMessage"])
        out += _boolean(r["duplicate"])
        payment = r["payment"]
        if payment is None:
            out += b"\x00"
            return bytes(out)
        if isinstance(payment, tuple):  # fastavro's union notation: (branch name, record)
            if len(payment) != 2 or payment[0] != self._payment_name:
                raise _Unsupported
            payment = payment[1]
        if not isinstance(payment, dict):
            raise _Unsupported
        out += b"\x02"
        out += _uuid(payment["id"])
        out += _uuid(payment["orderId"])
        out += _uuid(payment["customerId"])
        out += _optional_uuid(payment["reservationId"])
        out += self._amount(payment["amount"])
        out += _string(payment["currency"])
        out += _string(payment["paymentMethod"])
        out += _string(payment["status"])
        out += _optional_string(payment["errorCode"])
        out += _optional_string(payment["errorMessage"])
        out += _optional_string(payment["failureReason"])
        out += _optional_string(payment["transactionId"])
        out += _integer(payment["createdAt"])
        processed = payment["processedAt"]
        out += b"\x00" if processed is None else b"\x02" + _integer(processed)
        out += _boolean(payment["isSimulated"])
        out += _optional_string(payment["simulatedResponse"])
        return bytes(out)
