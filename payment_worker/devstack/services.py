"""A development server playing the Ordering and Inventory services (bare ASGI, in memory).

GET /orders/{id}, GET /reservations/{id} answer like the real services. Admin endpoints seed
data and inject faults: POST /admin/orders, POST /admin/reservations, POST
/admin/raw/{orders|reservations}/{id} (the request body is answered verbatim, to play a
service whose answer is garbled or not even JSON), POST /admin/faults
({"orders": {"status": 503, "count": 3, "delay_ms": 0, "every": 1}}), DELETE /admin/faults,
POST /admin/reset, GET /admin/stats. `--seed N` preloads N deterministic orders.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import structlog

from payment_worker.logs import configure_logging

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SEED_NAMESPACE = uuid.UUID("6f0c7d1e-3b8a-4c55-9a43-52d0e3c8b001")


def seeded_order(index: int) -> dict[str, Any]:
    """Order number `index` of the deterministic seed, with its reservation."""
    order_id = uuid.uuid5(SEED_NAMESPACE, f"order-{index}")
    customer_id = uuid.uuid5(SEED_NAMESPACE, f"customer-{index % 97}")
    reservation_id = uuid.uuid5(SEED_NAMESPACE, f"reservation-{index}")
    amount = Decimal(10 + index % 490) + Decimal("0.50")
    return {
        "id": str(order_id),
        "customerId": str(customer_id),
        "status": "Pending",
        "totalAmount": str(amount),
        "currency": "USD",
        "reservation": {
            "id": str(reservation_id),
            "customerId": str(customer_id),
            "status": "Active",
            "expiresAt": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
    }


@dataclass
class Fault:
    status: int = 503
    count: int = -1  # -1: until cleared
    delay_ms: int = 0
    every: int = 1  # 1: every request; N: every N-th request (a share of 1/N, deterministic)
    seen: int = 0


@dataclass
class State:
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (kind, id) -> body
    faults: dict[str, Fault] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def seed(self, count: int) -> None:
        for i in range(count):
            order = seeded_order(i)
            reservation = order.pop("reservation")
            self.orders[order["id"]] = order
            self.reservations[reservation["id"]] = reservation

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


def _items(body: Any) -> list[dict[str, Any]]:
    items = body if isinstance(body, list) else [body]
    return [i for i in items if isinstance(i, dict)]


class DevServices:
    """The ASGI app."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        body = b""
        if method in ("POST", "PUT"):
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        status, payload = await self.route(method, path, body)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _fault(self, kind: str) -> int | None:
        fault = self.state.faults.get(kind)
        if fault is None or fault.count == 0:
            return None
        fault.seen += 1
        if fault.every > 1 and fault.seen % fault.every:
            return None
        if fault.count > 0:
            fault.count -= 1
        if fault.delay_ms:
            await anyio.sleep(fault.delay_ms / 1000)
        return fault.status if fault.status else None

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        state = self.state
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 2 and parts[0] in ("orders", "reservations"):
            kind = parts[0]
            state.count(kind)
            faulted = await self._fault(kind)
            if faulted:
                return faulted, {"error": f"injected {faulted}"}
            raw = state.raw.get((kind, parts[1].lower()))
            if raw is not None:
                return 200, raw
            table = state.orders if kind == "orders" else state.reservations
            found = table.get(parts[1].lower())
            return (200, found) if found else (404, {"error": "not found"})
        if (
            method == "POST"
            and len(parts) == 4
            and parts[:2] == ["admin", "raw"]
            and parts[2] in ("orders", "reservations")
        ):
            state.raw[(parts[2], parts[3].lower())] = body
            return 200, {"raw": len(state.raw)}
        if path == "/health":
            return 200, {"status": "Healthy", "service": "devstack"}
        try:
            parsed = json.loads(body) if body else {}
        except json.JSONDecodeError:
            return 400, {"error": "invalid JSON"}
        if method == "POST" and path == "/admin/orders":
            for order in _items(parsed):
                state.orders[str(order["id"]).lower()] = order
            return 200, {"orders": len(state.orders)}
        if method == "POST" and path == "/admin/reservations":
            for reservation in _items(parsed):
                state.reservations[str(reservation["id"]).lower()] = reservation
            return 200, {"reservations": len(state.reservations)}
        if method == "POST" and path == "/admin/seed":
            state.seed(int(parsed.get("count", 0)))
            return 200, {"orders": len(state.orders)}
        if method == "POST" and path == "/admin/faults":
            for kind, spec in parsed.items():
                state.faults[kind] = Fault(**spec)
            return 200, {"faults": list(state.faults)}
        if method == "DELETE" and path == "/admin/faults":
            state.faults.clear()
            return 200, {"faults": []}
        if method == "POST" and path == "/admin/reset":
            self.state = State()
            return 200, {}
        if method == "GET" and path == "/admin/stats":
            return 200, state.stats
        return 404, {"error": f"no route {method} {path}"}


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--seed", type=int, default=0, help="preload N deterministic orders")
    args = parser.parse_args(argv)
    state = State()
    state.seed(args.seed)
    configure_logging("INFO")
    structlog.get_logger("payment_worker.devstack").info(
        "devserver_listening", url=f"http://{args.host}:{args.port}", seeded_orders=args.seed
    )
    uvicorn.run(
        DevServices(state),
        host=args.host,
        port=args.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines in our format (logs.py)
        access_log=False,
    )


if __name__ == "__main__":
    main()
