"""The HTTP shim: POST /payments becomes a ProcessPayment command; the reply becomes the answer.

It never touches the database. Request-reply routing: the shim's reply consumer joins the
group PAYMENT_SHIM_GROUP on the replies topic and asks the worker to answer on one of the
partitions it owns (header reply-partition), so each shim reads only its own partitions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from confluent_kafka import KafkaException
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from payment_worker.adapters.avro_codec import AvroCodec, DecodeError
from payment_worker.adapters.reply_listener import CommandProducer, ReplyListener
from payment_worker.config import Settings
from payment_worker.domain.ids import random_uuid
from payment_worker.domain.model import Command
from payment_worker.domain.validation import ValidationFailed, validate_command
from payment_worker.exceptions import ConfigurationError

log = structlog.get_logger("payment_worker.shim")

IDEMPOTENCY_NAMESPACE = uuid.UUID("2b5e8f1c-7d44-4f0e-9a6b-3c1d2e4f5a60")
MAX_BODY_BYTES = 64 * 1024
MAX_KEY_LENGTH = 255

REQUESTS = Counter("payment_shim_requests_total", "POST /payments answered, by status.", ["status"])
LATENCY = Histogram(
    "payment_shim_request_seconds",
    "POST /payments latency.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 15, 30),
)
IN_FLIGHT = Gauge(
    "payment_shim_in_flight", "POST /payments being handled (body read or reply awaited)."
)
TIMEOUTS = Counter("payment_shim_reply_timeouts_total", "Requests answered 504.")
WAITING = Gauge("payment_shim_waiting_replies", "Correlation ids waiting for a reply.")
DROPPED = Gauge("payment_shim_dropped_replies", "Replies received that nobody waited for.")


class PaymentRequest(BaseModel):
    """The C# PaymentRequest; property names are matched case-insensitively."""

    orderId: uuid.UUID
    customerId: uuid.UUID
    reservationId: uuid.UUID | None = None
    amount: Decimal = Field(gt=0, examples=["25.00"])
    currency: str = "USD"
    paymentMethod: str = "credit_card"


class PaymentBody(BaseModel):
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


class PaymentResponse(BaseModel):
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


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"Invalid JSON: {name} is not a number")


def _as_id(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _as_amount(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, bool):
        raise ValidationFailed("Amount must be greater than zero")
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            raise ValidationFailed("Amount must be greater than zero") from None
        if not parsed.is_finite():
            raise ValidationFailed("Amount must be greater than zero")
        return parsed
    raise ValidationFailed("Amount must be greater than zero")


def parse_payment_request(body: bytes, command_id: str) -> Command:
    """The command a request body asks for; BadRequest/ValidationFailed with the message."""
    if not body or not body.strip():
        raise BadRequest("Payment request is required")
    try:
        data = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest("Invalid JSON in the request body") from None
    if not isinstance(data, dict):
        raise BadRequest("Payment request must be a JSON object")
    fields = {str(k).lower(): v for k, v in data.items()}
    reservation = fields.get("reservationid")
    currency = fields.get("currency")
    method = fields.get("paymentmethod")
    command = Command(
        command_id=command_id,
        order_id=_as_id(fields.get("orderid")),
        customer_id=_as_id(fields.get("customerid")),
        reservation_id=None
        if reservation is None
        else (reservation if isinstance(reservation, str) else "invalid"),
        amount=Decimal(0),
        currency="USD" if currency is None else (currency if isinstance(currency, str) else ""),
        payment_method="credit_card"
        if method is None
        else (method if isinstance(method, str) else ""),
        requested_at=datetime.now(UTC),
    )
    # Checked in the contract's order: ids first, then the amount, then the stricter rules.
    try:
        amount = _as_amount(fields.get("amount"))
    except ValidationFailed:
        validate_command(command)  # an id message comes first when an id is also wrong
        raise
    command = Command(**{**_fields(command), "amount": amount})
    validate_command(command)
    return command


def _fields(command: Command) -> dict[str, Any]:
    return {name: getattr(command, name) for name in Command.__slots__}


def render_json(body: Any) -> str:
    """JSON text in which every Decimal is a number with its exact digits (never via float)."""
    numbers: dict[str, str] = {}

    def prepare(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: prepare(v) for k, v in value.items()}
        if isinstance(value, list):
            return [prepare(v) for v in value]
        if isinstance(value, Decimal):
            marker = f"__decimal_{len(numbers)}_{random_uuid()}__"
            numbers[marker] = format(value, "f")
            return marker
        if isinstance(value, datetime):
            return value.isoformat().replace("+00:00", "Z")
        if isinstance(value, uuid.UUID):
            return str(value)
        return value

    text = json.dumps(prepare(body), separators=(",", ":"))
    for marker, number in numbers.items():
        text = text.replace(f'"{marker}"', number)
    return text


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        render_json(body), status_code=status, media_type="application/json", headers=headers
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"success": False, "payment": None, "errorMessage": message}, headers)


