"""The shim's request handling (payment_worker/entrypoints/shim/) in process: the in-flight
limit under requests that arrive together, and POST /payments routed through FastAPI."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.bootstrap import shim_clients
from payment_worker.config import Settings, load_settings
from payment_worker.domain.model import Command
from payment_worker.entrypoints.shim import Shim, create_app, served_app

KEY = "only-key-0123456789"


class _ReadyListener:
    ready = True


def _request(body: bytes) -> Request:
    """A POST /payments whose body arrives in two chunks, with an await between them."""
    chunks = [body[:10], body[10:]]

    async def receive() -> dict[str, object]:
        await asyncio.sleep(0)
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/payments",
        "headers": [(b"content-type", b"application/json")],
    }
    return Request(scope, receive)


def _body() -> bytes:
    return json.dumps(
        {"orderId": str(uuid.uuid4()), "customerId": str(uuid.uuid4()), "amount": "20.00"}
    ).encode()


def test_requests_arriving_together_never_exceed_the_in_flight_limit() -> None:
    """Six requests at once with a limit of two: two wait for a reply, four get 503 at once
    (fails when the slot is counted only after the body was read)."""
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1")  # never contacted
    shim = Shim(settings, AvroCodec(SchemaSet()), shim_clients(settings), max_in_flight=2)
    shim.listener = _ReadyListener()  # type: ignore[assignment]
    release = asyncio.Event()
    waited: list[str] = []

    async def request_reply(command: Command, *_: Any) -> Response:
        waited.append(command.order_id)
        await release.wait()
        return Response(status_code=200)

    shim._request_reply = request_reply  # type: ignore[method-assign]

    async def scenario() -> list[int]:
        tasks = [asyncio.create_task(shim.handle(_request(_body()))) for _ in range(6)]
        # The four turned away finish at once; the two admitted wait for `release`.
        await asyncio.wait(tasks, timeout=1.0)
        assert shim.in_flight == 2
        release.set()
        return sorted([(await t).status_code for t in tasks])

    statuses = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert statuses == [200, 200, 503, 503, 503, 503]
    assert len(waited) == 2
    assert shim.in_flight == 0


def _app_with(handle: Any) -> tuple[Any, Shim]:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1")  # never contacted
    app = create_app(settings, AvroCodec(SchemaSet()), shim_clients(settings))
    shim: Shim = app.state.shim
    shim.handle = handle  # type: ignore[method-assign]
    return app, shim


def test_post_payments_is_served_through_fastapi_like_every_other_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What uvicorn serves hands POST /payments to the shim through FastAPI (its middleware
    stack puts the app in the scope); GET /health, the OpenAPI document and other methods on
    /payments are FastAPI's too (fails when a path in front of FastAPI answers POST /payments)."""
    seen: list[tuple[str, bool]] = []

    async def handle(self: Shim, request: Request) -> Response:
        seen.append((request.url.path, isinstance(request.scope.get("app"), FastAPI)))
        return Response(status_code=200, content=b"{}")

    monkeypatch.setattr(Shim, "handle", handle)
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1", shim_api_keys=KEY)
    asgi = served_app(settings, AvroCodec(SchemaSet()), shim_clients(settings))
    key = {"authorization": f"Bearer {KEY}"}

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
            return [
                (await client.post("/payments", content=_body(), headers=key)).status_code,
                (await client.get("/health")).status_code,  # no reply partitions yet: 503
                (await client.get("/openapi.json", headers=key)).status_code,
                (await client.get("/payments", headers=key)).status_code,
            ]

    assert asyncio.run(scenario()) == [200, 503, 200, 405]
    assert seen == [("/payments", True)]


def test_an_unexpected_error_in_the_shim_is_a_500_in_the_contract_shape() -> None:
    """A bug in request handling answers 500 `Payment processing error: ...` as JSON, and the
    next request is served (fails when the exception escapes to the server)."""
    calls = 0

    async def handle(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return Response(status_code=200, content=b"{}")

    asgi, _ = _app_with(handle)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
            return [await client.post("/payments", content=_body()) for _ in range(2)]

    failed, next_one = asyncio.run(scenario())
    assert failed.status_code == 500
    assert failed.json() == {
        "success": False,
        "payment": None,
        "errorMessage": "Payment processing error: unexpected RuntimeError",
    }
    assert next_one.status_code == 200
