"""Hand-written Avro encoders for PaymentSucceeded and PaymentFailed: one event per charged
command, written like the reply (adapters/avro_reply.py) and for the same reason: fastavro
spends ~24 µs on an event, most of it per-call overhead, against ~7 here.

Each is used only while its schema has the layout it was written for (checked once, by
`event_encoder`), and only for values it expects: anything else makes `encode` return None,
and the caller falls back to fastavro, which either writes the record or says what is wrong
with it. Tests compare its bytes with fastavro's on generated events.
"""

from __future__ import annotations

from typing import Any

from payment_worker.adapters.avro_reply import (
    DirectEncoder,
    _integer,
    _optional_uuid,
    _string,
    _uuid,
    layout_sha256,
)

# sha256 of each event schema without docs and defaults: change a schema and its encoder
# switches itself off until it is brought up to date (a unit test says so).
SUCCEEDED_LAYOUT_SHA256 = "eafd5f47adaddff804cfcc092206b1edf8cdb1a82866de2cd4f41711280f3a7b"
FAILED_LAYOUT_SHA256 = "77ba07bdf49a11645b3f7ab1e2c5f9081b23ab16d1fe7cc306e76797684de285"


class EventEncoder(DirectEncoder):
    """Writes a PaymentSucceeded (or, with `failed`, a PaymentFailed) body, no framing."""

    def __init__(self, raw_schema: dict[str, Any], *, failed: bool) -> None:
        super().__init__(next(f for f in raw_schema["fields"] if f["name"] == "amount")["type"])
        self._failed = failed

    def _body(self, r: dict[str, Any]) -> bytes:
        out = bytearray(_uuid(r["eventId"]))
        out += _uuid(r["commandId"])
        out += _uuid(r["paymentId"])
        out += _uuid(r["orderId"])
        out += _uuid(r["customerId"])
        out += _optional_uuid(r["reservationId"])
        out += self._amount(r["amount"])
        out += _string(r["currency"])
        out += _string(r["paymentMethod"])
        if self._failed:
            out += _string(r["errorCode"])
            out += _string(r["errorMessage"])
            out += _string(r["failureReason"])
            out += _integer(r["attemptedAt"])
        else:
            out += _string(r["transactionId"])
            out += _integer(r["processedAt"])
        out += _string(r["status"])
        return bytes(out)


def event_encoder(name: str, raw_schema: dict[str, Any]) -> EventEncoder | None:
    """The encoder of event `name` when its schema is the one it was written for, else None."""
    layout = layout_sha256(raw_schema)
    if name == "PaymentSucceeded" and layout == SUCCEEDED_LAYOUT_SHA256:
        return EventEncoder(raw_schema, failed=False)
    if name == "PaymentFailed" and layout == FAILED_LAYOUT_SHA256:
        return EventEncoder(raw_schema, failed=True)
    return None
