"""The Ordering and Inventory services over HTTP, with bounded, jittered retries.

The client is our keep-alive client (http_client.py) rather than httpx, whose pool checks
every connection on each request: with two GETs per command that was most of the worker's CPU.
Nothing outside this module knows which client it is.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog

from payment_worker import metrics, tracing
from payment_worker.adapters.http_client import (
    ConnectionWaitTimeout,
    HttpClient,
    HttpClientError,
    ResponseTooLarge,
)
from payment_worker.exceptions import RetryableError
from payment_worker.retrying import retrying
from payment_worker.service.ports import DependencyUnavailable, OrderInfo, ReservationInfo

log = structlog.get_logger("payment_worker.http")


class _Transient(RetryableError):
    """One failed try: a 5xx, a timeout or a connection error."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout  # the try ran out of time (or the call out of budget)


class _Refused(RetryableError):
    """The service refused the request (4xx other than 404): not worth another try now."""


def _field(data: dict[str, Any], *names: str) -> Any:
    """The first of `names` present in `data`, matched case-insensitively (lenient reads)."""
    lowered = {str(k).lower(): v for k, v in data.items()}
    for name in names:
        if name.lower() in lowered and lowered[name.lower()] is not None:
            return lowered[name.lower()]
    return None


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class JsonService:
    """GET a JSON resource with retries; 404 is an answer, 5xx/timeouts/connection errors retry."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        retry_budget_s: float = 5.0,
        attempts: int = 4,
        max_connections: int = 100,
        **client_options: Any,
    ) -> None:
        """`client_options` go to HttpClient: ssl_context, headers, idle_timeout_s,
        max_response_bytes."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self.attempts = attempts
        self.max_connections = max_connections
        self.client_options = client_options
        self._client: HttpClient | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = HttpClient(
                self.base_url, max_connections=self.max_connections, **self.client_options
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def get_json(self, path: str, template: str = "") -> dict[str, Any] | None:
        """The resource, None on 404; DependencyUnavailable once the retry budget is spent.

        The budget is a deadline for the whole call: no try starts or runs past it. The call
        is one span (`GET <template>`, the path with its id as a placeholder) whose context
        every try sends as `traceparent`, and one observation of the dependency's latency.
        """
        route = template or path
        with metrics.dependency_call(
            self.name.lower(),
            f"GET {route}",
            {"http.request.method": "GET", "url.template": route},
        ) as call:
            try:
                data = await self._get_json(path)
            except DependencyUnavailable as exc:
                cause = exc.__cause__
                call.outcome = "timeout" if getattr(cause, "timeout", False) else "error"
                raise
            call.outcome = "ok" if data is not None else "not_found"
            return data

    async def _get_json(self, path: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_budget_s

        async def once() -> dict[str, Any] | None:
            if deadline - loop.time() <= 0.01:
                raise _Transient("retry budget spent", timeout=True)
            return await self._get_once(path, self.timeout_s, deadline)

        try:
            return await retrying(
                once,
                event="dependency_retry",
                retry_on=(_Transient,),
                attempts=self.attempts,
                budget_s=self.retry_budget_s,
                first_wait_s=0.1,
                max_wait_s=1.0,
                service=self.name,
            )
        except (_Transient, _Refused) as exc:
            raise DependencyUnavailable(f"{self.name} service unavailable ({exc})") from exc

    async def _get_once(
        self, path: str, timeout_s: float, deadline: float
    ) -> dict[str, Any] | None:
        """One try: it may wait for a free connection until the call's deadline (a burst of
        commands queues there; that is not the service failing), then has `timeout_s` to be
        answered, never past the deadline."""
        if self._client is None:
            raise RuntimeError(f"{self.name} client used before open()")
        traceparent, tracestate = tracing.outgoing()
        headers = [("traceparent", traceparent)] if traceparent else []
        if traceparent and tracestate:
            headers.append(("tracestate", tracestate))
        try:
            status, body = await self._client.get(
                path, timeout_s, deadline=deadline, headers=headers
            )
        except ConnectionWaitTimeout as exc:
            raise _Transient("no free connection within the retry budget", timeout=True) from exc
        except TimeoutError as exc:
            raise _Transient(f"timeout after {timeout_s:.2f}s", timeout=True) from exc
        except ResponseTooLarge as exc:
            raise _Refused(str(exc)) from exc  # it will not shrink on another try
        except HttpClientError as exc:
            raise _Transient(str(exc)) from exc
        if status == 404:
            return None
        if status >= 500 or status in (408, 429):
            raise _Transient(f"HTTP {status}")
        if status in (401, 403):
            raise _Refused(f"HTTP {status}: our credentials were refused")
        if status != 200:
            # 400...: our request is wrong; retrying won't help.
            raise _Refused(f"HTTP {status}")
        try:
            data = json.loads(body, parse_float=Decimal)
        except ValueError as exc:
            raise _Transient("response is not JSON") from exc
        if not isinstance(data, dict):
            raise _Transient("response is not a JSON object")
        return data


class HttpOrdering:
    """OrderingPort: GET /orders/{id}, read leniently."""

    def __init__(self, service: JsonService) -> None:
        self.service = service

    async def get_order(self, order_id: uuid.UUID) -> OrderInfo | None:
        data = await self.service.get_json(f"/orders/{order_id}", "/orders/{orderId}")
        if data is None:
            return None
        customer = _field(data, "customerId", "userId")
        returned_id = _field(data, "id", "orderId")
        return OrderInfo(
            customer_id=str(customer) if customer is not None else None,
            status=str(_field(data, "status", "state") or ""),
            amount=_decimal(_field(data, "totalAmount", "amount")),
            currency=str(_field(data, "currency") or "USD"),
            order_id=str(returned_id).lower() if returned_id is not None else None,
        )


class HttpInventory:
    """InventoryPort: GET /reservations/{id}, read leniently."""

    def __init__(self, service: JsonService) -> None:
        self.service = service

    async def get_reservation(self, reservation_id: uuid.UUID) -> ReservationInfo | None:
        data = await self.service.get_json(
            f"/reservations/{reservation_id}", "/reservations/{reservationId}"
        )
        if data is None:
            return None
        customer = _field(data, "customerId", "userId")
        return ReservationInfo(
            customer_id=str(customer) if customer is not None else None,
            status=str(_field(data, "status", "state") or ""),
            expires_at=_instant(_field(data, "expiresAt")),
        )
