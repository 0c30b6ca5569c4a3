"""The shim's answers as JSON in the contract's shape, and their description for OpenAPI."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel


class PaymentBody(BaseModel, frozen=True):
    id: str
    orderId: str
    customerId: str
    reservationId: str | None
    amount: Decimal
    currency: str
    paymentMethod: str
    status: str
    errorCode: str | None
    errorMessage: str | None
    failureReason: str | None
    transactionId: str | None
    createdAt: datetime
    processedAt: datetime | None
    isSimulated: bool
    simulatedResponse: str | None


class PaymentResponse(BaseModel, frozen=True):
    """The answer to POST /payments, whatever the status."""

    success: bool
    payment: PaymentBody | None
    errorMessage: str | None


_ERROR_RESPONSE = {"model": PaymentResponse}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PaymentResponse, "description": "SUCCEEDED: the order is paid (or was)."},
    400: {
        **_ERROR_RESPONSE,
        "description": "INVALID_REQUEST, ORDER_INVALID or RESERVATION_INVALID.",
    },
    401: {**_ERROR_RESPONSE, "description": "UNAUTHORIZED: the order belongs to another customer."},
    404: {**_ERROR_RESPONSE, "description": "ORDER_NOT_FOUND."},
    409: {
        **_ERROR_RESPONSE,
        "description": "CONFLICT: the Idempotency-Key or order was used for a different payment.",
    },
    408: {
        **_ERROR_RESPONSE,
        "description": "The body was not all sent within PAYMENT_SHIM_BODY_TIMEOUT_S.",
    },
    413: {**_ERROR_RESPONSE, "description": "The body is larger than 64 KiB."},
    422: {**_ERROR_RESPONSE, "description": "DECLINED: the gateway refused the charge."},
    500: {**_ERROR_RESPONSE, "description": "ERROR: retry with the same Idempotency-Key."},
    503: {
        **_ERROR_RESPONSE,
        "description": "Not ready, or too many requests in flight (see Retry-After).",
    },
    504: {
        **_ERROR_RESPONSE,
        "description": "No reply in time: retry with the same Idempotency-Key.",
    },
}


def render_json(value: Any) -> str:
    """Compact JSON text in which every Decimal is a number with its exact digits, a datetime
    ISO 8601 with Z for UTC and a UUID its text.

    Objects and arrays are joined here because no encoder at hand writes a Decimal as a JSON
    number without going through float: the json module refuses it, pydantic writes a string
    and FastAPI's jsonable_encoder a float. Every other value is the json module's own text."""
    if isinstance(value, dict):
        return (
            "{"
            + ",".join([f"{json.dumps(str(k))}:{render_json(v)}" for k, v in value.items()])
            + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join([render_json(v) for v in value]) + "]"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return json.dumps(value.isoformat().replace("+00:00", "Z"))
    if isinstance(value, uuid.UUID):
        return json.dumps(str(value))
    return json.dumps(value)


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        render_json(body), status_code=status, media_type="application/json", headers=headers
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The contract's body for an answer without a payment."""
    return json_response(
        status, {"success": False, "payment": None, "errorMessage": message}, headers
    )
