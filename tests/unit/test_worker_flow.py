"""The worker loop's flow control (entrypoints/worker.py) with fakes at the ports: at most
`max_in_flight` commands run at once, more are taken as soon as one finishes, and offsets are
committed only behind finished records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from payment_worker.domain.model import Outcome
from payment_worker.entrypoints.worker import Worker
from payment_worker.exceptions import GatewayRefusedCredentials
from payment_worker.service.pipeline import Handled
from payment_worker.service.ports import InboundRecord


class FakeConsumer:
    """Hands out `count` records of one partition, at most `max_messages` per call."""

    def __init__(self, count: int) -> None:
        self.records = [
            InboundRecord("commands", 0, offset, f"order-{offset}".encode(), b"v", [])
            for offset in range(count)
        ]
        self.commits: list[dict[tuple[str, int], int]] = []
        self.largest_request = 0
        self.calls = 0
        self.paused = False
        self.pauses: list[bool] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.pauses.append(paused)

    async def consume(self, max_messages: int, timeout_s: float) -> list[InboundRecord]:
        self.calls += 1
        self.largest_request = max(self.largest_request, max_messages)
        if not self.records or self.paused:
            await asyncio.sleep(min(timeout_s, 0.01))
            return []
        taken, self.records = self.records[:max_messages], self.records[max_messages:]
        return taken

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))


class BlockingPipeline:
    """Each command waits until released; records how many ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.done = 0
        self.release = asyncio.Event()

    async def handle(self, record: InboundRecord) -> Handled:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.done += 1
        return Handled(Outcome.SUCCEEDED)


class NullRelay:
    async def start(self) -> None:
        pass

    async def stop(self, timeout_s: float = 15.0) -> None:
        pass

    def publish(self, stored: list[Any]) -> None:
        pass


def _worker(
    pipeline: BlockingPipeline, consumer: FakeConsumer, max_in_flight: int, **options: Any
) -> Worker:
    return Worker(
        pipeline=pipeline,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        relay=NullRelay(),  # type: ignore[arg-type]
        make_consumer=lambda **_: consumer,
        max_in_flight=max_in_flight,
        reconcile_after_s=3600,
        **options,
    )