class Shim:
    """The state of one shim process."""

    def __init__(self, settings: Settings, codec: AvroCodec, *, max_in_flight: int = 2000) -> None:
        self.settings = settings
        self.codec = codec
        self.loop: asyncio.AbstractEventLoop | None = None
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        common = settings.kafka_common()
        self.producer = CommandProducer({**common, "client.id": "payment-shim"})
        self.listener = ReplyListener(
            {
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                **common,
                "group.id": settings.shim_group,
                "client.id": "payment-shim-replies",
            },
            settings.topic_replies,
            self._decode_reply,
        )

    def _decode_reply(self, value: bytes | None) -> dict[str, Any] | None:
        """On the listener's thread: a writer schema not seen yet is fetched by the event
        loop's registry client, this thread waiting for it."""
        try:
            if self.codec.writer_id(value) is not None and self.loop is not None:
                load = asyncio.run_coroutine_threadsafe(self.codec.load_value(value), self.loop)
                load.result(timeout=10)
            return self.codec.decode("PaymentReply", value)
        except DecodeError:
            return None
        except Exception as exc:  # the registry unreachable: the caller gets a 504 and retries
            log.warning("reply_undecoded", error=f"{type(exc).__name__}: {exc}")
            return None

    async def handle(self, request: Request) -> Response:
        if not self.listener.ready:
            return _error(
                503, f"Service not ready: {self.listener.not_ready_reason}", {"Retry-After": "1"}
            )
        if self.in_flight >= self.max_in_flight:
            return _error(503, "Too many payments in flight; retry shortly", {"Retry-After": "1"})
        # The slot is taken before the first await (reading the body): checking here and counting
        # later let every request that arrived together pass the check before any was counted.
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            return await self._admitted(request)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()

    async def _admitted(self, request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _error(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
        key = request.headers.get("idempotency-key")
        if key is not None and (not key.strip() or len(key) > MAX_KEY_LENGTH):
            return _error(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        command_id = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key)) if key else random_uuid()
        try:
            command = parse_payment_request(body, command_id)
        except (BadRequest, ValidationFailed) as exc:
            return _error(getattr(exc, "status", 400), str(exc))
        return await self._request_reply(command)

    async def _request_reply(self, command: Command) -> Response:
        correlation = random_uuid()
        partition = self.listener.reply_partition()
        headers = [
            ("correlation-id", correlation.encode()),
            ("reply-to", self.settings.topic_replies.encode()),
        ]
        if partition is not None:
            headers.append(("reply-partition", str(partition).encode()))
        record = {
            "commandId": command.command_id,
            "orderId": command.order_id.lower(),
            "customerId": command.customer_id.lower(),
            "reservationId": command.reservation_id.lower() if command.reservation_id else None,
            "amount": command.amount.quantize(Decimal("0.01")),
            "currency": command.currency.strip().upper(),
            "paymentMethod": command.payment_method,
            "requestedAt": command.requested_at,
        }
        value = self.codec.encode("ProcessPayment", record, self.settings.topic_commands)
        future = self.listener.expect(correlation)
        timeout = self.settings.shim_reply_timeout_s
        try:
            try:
                await asyncio.wait_for(
                    self.producer.send(
                        self.settings.topic_commands,
                        command.order_id.lower().encode(),
                        value,
                        headers,
                    ),
                    timeout,
                )
            except (KafkaException, TimeoutError) as exc:
                log.warning("command_not_sent", error=str(exc), order_id=record["orderId"])
                return _error(
                    503,
                    "Payment service unavailable: the command could not be "
                    "queued; retry with the same Idempotency-Key",
                    {"Retry-After": "1"},
                )
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                TIMEOUTS.inc()
                return _error(
                    504,
                    f"No reply from the payment worker within {timeout:g}s. "
                    "The payment may still complete: retry with the same "
                    "Idempotency-Key (or the same order id) to get its outcome.",
                )
        finally:
            self.listener.forget(correlation)
        return _json(
            int(reply["httpStatus"]),
            {
                "success": bool(reply["success"]),
                "payment": reply.get("payment"),
                "errorMessage": reply.get("errorMessage"),
            },
        )


def create_app(settings: Settings, codec: AvroCodec) -> FastAPI:
    shim = Shim(settings, codec, max_in_flight=settings.shim_max_in_flight)
    WAITING.set_function(lambda: shim.listener.waiting)
    DROPPED.set_function(lambda: shim.listener.dropped)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        shim.loop = asyncio.get_running_loop()
        shim.producer.start()
        shim.listener.start()
        log.info("shim_started", port=settings.shim_port, reply_topic=settings.topic_replies)
        yield
        shim.listener.stop()
        await asyncio.to_thread(shim.producer.stop)

    app = FastAPI(
        title="payment-worker shim",
        version="1.0.0",
        description="POST /payments over Kafka request-reply (see CONTRACT.md section 6).",
        lifespan=lifespan,
    )
    app.state.shim = shim

    @app.post(
        "/payments",
        responses=RESPONSES,
        response_model=PaymentResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": PaymentRequest.model_json_schema(),
                    }
                },
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": MAX_KEY_LENGTH},
                    "description": "Retries with the same key are the same command and get the "
                    "same answer; the same key with another body is a 409.",
                }
            ],
        },
    )
    async def post_payment(request: Request) -> Response:
        return await _answer(shim, request)

    @app.get("/health")
    async def health() -> Response:
        if shim.listener.ready:
            return _json(200, {"status": "Healthy", "service": "Payment"})
        return _json(
            503,
            {
                "status": "Unhealthy",
                "service": "Payment",
                "reason": shim.listener.not_ready_reason,
            },
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _answer(shim: Shim, request: Request) -> Response:
    started = time.perf_counter()
    try:
        response = await shim.handle(request)
    except Exception as exc:  # a bug: a clear 500 in the contract's shape, the shim keeps going
        log.exception("shim_request_failed")
        response = _error(500, f"Payment processing error: unexpected {type(exc).__name__}")
    REQUESTS.labels(str(response.status_code)).inc()
    LATENCY.observe(time.perf_counter() - started)
    return response


def with_fast_path(app: FastAPI) -> ASGIApp:
    """POST /payments straight to the shim; everything else (health, metrics, the OpenAPI
    document, lifespan) through FastAPI. FastAPI's middleware stack and routing cost about a
    third of the shim's CPU per request; the route stays declared there for the document."""
    shim: Shim = app.state.shim

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/payments" and scope["method"] == "POST":
            response = await _answer(shim, Request(scope, receive))
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return asgi


def with_api_keys(app: ASGIApp, digests: list[bytes], *, metrics_public: bool) -> ASGIApp:
    """Callers must send one of the keys as `Authorization: Bearer <key>`, except on /health
    (and /metrics when it is public). Keys are compared as SHA-256 digests, each with
    hmac.compare_digest and all of them every time, so the time taken says nothing of a key."""
    if not digests:
        return app
    open_paths = {"/health", "/metrics"} if metrics_public else {"/health"}
    refusal = _error(
        401,
        "Unauthorized: send an API key as 'Authorization: Bearer <key>'",
        {"WWW-Authenticate": 'Bearer realm="payment-shim"'},
    )

    def authorized(scope: Scope) -> bool:
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        digest = hashlib.sha256(presented).digest()
        matched = False
        for known in digests:
            matched |= hmac.compare_digest(digest, known)
        return matched and bool(presented)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in open_paths or authorized(scope):
            await app(scope, receive, send)
            return
        if scope["path"] == "/payments":
            REQUESTS.labels("401").inc()
        await refusal(scope, receive, send)

    return asgi


def tls_files(settings: Settings) -> tuple[str, str] | None:
    """The shim's certificate and key files, checked now: a bad pair is one start-up line."""
    if settings.shim_tls_cert_file is None or settings.shim_tls_key_file is None:
        return None
    cert, key = str(settings.shim_tls_cert_file), str(settings.shim_tls_key_file)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            "PAYMENT_SHIM_TLS_CERT_FILE / PAYMENT_SHIM_TLS_KEY_FILE: not a PEM certificate"
            f" and its private key ({exc})"
        ) from None
    return cert, key


