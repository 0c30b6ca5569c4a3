"""Waiting for a dependency at start-up, and saying so truthfully: which one, by the variable
that points at it and where (never a password), the last error, and how often it is tried."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from payment_worker.adapters.avro_codec import RegistryUnavailable
from payment_worker.config import Settings

log = structlog.get_logger("payment_worker.startup")


@dataclass(frozen=True)
class Dependency:
    name: str  # e.g. "postgresql"
    variable: str  # the setting that points at it, e.g. "PAYMENT_DATABASE_URL"
    target: str  # where, without credentials, e.g. "127.0.0.1:5432/postgres"


def where(url: str) -> str:
    """host:port/path of a URL, without user or password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path.rstrip('/')}"


async def wait_for(
    dependency: Dependency,
    check: Callable[[], Awaitable[str | None]],
    stop: asyncio.Event,
    every_s: float = 2.0,
    remind_s: float = 60.0,
) -> bool:
    """Try `check` (None: ready; else the error) until it passes; False if asked to stop.

    One warning when the waiting starts, another when the error changes or every `remind_s`,
    one info line when the dependency is there; never a line per try."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    tries, last_error, logged_at = 0, None, float("-inf")
    while not stop.is_set():
        tried_at = loop.time()
        error = await check()
        if error is None:
            if tries:
                log.info(
                    "dependency_ready",
                    dependency=dependency.name,
                    waited_s=round(loop.time() - began, 1),
                )
            return True
        tries += 1
        took = loop.time() - tried_at
        if error != last_error or loop.time() - logged_at >= remind_s:
            log.warning(
                "waiting_for_dependency",
                dependency=dependency.name,
                variable=dependency.variable,
                target=dependency.target,
                error=error,
                tries=tries,
                retry_every_s=round(max(every_s, took), 1),
            )
            last_error, logged_at = error, loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, every_s - took))
    return False


async def load_schemas(
    settings: Settings, load: Callable[[], Awaitable[None]], stop: asyncio.Event | None = None
) -> bool:
    """Run `load` (the schema registry's ids for our subjects) until the registry answers; a
    RegistryRefused (credentials, a subject not registered) stops start-up with its line.
    False if asked to stop meanwhile."""
    if not settings.schema_registry_url:
        await load()
        return True
    dependency = Dependency(
        "schema registry", "PAYMENT_SCHEMA_REGISTRY_URL", where(settings.schema_registry_url)
    )

    async def problem() -> str | None:
        try:
            await load()
        except RegistryUnavailable as exc:
            return str(exc)
        return None

    return await wait_for(dependency, problem, stop or asyncio.Event())
