"""Per-order locks in Redis (token + expiry). Redis down means degraded, never stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

from payment_worker import metrics
from payment_worker.adapters.coalesce import Coalescer
from payment_worker.domain.ids import token_hex
from payment_worker.retrying import polling
from payment_worker.service.ports import OrderLocked

log = structlog.get_logger("payment_worker.redis")

_REDIS = {"db.system.name": "redis"}
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2])
else return 0 end
"""


class RedisOrderLock:
    """OrderLockPort. The database rules (I3) are the guarantee; this lock keeps two workers
    from running the gateway for one order at the same time and saves them the contention.
    A held lock is renewed every third of its TTL until released, so a charge that takes
    longer than the TTL keeps it; a wait that runs out raises OrderLocked, never a pass."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_ms: int = 6_000,
        wait_s: float = 10.0,
        prefix: str = "payment-worker:order-lock:",
        on_degraded: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        self.wait_s = wait_s
        self.prefix = prefix
        self.on_degraded = on_degraded
        self._release_sha = client.register_script(_RELEASE).sha
        self._renew_sha = client.register_script(_RENEW).sha
        # Held locks (key -> token), renewed together by one task: a crashed holder's lock
        # lapses within one TTL, shorter than a waiter's wait, so its orders move on.
        self._held: dict[str, str] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        # Many commands lock and unlock at once: one pipelined round trip serves them all, one
        # at a time, so that the batches grow with the load (as the database steps do).
        self._sets = Coalescer(self._set_batch, max_batch=512, parallel=1)
        self._releases = Coalescer(self._release_batch, max_batch=512, parallel=1)

    async def _set_batch(self, items: list[tuple[str, str]]) -> list[bool | BaseException]:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, token in items:
                    pipe.set(key, token, nx=True, px=self.ttl_ms)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            return [exc] * len(items)
        return [bool(r) for r in results]

    async def _release_batch(self, items: list[tuple[str, str]]) -> list[BaseException | None]:
        # EVALSHA straight away: a registered script run in a pipeline first asks Redis
        # whether it knows the script (SCRIPT EXISTS), one more round trip per batch. Redis
        # forgets scripts when it restarts: then it is loaded and the batch sent again.
        try:
            results = await self._evalsha_release(items)
            if any(isinstance(r, NoScriptError) for r in results):
                await self.client.script_load(_RELEASE)
                results = await self._evalsha_release(items)
        except (RedisError, OSError) as exc:
            return [exc] * len(items)
        return [r if isinstance(r, BaseException) else None for r in results]

    async def _evalsha_release(self, items: list[tuple[str, str]]) -> list[object]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key, token in items:
                pipe.evalsha(self._release_sha, 1, key, token)
            return list(await pipe.execute(raise_on_error=False))

    def _degraded(self, exc: BaseException) -> None:
        if self.on_degraded:
            self.on_degraded()
        now = time.monotonic()
        if now - self._last_warning > 5:
            self._last_warning = now
            log.warning(
                "redis_degraded",
                error=f"{type(exc).__name__}: {exc}",
                detail="continuing on the database guarantees alone",
            )

    async def acquire(self, order_id: uuid.UUID) -> str | None:
        """A token once the lock is held (renewed until released); None when Redis is
        unreachable (degraded); OrderLocked when another holder kept it for the whole wait."""
        token = token_hex(16)  # unguessable: nobody else can release our lock
        key = self.prefix + str(order_id)

        async def try_set() -> str | None:
            return token if await self._sets.submit((key, token)) else None

        with metrics.dependency_call("redis", "order-lock acquire", _REDIS) as call:
            try:
                held = await polling(
                    try_set, budget_s=self.wait_s, first_wait_s=0.01, max_wait_s=0.2
                )
            except (RedisError, OSError) as exc:
                self._degraded(exc)
                call.outcome = "degraded"
                return None
            call.outcome = "ok" if held is not None else "timeout"
        if held is None:
            log.info("order_lock_wait_expired", order_id=str(order_id))
            raise OrderLocked(f"order {order_id} is locked by another worker")
        self._held[key] = held
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_held())
        return held

    async def _renew_held(self) -> None:
        """Every third of the TTL, renew every lock still held, in one round trip."""
        while self._held:
            await asyncio.sleep(self.ttl_ms / 3000)
            held = list(self._held.items())
            if not held:
                return
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, token in held:
                        pipe.evalsha(self._renew_sha, 1, key, token, self.ttl_ms)
                    results = await pipe.execute(raise_on_error=False)
                if any(isinstance(r, NoScriptError) for r in results):
                    await self.client.script_load(_RENEW)
                    continue
            except (RedisError, OSError) as exc:
                self._degraded(exc)
                continue
            except Exception:
                # Whatever else broke this round, the held locks still need renewing: going
                # on keeps them alive, where ending this task would let every one lapse.
                log.exception("order_lock_renewal_failed")
                continue
            for (key, token), kept in zip(held, results, strict=True):
                if not kept and self._held.get(key) == token:
                    del self._held[key]
                    log.warning(
                        "order_lock_lost",
                        key=key,
                        detail="expired before it was renewed; the database rules still hold",
                    )

    async def release(self, order_id: uuid.UUID, token: str | None) -> None:
        if token is None:
            return
        key = self.prefix + str(order_id)
        if self._held.get(key) == token:
            del self._held[key]
        try:
            await self._releases.submit((self.prefix + str(order_id), token))
        except (RedisError, OSError) as exc:
            self._degraded(exc)


class NoLock:
    """OrderLockPort without Redis: the database alone decides."""

    async def acquire(self, order_id: uuid.UUID) -> str | None:
        return None

    async def release(self, order_id: uuid.UUID, token: str | None) -> None:
        return None
