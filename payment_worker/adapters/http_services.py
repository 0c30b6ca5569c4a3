"""The Ordering and Inventory services over HTTP, with bounded, jittered retries.

The client is our keep-alive client (http_client.py) rather than httpx, whose pool checks
every connection on each request: with two GETs per command that was most of the worker's CPU.
Nothing outside this module knows which client it is.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from payment_worker import metrics, tracing
from payment_worker.adapters.http_client import (
    ConnectionWaitTimeout,
    HttpClient,
    HttpClientError,
    ResponseTooLarge,
)
from payment_worker.domain.ids import CANONICAL_UUID
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


_ABSENT = object()
_JSON = json.JSONDecoder(parse_float=Decimal)  # json.loads(parse_float=...) builds one per call
_AMOUNT = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


class _Garbled(Exception):
    """A field the checks need is there but cannot be read (wrong type, not parseable)."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _lowered(data: dict[str, Any]) -> dict[str, Any]:
    """The answer's fields by their names in lower case (lenient reads), built once per answer."""
    return {str(k).lower(): v for k, v in data.items()}


def _field(data: dict[str, Any], *names: str) -> Any:
    """The first of `names` present in `data` (as _lowered gives it) with a value other than
    null; _ABSENT when none is, None when one is only null."""
    found: Any = _ABSENT
    for name in names:
        value = data.get(name.lower(), _ABSENT)
        if value is not None and value is not _ABSENT:
            return value
        if value is None:
            found = None
    return found


def _uuid_text(data: dict[str, Any], *names: str) -> str | None:
    """An id field as a canonical UUID string; None when absent or null."""
    value = _field(data, *names)
    if value is None or value is _ABSENT:
        return None
    if not isinstance(value, str):
        raise _Garbled(names[0])
    if CANONICAL_UUID.fullmatch(value):
        return value  # already what str(uuid.UUID(value)) would give, at a tenth of the cost
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _Garbled(names[0]) from None


def _text(data: dict[str, Any], *names: str) -> str:
    """A text field ("" when absent or null: the check that needs it refuses that)."""
    value = _field(data, *names)
    if value is None or value is _ABSENT:
        return ""
    if not isinstance(value, str):
        raise _Garbled(names[0])
    return value.strip()


def _amount(data: dict[str, Any], *names: str) -> Decimal | None:
    """A money field: a JSON number or a plain decimal string ("250.00"); None when absent or
    null. "250,00", a money object, NaN or a boolean cannot be read as one."""
    value = _field(data, *names)
    if value is None or value is _ABSENT:
        return None
    if isinstance(value, str) and _AMOUNT.fullmatch(value):
        return Decimal(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, Decimal) and value.is_finite():  # JSON numbers read with Decimal
        return value
    raise _Garbled(names[0])


def _currency(data: dict[str, Any]) -> str:
    """The currency; USD when the answer names none (the contract's default). A null or a
    value that is not a three-letter code is not "none": it cannot be read."""
    value = _field(data, "currency")
    if value is _ABSENT:
        return "USD"
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise _Garbled("currency")
    return value


def _instant(data: dict[str, Any], *names: str) -> datetime | None:
    """An ISO 8601 instant (naive meaning UTC); None when absent or null."""
    value = _field(data, *names)
    if value is None or value is _ABSENT:
        return None
    if not isinstance(value, str):
        raise _Garbled(names[0])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Garbled(names[0]) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_order(data: dict[str, Any]) -> OrderInfo:
    """An Ordering answer as OrderInfo, read leniently in its names (id|orderId,
    customerId|userId, status|state, totalAmount|amount, currency) and strictly in its values:
    a field that is there but garbled is named in `unreadable`, for the check to refuse."""
    data = _lowered(data)
    try:
        return OrderInfo(
            customer_id=_uuid_text(data, "customerId", "userId"),
            status=_text(data, "status", "state"),
            amount=_amount(data, "totalAmount", "amount"),
            currency=_currency(data),
            order_id=_uuid_text(data, "id", "orderId"),
        )
    except _Garbled as garbled:
        return OrderInfo(None, "", None, "", unreadable=garbled.field)


def read_reservation(data: dict[str, Any]) -> ReservationInfo:
    """An Inventory answer as ReservationInfo (id|reservationId, customerId|userId,
    status|state, expiresAt), garbled fields named in `unreadable` as in read_order."""
    data = _lowered(data)
    try:
        return ReservationInfo(
            customer_id=_uuid_text(data, "customerId", "userId"),
            status=_text(data, "status", "state"),
            expires_at=_instant(data, "expiresAt"),
            reservation_id=_uuid_text(data, "id", "reservationId"),
        )
    except _Garbled as garbled:
        return ReservationInfo(None, "", None, unreadable=garbled.field)


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
            data = _JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
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
        order = read_order(data)
        if order.unreadable is not None:
            # The field's name only: its value is the service's data, and may be anything.
            log.warning("order_answer_unreadable", order_id=str(order_id), field=order.unreadable)
        return order


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
        reservation = read_reservation(data)
        if reservation.unreadable is not None:
            log.warning(
                "reservation_answer_unreadable",
                reservation_id=str(reservation_id),
                field=reservation.unreadable,
            )
        return reservation
