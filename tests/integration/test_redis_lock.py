"""RedisOrderLock against the real Redis: tokens, waiting, safe release, expiry, and the
degraded mode when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from payment_worker.adapters.redis_lock import RedisOrderLock
from payment_worker.devstack.broker import free_port
from payment_worker.service.ports import OrderLocked

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    the_client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        await the_client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        pytest.fail(f"Redis is not reachable at {redis_url} ({exc}); `make services`")
    yield the_client
    await the_client.aclose()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test only."""
    return f"test-{uuid.uuid4().hex[:8]}:order-lock:"


@pytest.fixture
async def lock(client: aioredis.Redis, prefix: str) -> AsyncIterator[RedisOrderLock]:
    yield RedisOrderLock(client, ttl_ms=5_000, wait_s=0.3, prefix=prefix)
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)


async def test_acquire_returns_a_token_and_holds_the_key(
    lock: RedisOrderLock, client: aioredis.Redis, prefix: str
) -> None:
    """acquire returns a token and the order's key holds that token, with an expiry."""
    order_id = uuid.uuid4()

    token = await lock.acquire(order_id)

    assert token
    assert await client.get(prefix + str(order_id)) == token.encode()
    assert 0 < await client.pttl(prefix + str(order_id)) <= 5_000


async def test_second_acquire_waits_and_gives_up_after_wait_s(lock: RedisOrderLock) -> None:
    """While the lock is held, another acquire for the same order waits about wait_s (0.3 s)
    and raises OrderLocked: a wait that runs out is never taken for the lock."""
    order_id = uuid.uuid4()
    assert await lock.acquire(order_id)

    started = time.monotonic()
    with pytest.raises(OrderLocked):
        await lock.acquire(order_id)
    waited = time.monotonic() - started

    assert 0.3 <= waited < 1.0


async def test_locks_of_different_orders_are_independent(lock: RedisOrderLock) -> None:
    """Holding one order's lock does not stop another order's acquire."""
    assert await lock.acquire(uuid.uuid4())

    assert await lock.acquire(uuid.uuid4())


async def test_waiting_acquire_gets_the_lock_once_released(lock: RedisOrderLock) -> None:
    """An acquire waiting on a held lock gets its own token as soon as the holder releases."""
    order_id = uuid.uuid4()
    first = await lock.acquire(order_id)
    waiting = asyncio.create_task(lock.acquire(order_id))
    await asyncio.sleep(0.05)

    await lock.release(order_id, first)
    second = await waiting

    assert second is not None and second != first


async def test_release_with_the_wrong_token_keeps_the_lock(
    lock: RedisOrderLock, client: aioredis.Redis, prefix: str
) -> None:
    """release with a token that is not the holder's leaves the lock in place (a late worker
    cannot free a lock someone else now holds)."""
    order_id = uuid.uuid4()
    token = await lock.acquire(order_id)
    assert token

    await lock.release(order_id, "not-the-token")

    assert await client.get(prefix + str(order_id)) == token.encode()
    with pytest.raises(OrderLocked):
        await lock.acquire(order_id)


async def test_release_with_the_right_token_frees_the_lock(
    lock: RedisOrderLock, client: aioredis.Redis, prefix: str
) -> None:
    """release with the holder's token deletes the key; the next acquire succeeds at once."""
    order_id = uuid.uuid4()
    token = await lock.acquire(order_id)

    await lock.release(order_id, token)

    assert await client.exists(prefix + str(order_id)) == 0
    assert await lock.acquire(order_id) is not None


async def test_a_dead_holders_lock_expires_after_ttl(client: aioredis.Redis, prefix: str) -> None:
    """A lock whose holder died (nobody renews it) is gone after its TTL, so a crashed worker
    does not block the order for ever."""
    short = RedisOrderLock(client, ttl_ms=200, wait_s=0.3, prefix=prefix)
    order_id = uuid.uuid4()
    await client.set(prefix + str(order_id), "a-dead-workers-token", px=200)

    await asyncio.sleep(0.35)

    assert await client.exists(prefix + str(order_id)) == 0
    assert await short.acquire(order_id) is not None


async def test_a_held_lock_is_renewed_until_released(client: aioredis.Redis, prefix: str) -> None:
    """A charge that takes longer than the TTL keeps its lock: the holder renews it, so no one
    else gets the order meanwhile; once released, the next acquire gets it at once."""
    short = RedisOrderLock(client, ttl_ms=300, wait_s=0.2, prefix=prefix)
    order_id = uuid.uuid4()
    token = await short.acquire(order_id)
    assert token

    await asyncio.sleep(1.0)  # more than three TTLs

    assert await client.get(prefix + str(order_id)) == token.encode()
    with pytest.raises(OrderLocked):
        await short.acquire(order_id)
    await short.release(order_id, token)
    assert await short.acquire(order_id) is not None


