"""The shim's in-flight limit (payment_worker/entrypoints/shim.py) under requests that arrive
together: the limit holds even when every request is still reading its body."""

from __future__ import annotations

import asyncio
import json
import uuid

from starlette.requests import Request
from starlette.responses import Response

from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.config import Settings
from payment_worker.domain.model import Command
from payment_worker.entrypoints.shim import Shim


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
    shim = Shim(settings, AvroCodec(SchemaSet()), max_in_flight=2)
    shim.listener = _ReadyListener()  # type: ignore[assignment]
    release = asyncio.Event()
    waited: list[str] = []

    async def request_reply(command: Command) -> Response:
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
