"""The order and the reservation of a command, fetched at once and used in the contract's
order; what was not needed is cancelled and its error, nobody's concern, swallowed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from payment_worker.domain.decision import (
    Checked,
    OrderInfo,
    Rejected,
    ReservationInfo,
    Unchecked,
    check_order,
    check_reservation,
)
from payment_worker.domain.model import ValidCommand
from payment_worker.service.ports import InventoryPort, OrderingPort


class Lookups:
    """The order and reservation of a command, fetched concurrently and used in order: the
    reservation in a task of its own from the start, the order in the caller's `check` (a
    task fewer per command; both requests still go out at once)."""

    def __init__(
        self, ordering: OrderingPort, inventory: InventoryPort, valid: ValidCommand
    ) -> None:
        self.valid = valid
        self._ordering = ordering
        self._reservation = (
            asyncio.ensure_future(inventory.get_reservation(valid.reservation_id))
            if valid.reservation_id is not None
            else None
        )

    async def check(self, clock: Callable[[], datetime]) -> Checked:
        """What the order, then the reservation, say of the command, in the contract's order:
        None when both accept it; a lookup that failed is Unchecked, never a pass."""
        valid = self.valid
        try:
            order: OrderInfo | None = await self._ordering.get_order(valid.order_id)
            answer = check_order(valid, order)
            if answer is None and self._reservation is not None:
                reservation: ReservationInfo | None = await self._reservation
                answer = check_reservation(valid, reservation, clock())
        except Exception as exc:
            return Unchecked(exc)
        return None if answer is None else Rejected(answer)

    def drop(self) -> None:
        """Cancel what was not needed; an error nobody asked for is not an error."""
        task = self._reservation
        if task is not None:
            if not task.done():
                task.cancel()
            task.add_done_callback(_swallow)


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
