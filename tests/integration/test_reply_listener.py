"""The shim's reply listener on the real broker: a reply whose delivery fails is dropped and
counted, and the listener goes on with the replies after it (a dead listener would leave every
caller waiting while the shim still says it is ready)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from payment_worker.adapters.kafka import ReplyListener
from payment_worker.service.messages import Topics

pytestmark = pytest.mark.integration


def _reply(command_id: str, order_id: str) -> bytes:
    return json.dumps(
        {"correlationId": command_id, "commandId": command_id, "orderId": order_id}
    ).encode()


async def test_a_reply_that_cannot_be_delivered_does_not_stop_the_listener(
    broker: str, topics: Topics
) -> None:
    failures = []

    def decode(value: bytes | None) -> dict[str, Any] | None:
        reply = json.loads(value or b"null")
        if reply["commandId"] == "broken":
            failures.append(reply)
            raise RuntimeError("the registry is unreachable")
        return reply

    listener = ReplyListener(
        {"bootstrap.servers": broker, "group.id": f"it-{uuid.uuid4().hex[:10]}"},
        topics.replies,
        decode,
    )
    listener.start()
    try:
        deadline = time.monotonic() + 30
        while not listener.ready and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread sets it
            await asyncio.sleep(0.1)
        assert listener.ready
        partition = listener.reply_partition()
        order = str(uuid.uuid4())
        waiting = listener.expect("after", "after", order)
        producer = Producer({"bootstrap.servers": broker})
        for command in ("broken", "after"):
            producer.produce(topics.replies, value=_reply(command, order), partition=partition)
        assert producer.flush(10) == 0

        reply = await asyncio.wait_for(waiting, 20)

        assert reply["commandId"] == "after"
        assert len(failures) == 1 and listener.dropped == 1
        assert listener.ready
    finally:
        listener.stop()
