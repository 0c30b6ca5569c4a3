"""The client CPU of one round trip to each dependency, one request at a time, as the worker
makes them (its libraries, on uvloop): what a command pays per round trip when nothing shares
it with other commands, as at low rates. `make bench` reports it (`roundtrip_cpu_us`); alone:
`.venv/bin/python -m bench.roundtrips` (PostgreSQL and Redis as `make services` runs them, and
a dev Ordering/Inventory server started for the run).

- `socket_floor`: a blocking socket's PING to Redis (the event loop waits for nothing, no
  library): this machine's system calls alone.
- `redis`: redis-py's PING; `postgresql`: psycopg's `SELECT 1` (autocommit);
  `http`: the worker's HTTP client's GET to the dev server (`adapters/http_client.py`).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import psycopg
import redis.asyncio as aioredis
import uvloop

from payment_worker.adapters.http_client import HttpClient
from payment_worker.devstack.broker import free_port, port_open

WARM_UP = 300


async def _cpu_us(n: int, once: Callable[[], Awaitable[object]]) -> float:
    for _ in range(WARM_UP):
        await once()
    started = time.process_time()
    for _ in range(n):
        await once()
    return (time.process_time() - started) * 1e6 / n


async def _figures(dev_url: str, database_url: str, redis_url: str, n: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    parts = urlsplit(redis_url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        async def ping() -> bytes:  # blocking calls: the event loop is not involved
            sock.sendall(b"PING\r\n")
            return sock.recv(64)

        figures["socket_floor"] = await _cpu_us(n, ping)
    client = aioredis.Redis.from_url(redis_url)
    try:
        figures["redis"] = await _cpu_us(n, client.ping)
    finally:
        await client.aclose()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:

        async def select() -> object:
            return await (await conn.execute("SELECT 1")).fetchone()

        figures["postgresql"] = await _cpu_us(n, select)
    http = HttpClient(dev_url, max_connections=1)
    try:
        path = f"/orders/{uuid.uuid4()}"  # not found: a short answer
        figures["http"] = await _cpu_us(n, lambda: http.get(path, 5.0))
    finally:
        await http.close()
    return figures


def measure(dev_url: str, database_url: str, redis_url: str, n: int = 3000) -> dict[str, float]:
    """CPU µs per round trip: the socket floor, then each client's (see the module's text)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        figures = runner.run(_figures(dev_url, database_url, redis_url, n))
    return {k: round(v, 1) for k, v in figures.items()}


def main() -> None:
    from bench.run import DATABASE_URL, REDIS_URL  # the bench's services (run.py imports us)

    port = free_port()
    dev = subprocess.Popen(
        [sys.executable, "-m", "payment_worker.devstack.services", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or dev.poll() is not None:
                raise SystemExit("the dev Ordering/Inventory server did not start")
            time.sleep(0.05)
        for name, us in measure(f"http://127.0.0.1:{port}", DATABASE_URL, REDIS_URL).items():
            print(f"{name:>12}: {us:7.1f} µs of client CPU per round trip")
    finally:
        dev.terminate()
        dev.wait(10)


if __name__ == "__main__":
    main()
