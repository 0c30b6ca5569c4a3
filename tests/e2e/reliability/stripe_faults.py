"""A fault proxy between the worker and a Stripe stand-in: it forwards every request and fails a
chosen share of them the ways a network between us and Stripe does (500, 429, a connection
reset after the request went upstream, an answer later than the worker waits), and can hold
the answers of confirm requests it has already forwarded, so that a test can kill the worker
while charges are made and not yet answered.

It runs its own event loop in a background thread, so a test drives it from plain code."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

import aiohttp
from aiohttp import web

__all__ = ["Fault", "FaultMix", "StripeFaultProxy", "kind_of", "running_proxy"]


class Fault(StrEnum):
    SERVER_ERROR = "500"  # answered here, nothing forwarded
    RATE_LIMITED = "429"  # answered here, nothing forwarded
    RESET = "reset"  # forwarded, then the connection reset: Stripe acted, the answer is lost
    TIMEOUT = "timeout"  # forwarded, then answered later than the worker waits
    HOLD = "hold"  # a confirm forwarded, its answer held until released


# The PaymentIntents requests the worker makes, by what each does.
_KINDS = (
    ("POST", re.compile(r"/v1/payment_intents"), "create"),
    ("POST", re.compile(r"/v1/payment_intents/pi_\w+/confirm"), "confirm"),
    ("POST", re.compile(r"/v1/payment_intents/pi_\w+/cancel"), "cancel"),
    ("GET", re.compile(r"/v1/payment_intents/pi_\w+"), "retrieve"),
    ("GET", re.compile(r"/v1/payment_intents"), "list"),
)
# Not copied from the stand-in's answer: aiohttp sets these for the answer it writes.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)


def kind_of(method: str, path: str) -> str:
    """create, confirm, cancel, retrieve or list; `other` for any other request."""
    for verb, pattern, kind in _KINDS:
        if method == verb and pattern.fullmatch(path):
            return kind
    return "other"


@dataclass
class FaultMix:
    """The share of requests of each kind that fail each way, drawn per request from a seeded
    generator (so a run can be repeated): {"confirm": {Fault.RESET: 0.1}, ...}; a TIMEOUT
    answer comes `late_by_s` after the stand-in gave it."""

    shares: Mapping[str, Mapping[Fault, float]]
    late_by_s: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        for kind, faults in self.shares.items():
            if sum(faults.values()) > 1:
                raise ValueError(f"the shares of {kind} add up to more than 1")

    def choose(self, kind: str) -> Fault | None:
        """The fault for one request of `kind`, None to pass it through unharmed."""
        draw = self._rng.random()
        for fault, share in self.shares.get(kind, {}).items():
            if draw < share:
                return fault
            draw -= share
        return None


class StripeFaultProxy:
    """Forwards to `upstream`; the mix given to `use()` says which requests fail and how,
    `hold_confirms()` makes every confirm from then on wait, forwarded, for `release()`.
    `counts()` gives the requests seen by kind and the faults injected."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.seen: Counter[str] = Counter()
        self.injected: Counter[tuple[str, Fault]] = Counter()
        self._mix: FaultMix | None = None
        self._holding: asyncio.Event | None = None  # set to release what it holds
        self._held: dict[int, str] = {}  # request -> its idempotency key, while held
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- driven from the test's thread --------------------------------------------------------

    def start(self) -> StripeFaultProxy:
        started = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                failed.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="stripe-fault-proxy", daemon=True)
        self._thread.start()
        started.wait(10)
        if failed:
            raise failed[0]
        if not self.url:
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def use(self, mix: FaultMix | None) -> None:
        """Fail requests from now on as `mix` says (None: forward everything unharmed)."""
        with self._lock:
            self._mix = mix

    def hold_confirms(self) -> None:
        """From now on, every confirm is forwarded and its answer held until release()."""
        with self._lock:
            if self._holding is None:
                self._holding = asyncio.Event()  # bound to the proxy's loop when first awaited

    def release(self) -> None:
        """Answer every held confirm (to whoever still listens) and hold no more."""
        with self._lock:
            holding, self._holding = self._holding, None
        if holding is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(holding.set)

    def held(self) -> int:
        """Payments whose confirm went upstream and waits here, its connection still open."""
        with self._lock:
            return len(set(self._held.values()))

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(requests by kind, faults injected by `kind fault`), as they stand."""
        with self._lock:
            seen = dict(self.seen)
            injected = {f"{kind} {fault}": n for (kind, fault), n in self.injected.items()}
        return seen, injected

    # -- in the proxy's loop --------------------------------------------------------------------

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False
        )
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        # Stopping does not wait for answers still held back (a TIMEOUT's).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        try:
            sent = await request.read()
        except ConnectionResetError:  # the worker went away (killed) before the whole request
            return web.Response(status=499)  # came: nothing forwarded, nobody to answer
        kind = kind_of(request.method, request.path)
        with self._lock:
            self.seen[kind] += 1
            holding = self._holding
            if kind == "confirm" and holding is not None:
                fault: Fault | None = Fault.HOLD
            else:
                fault = self._mix.choose(kind) if self._mix is not None else None
            if fault is not None:
                self.injected[kind, fault] += 1
            late_by_s = self._mix.late_by_s if self._mix is not None else 0.0
        if fault is Fault.SERVER_ERROR:
            return _stripe_error(500, "api_error", "An error occurred with our API.")
        if fault is Fault.RATE_LIMITED:
            return _stripe_error(429, "rate_limit_error", "Too many requests hit the API.")
        status, headers, body = await self._upstream(request, sent)
        if fault is Fault.RESET:
            _reset(request)
            return web.Response(status=status)  # written to nobody: the connection is gone
        if fault is Fault.TIMEOUT:
            await asyncio.sleep(late_by_s)
        elif holding is not None and fault is Fault.HOLD:
            await self._hold(request, holding)
        return web.Response(status=status, headers=headers, body=body)

    async def _upstream(
        self, request: web.Request, sent: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=sent
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return answer.status, kept, body

    async def _hold(self, request: web.Request, released: asyncio.Event) -> None:
        """Until release(), or until the worker's side of the connection is gone."""
        key = request.headers.get("Idempotency-Key", request.path)
        with self._lock:
            self._held[id(request)] = key
        try:
            while not released.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                try:
                    await asyncio.wait_for(released.wait(), 0.05)
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                del self._held[id(request)]


def _stripe_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP reset (SO_LINGER 0), no answer written."""
    transport = request.transport
    if transport is None:
        return
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@contextmanager
def running_proxy(upstream: str) -> Iterator[StripeFaultProxy]:
    """A started StripeFaultProxy in front of `upstream`, stopped on the way out."""
    proxy = StripeFaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
