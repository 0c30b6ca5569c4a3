"""Per-order locks in Redis (token + expiry). Redis down means degraded, never stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError

from payment_worker import metrics
from payment_worker.adapters.coalesce import Coalescer
from payment_worker.domain.ids import token_hex
from payment_worker.retrying import polling
from payment_worker.service.ports import OrderLocked

log = structlog.get_logger("payment_worker.redis")

_REDIS = {"db.system.name": "redis"}
# Each script serves a whole batch of locks in one command: a pipeline of one command per lock
# cost the worker about twice the CPU per command in redis-py's packing and parsing.
_SET = """
local result = {}
for i, key in ipairs(KEYS) do
  result[i] = redis.call('set', key, ARGV[i], 'NX', 'PX', ARGV[#KEYS + 1]) and 1 or 0
end
return result
"""
_RELEASE = """
local result = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then result[i] = redis.call('del', key)
  else result[i] = 0 end
end
return result
"""
_RENEW = """
local result = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then
    result[i] = redis.call('pexpire', key, ARGV[#KEYS + 1])
  else result[i] = 0 end
end
return result
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
        self._scripts = {
            script: client.register_script(script).sha for script in (_SET, _RELEASE, _RENEW)
        }
        # Held locks (key -> token), renewed together by one task: a crashed holder's lock
        # lapses within one TTL, shorter than a waiter's wait, so its orders move on.
        self._held: dict[str, str] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        # Many commands lock and unlock at once: one script call serves them all, one batch
        # at a time, so that the batches grow with the load (as the database steps do).
        self._sets = Coalescer(self._set_batch, max_batch=512, parallel=1)
        self._releases = Coalescer(self._release_batch, max_batch=512, parallel=1)

    async def _script(self, script: str, keys: list[str], args: list[str | int]) -> list[int]:
        """One of the scripts over `keys` (one result each), by EVALSHA: a registered script
        run through redis-py first asks Redis whether it knows it (SCRIPT EXISTS), one more
        round trip. Redis forgets scripts when it restarts: then it is loaded and run again."""
        try:
            results = await self._evalsha(script, keys, args)
        except ResponseError as exc:
            if "CROSSSLOT" not in str(exc):
                raise
            # A cluster endpoint takes a script's keys only within one hash slot: one call
            # per key there (the batch's round trip is lost, not the lock).
            shared = args[len(keys) :]
            results = [
                (await self._evalsha(script, [key], [args[i], *shared]))[0]
                for i, key in enumerate(keys)
            ]
        if not isinstance(results, list) or len(results) != len(keys):
            raise RedisError(
                f"the lock script answered {type(results).__name__}, not one result per key"
            )
        return results

    async def _evalsha(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        sha, arguments = self._scripts[script], [*keys, *(str(a) for a in args)]
        try:
            return await self.client.evalsha(sha, len(keys), *arguments)
        except NoScriptError:
            await self.client.script_load(script)
            return await self.client.evalsha(sha, len(keys), *arguments)

    async def _set_batch(self, items: list[tuple[str, str]]) -> list[bool | BaseException]:
        try:
            results = await self._script(
                _SET, [key for key, _ in items], [*(token for _, token in items), self.ttl_ms]
            )
        except (RedisError, OSError) as exc:
            return [exc] * len(items)
        return [r == 1 for r in results]

    async def _release_batch(self, items: list[tuple[str, str]]) -> list[BaseException | None]:
        try:
            await self._script(_RELEASE, [key for key, _ in items], [token for _, token in items])
        except (RedisError, OSError) as exc:
            return [exc] * len(items)
        return [None] * len(items)

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
                results = await self._script(
                    _RENEW, [key for key, _ in held], [*(token for _, token in held), self.ttl_ms]
                )
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
            await self._releases.submit((key, token))
        except (RedisError, OSError) as exc:
            self._degraded(exc)


class NoLock:
    """OrderLockPort without Redis: the database alone decides."""

    async def acquire(self, order_id: uuid.UUID) -> str | None:
        return None

    async def release(self, order_id: uuid.UUID, token: str | None) -> None:
        return None
