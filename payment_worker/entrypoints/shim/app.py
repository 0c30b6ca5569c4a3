"""The shim's FastAPI app: POST /payments, /health and /metrics as routes, and the API-key
door in front of them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from payment_worker.adapters.avro_codec import AvroCodec
from payment_worker.config import Settings
from payment_worker.entrypoints.shim.handling import CALLER_SCOPE_KEY, Shim, ShimClients
from payment_worker.entrypoints.shim.metrics import DROPPED, LATENCY, REQUESTS, WAITING
from payment_worker.entrypoints.shim.requests import MAX_KEY_LENGTH, PaymentRequest
from payment_worker.entrypoints.shim.responses import (
    RESPONSES,
    PaymentResponse,
    error_response,
    json_response,
)

log = structlog.get_logger("payment_worker.shim")


def create_app(settings: Settings, codec: AvroCodec, clients: ShimClients) -> FastAPI:
    shim = Shim(settings, codec, clients, max_in_flight=settings.shim_max_in_flight)
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
        # The shim reads the body itself (a size limit, the contract's messages for bad JSON),
        # so the route takes the request, not a model FastAPI would parse.
        return await _answer(shim, request)

    @app.get("/health")
    async def health() -> Response:
        if shim.listener.ready:
            return json_response(200, {"status": "Healthy", "service": "Payment"})
        return json_response(
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
        response = error_response(500, f"Payment processing error: unexpected {type(exc).__name__}")
    REQUESTS.labels(str(response.status_code)).inc()
    LATENCY.observe(time.perf_counter() - started)
    return response


def with_api_keys(app: ASGIApp, digests: list[bytes], *, metrics_public: bool) -> ASGIApp:
    """Callers must send one of the keys as `Authorization: Bearer <key>`, except on /health
    (and /metrics when it is public). Keys are compared as SHA-256 digests, each with
    hmac.compare_digest and all of them every time, so the time taken says nothing of a key.
    The digest of the key that matched is left in the scope (CALLER_SCOPE_KEY): idempotency
    keys are scoped by it."""
    if not digests:
        return app
    open_paths = {"/health", "/metrics"} if metrics_public else {"/health"}
    refusal = error_response(
        401,
        "Unauthorized: send an API key as 'Authorization: Bearer <key>'",
        {"WWW-Authenticate": 'Bearer realm="payment-shim"'},
    )

    def caller(scope: Scope) -> bytes | None:
        """The digest of the configured key the request presented, or None."""
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        digest = hashlib.sha256(presented).digest()
        matched: bytes | None = None
        for known in digests:
            if hmac.compare_digest(digest, known):
                matched = known
        return matched if presented else None

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        digest = caller(scope)
        if digest is not None:
            await app({**scope, CALLER_SCOPE_KEY: digest}, receive, send)
            return
        if scope["path"] in open_paths:
            await app(scope, receive, send)
            return
        if scope["path"] == "/payments":
            REQUESTS.labels("401").inc()
        await refusal(scope, receive, send)

    return asgi
