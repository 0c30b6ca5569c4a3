"""One shim process's request-reply: a ProcessPayment command out on Kafka, its PaymentReply
awaited on a reply partition this shim owns, and the answer to the caller made of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from confluent_kafka import KafkaException
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from payment_worker import tracing
from payment_worker.adapters.avro_codec import AvroCodec, DecodeError
from payment_worker.config import Settings
from payment_worker.domain.ids import random_uuid
from payment_worker.domain.model import Command
from payment_worker.domain.routing import trace_headers
from payment_worker.domain.validation import ValidationFailed
from payment_worker.entrypoints.shim.metrics import IN_FLIGHT, TIMEOUTS, TOO_SLOW
from payment_worker.entrypoints.shim.requests import (
    IDEMPOTENCY_NAMESPACE,
    MAX_BODY_BYTES,
    MAX_KEY_LENGTH,
    BadRequest,
    parse_payment_request,
)
from payment_worker.entrypoints.shim.responses import error_response, json_response
from payment_worker.service.ports import CommandSenderPort, ReplyWaiterPort

log = structlog.get_logger("payment_worker.shim")

# Where the API-key door leaves the SHA-256 digest of the key a request presented.
CALLER_SCOPE_KEY = "payment_worker.api_key_digest"

ReplyDecoder = Callable[[bytes | None], dict[str, Any] | None]


@dataclass(frozen=True)
class ShimClients:
    """The shim's Kafka clients, built by the composition root: the command producer, and
    the reply listener made once the shim can give it the decoder of replies."""

    producer: CommandSenderPort
    listen: Callable[[ReplyDecoder], ReplyWaiterPort]


class Shim:
    """The state of one shim process."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        clients: ShimClients,
        *,
        max_in_flight: int = 2000,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.loop: asyncio.AbstractEventLoop | None = None
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.producer = clients.producer
        self.listener = clients.listen(self._decode_reply)

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
        """One POST /payments, one server span continuing the caller's W3C trace context."""
        incoming = trace_headers(
            {
                name: [v.encode("latin-1") for v in request.headers.getlist(name)]
                for name in ("traceparent", "tracestate")
                if name in request.headers
            }
        )
        with tracing.span(
            "POST /payments",
            tracing.SERVER,
            parent=tracing.parent_from(*incoming) if tracing.active() else None,
            attributes={"http.request.method": "POST", "http.route": "/payments"},
        ):
            response = await self._handle(request, incoming)
            tracing.annotate({"http.response.status_code": response.status_code})
            return response

    async def _handle(self, request: Request, incoming: tuple[str | None, str | None]) -> Response:
        if not self.listener.ready:
            return error_response(
                503, f"Service not ready: {self.listener.not_ready_reason}", {"Retry-After": "1"}
            )
        # The body is read, within a deadline, before a slot is taken: a slow upload would
        # otherwise hold its slot as long as it liked, and a few thousand of them turn every
        # other caller away with 503.
        body = await read_body(request, self.settings.shim_body_timeout_s)
        if isinstance(body, Response):
            return body
        # Checked and counted with no await between them: requests that arrive together
        # must not all pass the check before any of them is counted.
        if self.in_flight >= self.max_in_flight:
            return error_response(
                503, "Too many payments in flight; retry shortly", {"Retry-After": "1"}
            )
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            return await self._admitted(request, body, incoming)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()

    async def _admitted(
        self, request: Request, body: bytes, incoming: tuple[str | None, str | None]
    ) -> Response:
        key = request.headers.get("idempotency-key")
        if key is not None and (not key.strip() or len(key) > MAX_KEY_LENGTH):
            return error_response(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        if key:
            caller = request.scope.get(CALLER_SCOPE_KEY)
            if self.settings.shim_api_keys and not isinstance(caller, bytes):
                # Fail closed: with keys configured, a request that reached here without a
                # caller identity must not share the global mapping of keys to commands.
                return error_response(401, "Unauthorized: no API key identified this request")
            command_id = idempotent_command_id(key, caller if isinstance(caller, bytes) else None)
        else:
            command_id = random_uuid()
        try:
            command = parse_payment_request(body, command_id)
        except (BadRequest, ValidationFailed) as exc:
            return error_response(getattr(exc, "status", 400), str(exc))
        tracing.annotate({"payment.command_id": command_id, "payment.order_id": command.order_id})
        return await self._request_reply(command, incoming)

    async def _request_reply(
        self, command: Command, incoming: tuple[str | None, str | None] = (None, None)
    ) -> Response:
        # From the CSPRNG: the correlation id is what the reply is routed by, and a caller
        # able to predict another's could aim a reply of its own at it.
        correlation = random_uuid()
        partition = self.listener.reply_partition()
        headers = [
            ("correlation-id", correlation.encode()),
            ("reply-to", self.settings.topic_replies.encode()),
        ]
        if partition is not None:
            headers.append(("reply-partition", str(partition).encode()))
        traceparent, tracestate = tracing.outgoing(*incoming)  # the server span's, or as it came
        if traceparent:
            headers.append(("traceparent", traceparent.encode()))
            if tracestate:
                headers.append(("tracestate", tracestate.encode()))
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
        future = self.listener.expect(correlation, command.command_id, command.order_id.lower())
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
                return error_response(
                    503,
                    "Payment service unavailable: the command could not be "
                    "queued; retry with the same Idempotency-Key",
                    {"Retry-After": "1"},
                )
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                TIMEOUTS.inc()
                return error_response(
                    504,
                    f"No reply from the payment worker within {timeout:g}s. "
                    "The payment may still complete: retry with the same "
                    "Idempotency-Key (or the same order id) to get its outcome.",
                )
        finally:
            self.listener.forget(correlation)
        return json_response(
            int(reply["httpStatus"]),
            {
                "success": bool(reply["success"]),
                "payment": reply.get("payment"),
                "errorMessage": reply.get("errorMessage"),
            },
        )


async def read_body(request: Request, timeout_s: float) -> bytes | Response:
    """The request body, or the answer to a request whose body is too large (413) or not all
    sent within `timeout_s` (408: the deadline is for the whole body, so a trickle of bytes
    does not extend it)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return error_response(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return error_response(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        return error_response(400, "Request body not received: the connection closed")
    except TimeoutError:
        TOO_SLOW.inc()
        return error_response(
            408,
            f"Request body not received within {timeout_s:g}s",
            {"Connection": "close"},
        )
    return b"".join(chunks)


def idempotent_command_id(key: str, caller: bytes | None) -> str:
    """The command id an Idempotency-Key stands for: global without API keys; with them, one
    mapping per caller, scoped by the SHA-256 digest of its API key (never the key itself, as
    the command id travels on the commands topic), so two callers' keys never collide."""
    if caller is None:
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))
    return str(uuid.uuid5(uuid.uuid5(IDEMPOTENCY_NAMESPACE, caller.hex()), key))
