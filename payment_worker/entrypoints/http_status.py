"""The worker's status port: /metrics (prometheus-client's ASGI app) and /health, a Starlette
app served by uvicorn on the worker's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import uvicorn
from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Health = Callable[[], tuple[bool, dict[str, object]]]


def status_app(health: Health) -> Starlette:
    async def health_route(_: Request) -> JSONResponse:
        ok, detail = health()
        return JSONResponse(detail, status_code=200 if ok else 503)

    return Starlette(
        routes=[Route("/health", health_route), Route("/metrics", _AsgiEndpoint(make_asgi_app()))]
    )


class _AsgiEndpoint:
    """An ASGI app as a route's endpoint: Starlette calls a plain function with a Request, an
    object with the ASGI signature (mounted instead, "/metrics" would redirect to "/metrics/")."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGTERM is the worker's: it stops the worker, which closes this server


class StatusServer:
    """uvicorn on `port` until close(); started with start()."""

    def __init__(self, port: int, health: Health, host: str = "0.0.0.0") -> None:
        config = uvicorn.Config(
            status_app(health),
            host=host,
            port=port,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name="status-server")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start (the port taken...)
                raise OSError("status server stopped at start")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