async def serve(settings: Settings, the_codec: AvroCodec) -> None:
    """The shim until SIGTERM: the registry's schema for commands loaded (waited for), then
    uvicorn on PAYMENT_SHIM_PORT, over TLS when certificate files are set. The codec is the
    composition root's; it is closed here."""
    import uvicorn

    from payment_worker.entrypoints.startup import load_schemas

    tls = tls_files(settings)
    try:
        if not await load_schemas(
            settings, lambda: the_codec.load("ProcessPayment", settings.topic_commands)
        ):
            return
        app = create_app(settings, the_codec)
        guarded = with_api_keys(
            with_fast_path(app),
            settings.api_key_digests(),
            metrics_public=settings.shim_metrics_public,
        )
        config = uvicorn.Config(
            guarded,
            host="0.0.0.0",  # noqa: S104  (a service port, reached from other hosts)
            port=settings.shim_port,
            log_level="warning",
            log_config=None,  # uvicorn's lines go through our handler (logs.py)
            access_log=False,
            timeout_keep_alive=75,  # callers' pools keep connections; do not cut them at 5 s
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        log.info(
            "shim_listening",
            port=settings.shim_port,
            tls=bool(tls),
            api_keys=len(settings.shim_api_keys),
        )
        await uvicorn.Server(config).serve()
    finally:
        await the_codec.close()
