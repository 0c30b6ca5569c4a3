"""The HTTP shim: POST /payments becomes a ProcessPayment command; the reply becomes the answer.

It never touches the database. Request-reply routing: the shim's reply consumer joins the
group PAYMENT_SHIM_GROUP on the replies topic and asks the worker to answer on one of the
partitions it owns (header reply-partition), so each shim reads only its own partitions.
"""

from payment_worker.entrypoints.shim.app import create_app, with_api_keys
from payment_worker.entrypoints.shim.handling import Shim, ShimClients
from payment_worker.entrypoints.shim.requests import (
    IDEMPOTENCY_NAMESPACE,
    MAX_BODY_BYTES,
    MAX_KEY_LENGTH,
    BadRequest,
    PaymentRequest,
    parse_payment_request,
)
from payment_worker.entrypoints.shim.responses import (
    RESPONSES,
    PaymentBody,
    PaymentResponse,
    render_json,
)
from payment_worker.entrypoints.shim.serve import serve, served_app, tls_files

__all__ = [
    "IDEMPOTENCY_NAMESPACE",
    "MAX_BODY_BYTES",
    "MAX_KEY_LENGTH",
    "RESPONSES",
    "BadRequest",
    "PaymentBody",
    "PaymentRequest",
    "PaymentResponse",
    "Shim",
    "ShimClients",
    "create_app",
    "parse_payment_request",
    "render_json",
    "serve",
    "served_app",
    "tls_files",
    "with_api_keys",
]