async def test_unreachable_redis_degrades_quickly() -> None:
    """With Redis unreachable, acquire returns None at once (no waiting for wait_s) and reports
    the degraded mode through on_degraded; release with no token is a no-op."""
    degraded: list[int] = []
    unreachable = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
    )
    lock = RedisOrderLock(unreachable, wait_s=5.0, on_degraded=lambda: degraded.append(1))
    try:
        started = time.monotonic()
        token = await lock.acquire(uuid.uuid4())
        elapsed = time.monotonic() - started
        await lock.release(uuid.uuid4(), token)
    finally:
        await unreachable.aclose()

    assert token is None
    assert degraded == [1]
    assert elapsed < 2.0


async def test_release_against_unreachable_redis_reports_degraded() -> None:
    """A release that cannot reach Redis does not raise; it reports the degraded mode."""
    degraded: list[int] = []
    unreachable = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
    )
    lock = RedisOrderLock(unreachable, on_degraded=lambda: degraded.append(1))
    try:
        await lock.release(uuid.uuid4(), "some-token")
    finally:
        await unreachable.aclose()

    assert degraded == [1]


async def test_release_works_after_redis_forgot_its_scripts(
    client: aioredis.Redis, lock: RedisOrderLock, prefix: str
) -> None:
    """A restarted Redis has no scripts (SCRIPT FLUSH here): the release loads its script again
    and frees the lock, instead of failing into degraded mode and leaving it until its expiry."""
    order = uuid.uuid4()
    token = await lock.acquire(order)
    assert token is not None
    await client.script_flush()
    await lock.release(order, token)
    assert await client.exists(prefix + str(order)) == 0


async def test_acquire_and_renewal_work_after_redis_forgot_its_scripts(
    client: aioredis.Redis, prefix: str
) -> None:
    """Acquiring and renewing are scripts too: after SCRIPT FLUSH each loads its script again,
    so the lock is taken, kept past its TTL, and still refused to a second caller."""
    short = RedisOrderLock(client, ttl_ms=300, wait_s=0.2, prefix=prefix)
    order_id = uuid.uuid4()
    await client.script_flush()
    token = await short.acquire(order_id)
    assert token is not None
    await client.script_flush()
    await asyncio.sleep(1.0)  # more than three TTLs: renewed after the flush, or lost
    assert await client.get(prefix + str(order_id)) == token.encode()
    with pytest.raises(OrderLocked):
        await short.acquire(order_id)
    await short.release(order_id, token)


async def test_one_batch_locks_many_orders_and_refuses_the_held_ones(
    client: aioredis.Redis, lock: RedisOrderLock, prefix: str
) -> None:
    """Locks asked for at once go to Redis in one call; each gets its own answer."""
    orders = [uuid.uuid4() for _ in range(50)]
    held = await lock.acquire(orders[0])
    results = await asyncio.gather(*(lock.acquire(o) for o in orders[1:]))
    assert all(results) and len(set(results)) == len(results)
    assert lock._sets.batches < len(orders)  # they went to Redis together
    with pytest.raises(OrderLocked):
        await lock.acquire(orders[0])
    await asyncio.gather(
        lock.release(orders[0], held),
        *(lock.release(o, t) for o, t in zip(orders[1:], results, strict=True)),
    )
    assert [key async for key in client.scan_iter(match=prefix + "*")] == []


class _ClusterEndpoint:
    """The real Redis, answering a script over keys of several hash slots as a cluster-mode
    endpoint does (CROSSSLOT)."""

    def __init__(self, real: aioredis.Redis) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def evalsha(self, sha: str, numkeys: int, *args: str) -> Any:
        if numkeys > 1:
            raise ResponseError("CROSSSLOT Keys in request don't hash to the same slot")
        return await self.real.evalsha(sha, numkeys, *args)


async def test_a_cluster_endpoint_gets_one_script_call_per_key(
    client: aioredis.Redis, prefix: str
) -> None:
    """Where a batch's keys cannot go in one script call (CROSSSLOT), each goes alone: locks are
    still taken, refused while held and released, never degraded."""
    degraded: list[int] = []
    lock = RedisOrderLock(
        _ClusterEndpoint(client),  # type: ignore[arg-type]
        ttl_ms=5_000,
        wait_s=0.3,
        prefix=prefix,
        on_degraded=lambda: degraded.append(1),
    )
    orders = [uuid.uuid4() for _ in range(10)]
    tokens = await asyncio.gather(*(lock.acquire(o) for o in orders))
    assert all(tokens) and degraded == []
    with pytest.raises(OrderLocked):
        await lock.acquire(orders[0])
    await asyncio.gather(*(lock.release(o, t) for o, t in zip(orders, tokens, strict=True)))
    assert [key async for key in client.scan_iter(match=prefix + "*")] == []
    assert degraded == []
