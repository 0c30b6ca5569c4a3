"""The order and the reservation of a command, fetched at once and used in the contract's
order; what was not needed is cancelled and its error, nobody's concern, swallowed."""

from __future__ import annotations

import asyncio
from typing import Any

from payment_worker.domain.decision import OrderInfo, ReservationInfo
from payment_worker.domain.model import ValidCommand
from payment_worker.service.ports import InventoryPort, OrderingPort


class Lookups:
    """The order and reservation of a command, fetched concurrently and used in order."""

    def __init__(
        self, ordering: OrderingPort, inventory: InventoryPort, valid: ValidCommand
    ) -> None:
        self._order = asyncio.ensure_future(ordering.get_order(valid.order_id))
        self._reservation = (
            asyncio.ensure_future(inventory.get_reservation(valid.reservation_id))
            if valid.reservation_id is not None
            else None
        )

    async def order(self) -> OrderInfo | None:
        return await self._order

    async def reservation(self) -> ReservationInfo | None:
        assert self._reservation is not None
        return await self._reservation

    def drop(self) -> None:
        """Cancel what was not needed; an error nobody asked for is not an error."""
        for task in (self._order, self._reservation):
            if task is None:
                continue
            if not task.done():
                task.cancel()
            task.add_done_callback(_swallow)


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