@contextlib.asynccontextmanager
async def _running(worker: Worker, pipeline: BlockingPipeline) -> AsyncIterator[None]:
    """The worker's loop running; on the way out, commands released and the loop stopped."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        pipeline.release.set()
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(check: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_never_more_than_max_in_flight_commands_run_at_once() -> None:
    """With 50 records waiting and max_in_flight=7, exactly 7 run until one finishes; no
    consume call asks for more than there is room for."""
    pipeline, consumer = BlockingPipeline(), FakeConsumer(50)
    worker = _worker(pipeline, consumer, max_in_flight=7)
    async with _running(worker, pipeline):
        await _until(lambda: pipeline.running == 7)
        await asyncio.sleep(0.3)  # the loop keeps turning while full
        assert pipeline.running == 7
        assert len(consumer.records) == 43
        assert consumer.largest_request <= 7
    assert pipeline.most == 7


async def test_a_finished_command_makes_room_at_once() -> None:
    """When the commands in flight finish, the next ones are taken without a pause, and all
    50 records get processed with never more than 7 at once."""
    pipeline, consumer = BlockingPipeline(), FakeConsumer(50)
    worker = _worker(pipeline, consumer, max_in_flight=7)
    async with _running(worker, pipeline):
        await _until(lambda: pipeline.running == 7)
        pipeline.release.set()
        await _until(lambda: pipeline.done == 50, timeout_s=1.0)
    assert pipeline.most == 7
    assert consumer.commits and consumer.commits[-1] == {("commands", 0): 50}


async def test_offsets_are_committed_only_behind_finished_records() -> None:
    """While the first records are still running, no offset at or past them is committed."""
    pipeline, consumer = BlockingPipeline(), FakeConsumer(5)
    worker = _worker(pipeline, consumer, max_in_flight=10)
    async with _running(worker, pipeline):
        await _until(lambda: pipeline.running == 5)
        await asyncio.sleep(0.5)  # a few commit-loop turns
        assert consumer.commits == []
        pipeline.release.set()
        await _until(lambda: pipeline.done == 5)
    assert consumer.commits[-1] == {("commands", 0): 5}


async def test_a_worker_full_for_long_pauses_and_keeps_polling() -> None:
    """No command finishing for a while (a dependency down): the worker pauses its partitions
    and keeps polling (the group session and rebalances need it) without taking records; once
    commands finish it resumes and takes the rest."""
    pipeline, consumer = BlockingPipeline(), FakeConsumer(30)
    worker = _worker(pipeline, consumer, max_in_flight=5, pause_after_s=0.2)
    async with _running(worker, pipeline):
        await _until(lambda: consumer.paused)
        polls = consumer.calls
        await asyncio.sleep(0.5)
        assert consumer.calls > polls  # still polling while paused
        assert pipeline.running == 5 and len(consumer.records) == 25
        pipeline.release.set()
        await _until(lambda: pipeline.done == 30)
    assert consumer.pauses[:2] == [True, False]


class HeadBlockedPipeline(BlockingPipeline):
    """Offset 0 waits until released; every other command finishes at once."""

    async def handle(self, record: InboundRecord) -> Handled:
        if record.offset == 0:
            return await super().handle(record)
        self.done += 1
        return Handled(Outcome.SUCCEEDED)


async def test_records_done_behind_a_slow_one_are_bounded_by_the_window() -> None:
    """A slow first record holds its partition's commit point: the fast ones behind it finish
    (they are not in flight), but the worker takes no more than 4 x max_in_flight records past
    the commit point, which bounds what a crash would redeliver."""
    pipeline, consumer = HeadBlockedPipeline(), FakeConsumer(100)
    worker = _worker(pipeline, consumer, max_in_flight=3)
    async with _running(worker, pipeline):
        await _until(lambda: pipeline.done == 11)
        await asyncio.sleep(0.3)
        assert worker.tracker.unfinished() == 12  # the window: 4 x 3
        assert len(consumer.records) == 88
        assert consumer.commits == []
        pipeline.release.set()
        await _until(lambda: pipeline.done == 100)
    assert consumer.commits[-1] == {("commands", 0): 100}


async def test_a_revoked_partitions_commands_are_stopped_before_its_offsets_are_given_up() -> None:
    """Commands still running when the drain deadline of a revocation passes are cancelled,
    and the revocation returns only once they have stopped: nothing of that partition can go
    on here (a second gateway call, a second reply) while its new owner processes it again;
    their offsets are not among those committed."""
    pipeline, consumer = BlockingPipeline(), FakeConsumer(4)
    worker = _worker(pipeline, consumer, max_in_flight=10, drain_timeout_s=0.2)
    async with _running(worker, pipeline):
        await _until(lambda: pipeline.running == 4)
        points = await worker._on_revoke([("commands", 0)])
        assert pipeline.running == 0
        assert pipeline.done == 0
        assert points == {}
        assert worker.tracker.unfinished() == 0


async def test_a_record_of_a_revoked_partition_never_marks_the_partition_assigned_again() -> None:
    """A record that finishes after its partition was revoked and assigned again marks its own
    old assignment only: the redelivered copy of the same offset stays unfinished until its own
    processing ends."""
    from payment_worker.entrypoints.tracking import OffsetTracker

    tracker = OffsetTracker()
    old = tracker.started("commands", 0, 7)
    tracker.forget([("commands", 0)])
    tracker.started("commands", 0, 7)  # the redelivered copy
    old.finished(7)
    assert tracker.unfinished([("commands", 0)]) == 1
    assert tracker.to_commit() == {}


class RefusingPipeline:
    """The gateway refuses our key at every command."""

    async def handle(self, record: InboundRecord) -> Handled:
        raise GatewayRefusedCredentials("Stripe refused the API key: check PAYMENT_STRIPE_API_KEY")


class HandingBackConsumer(FakeConsumer):
    """Hands its partition back when closed, as the Kafka consumer does: the worker's revoke
    handler says first what to commit."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.on_revoke: Any = None
        self.handed_back: dict[tuple[str, int], int] | None = None

    def made(self, **callbacks: Any) -> HandingBackConsumer:
        self.on_revoke = callbacks["on_revoke"]
        return self

    async def close(self) -> None:
        self.handed_back = await self.on_revoke([("commands", 0)])


async def test_a_refused_key_stops_the_worker_without_waiting_out_the_drain() -> None:
    """The gateway refusing our key ends run() with that error as soon as nothing runs: the
    record given up for it (not committed, so taken again under a key the gateway takes) is
    not waited for until the drain deadline when the partition is handed back, which would
    keep the partition from every other worker meanwhile."""
    consumer = HandingBackConsumer(1)
    worker = Worker(
        pipeline=RefusingPipeline(),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        relay=NullRelay(),  # type: ignore[arg-type]
        make_consumer=consumer.made,
        reconcile_after_s=3600,
        drain_timeout_s=5.0,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GatewayRefusedCredentials):
        await asyncio.wait_for(worker.run(asyncio.Event()), 10)
    assert loop.time() - started < 2.0
    assert consumer.handed_back == {}
    assert consumer.commits == []
