"""A lean keep-alive HTTP/1.1 GET client (asyncio transports + the httptools response parser)
for the Ordering and Inventory lookups.

Why not a general-purpose client: the worker makes two GETs per command, and their client CPU
was the largest share of a command's cost. Client CPU per GET at 16 concurrent requests on the
dev server, on this machine: httpx with one shared pool ~1.4 ms, aiohttp ~60 µs, this client
~24 µs (uvloop for the last two; see docs/performance.md).

It does only what the lookups need: GET, keep-alive connections in a bounded pool that are
let go after an idle time (a load balancer may drop them silently), Content-Length, chunked
and close-delimited bodies (parsed by httptools, the C parser uvicorn uses) up to a size cap,
http and https (a custom CA, a client certificate), fixed extra headers (credentials), a
deadline per request. A connection is reused only when its answer ended exactly where the
message did: a byte beyond it (a body longer than its Content-Length, an answer nobody asked
for) would be read as the start of the next answer. No redirects, proxies, cookies or
compression.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import cast
from urllib.parse import urlsplit

import httptools

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


class HttpClientError(Exception):
    """A request that got no complete answer: connection refused or lost, or a malformed
    response. (A timeout raises TimeoutError.)"""


class ResponseTooLarge(HttpClientError):
    """The answer grew past the client's size cap: it was cut off and the connection closed."""


class ConnectionWaitTimeout(TimeoutError):
    """Every connection stayed busy until the deadline: the request was never sent."""


class _Slots:
    """At most `size` requests at once; the others wait in line, first come first served, each
    until its own deadline. What an asyncio.Semaphore with asyncio.timeout_at() around its
    acquire gave, for less: at the maximum rate most GETs wait here, and timeout_at's setting up
    and tearing down was ~2% of the worker's samples."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._line: deque[asyncio.Future[None]] = deque()

    async def take(self, deadline: float) -> None:
        """A slot, or ConnectionWaitTimeout once the event loop's clock reaches `deadline`."""
        if self._free and not self._line:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._line.append(turn)
        timer = loop.call_at(deadline, _too_late, turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.give()  # handed a slot as its wait ended (a cancellation): the next's
            elif turn in self._line:
                self._line.remove(turn)
            raise
        finally:
            timer.cancel()

    def give(self) -> None:
        """A slot back: to the first in line still waiting, else free."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


def _too_late(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_exception(ConnectionWaitTimeout("no free connection before the deadline"))


class _Connection(asyncio.Protocol):
    """One TCP connection carrying one request at a time."""

    def __init__(self, max_response_bytes: int) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._max_bytes = max_response_bytes
        self._size = 0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._body: list[bytes] = []
        self._received = False
        self._done = False  # the answer to the current request is complete
        self._framed = False  # it declared its length (Content-Length or chunked)
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio's classes, hence the cast).
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            # Bytes nobody asked for (the rest of an over-long body, an unsolicited answer):
            # the connection's framing is lost, so it is never used again.
            self.close()
            return
        self._received = True
        self._size += len(data)
        if self._size > self._max_bytes:
            self._fail(ResponseTooLarge(f"response larger than {self._max_bytes} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - we never ask to upgrade
            self._fail(HttpClientError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(HttpClientError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self._status >= 200 and not self._framed:
            # HTTP/1.1 (RFC 9112 section 6.3): an answer with neither Content-Length nor
            # chunking ends where the server closes the connection; a reset is not an end.
            answer, self._answer = self._answer, None
            if answer is not None and not answer.done():
                answer.set_result((self._status, b"".join(self._body)))
        self._fail(HttpClientError(f"connection lost: {exc or 'closed by the server'}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._done:  # bytes after the complete answer, in the same read
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status in (204, 304):
            self._framed = True  # never a body (RFC 9112 section 6.3)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue, 103...): the real one follows
            self._body = []
            self._framed = False
            return
        self._done = True
        self.keep_alive = self._parser.should_keep_alive()
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result((self._status, b"".join(self._body)))

    # ours
    def _fail(self, error: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self.close()

    def expire(self) -> None:
        """The request's time is up: its answer fails with TimeoutError, and the connection,
        whose answer may still come, is never used again."""
        if self._answer is not None and not self._answer.done():
            self._fail(TimeoutError("no answer in time"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.closed or self.transport is None:
            raise HttpClientError("connection lost: closed before the request was sent")
        answer = self._answer = asyncio.get_running_loop().create_future()
        self._status, self._body, self._received, self._size = 0, [], False, 0
        self._done = self._framed = False
        try:
            self.transport.write(data)
        except (OSError, RuntimeError) as exc:  # closing underneath us (uvloop raises)
            self._fail(HttpClientError(f"connection lost: {exc}"))  # sets `answer`'s error
        return answer

    @property
    def received_nothing(self) -> bool:
        return not self._received

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """GET `base_url + path` over at most `max_connections` keep-alive connections.

    `ssl_context` (https only; the system's trust store by default) carries a custom CA and a
    client certificate; `headers` are sent with every request (e.g. Authorization); a
    connection idle for `idle_timeout_s` is closed instead of reused; an answer longer than
    `max_response_bytes` (status line, headers and body) fails with ResponseTooLarge."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        headers: Sequence[tuple[str, str]] = (),
        idle_timeout_s: float = 15.0,
        max_response_bytes: int = 1 << 20,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if ssl_context is not None and parts.scheme != "https":
            raise ValueError(f"TLS settings given for a plain http URL: {base_url!r}")
        for name, value in headers:
            if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"header {name!r} is not a valid HTTP header")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self.idle_timeout_s = idle_timeout_s
        self.max_response_bytes = max_response_bytes
        self._extra_headers = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if self.ssl else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if default_port else f"{host}:{self.port}"
        self._idle: deque[_Connection] = deque()
        self._slots = _Slots(max_connections)
        self._open: set[_Connection] = set()
        self._closed = False

    def _request_bytes(self, path: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
        extra = (
            "".join(f"{name}: {value}\r\n" for name, value in headers if _one_line(value))
            if headers
            else ""
        )
        return (
            f"GET {self.base_path}{path} HTTP/1.1\r\n"
            f"Host: {self._host_header}\r\n"
            "Accept: application/json\r\n"
            "User-Agent: payment-worker\r\n"
            f"{self._extra_headers}{extra}\r\n"
        ).encode("latin-1")

    async def _connect(self) -> _Connection:
        if self._closed:
            raise HttpClientError("client closed")
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                partial(_Connection, self.max_response_bytes), self.host, self.port, ssl=self.ssl
            )
        except OSError as exc:  # ssl.SSLError (a certificate refused) is an OSError too
            raise HttpClientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._open.add(connection)
        return connection

    async def get(
        self,
        path: str,
        timeout_s: float,
        *,
        deadline: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, bytes]:
        """(status, body) of GET path; HttpClientError, or TimeoutError.

        A free connection is waited for until `deadline` (event-loop time; by default
        `timeout_s` from now); the request itself then has `timeout_s`, never past the deadline.
        A request that waited in line for a connection has not reached the server: the time
        it waited is the caller's budget, not a slow answer of the server's. `headers` are
        this request's own (a traceparent), beside those sent with every request."""
        data = self._request_bytes(path, headers)
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + timeout_s
        await self._slots.take(deadline)  # all connections busy: in line, until the deadline
        try:
            return await self._exchange(data, min(loop.time() + timeout_s, deadline))
        finally:
            self._slots.give()

    async def _exchange(self, data: bytes, until: float) -> tuple[int, bytes]:
        """One request and its answer over a kept-alive or new connection, by `until` (event-loop
        time) or TimeoutError. The answer's wait is bounded by a timer on the connection rather
        than asyncio.timeout(), whose setting up and tearing down cost more than the rest of a
        request's handling here (~4% of a command's CPU in the stage profile)."""
        loop = asyncio.get_running_loop()
        while True:
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                async with asyncio.timeout_at(until):
                    connection = await self._connect()
            timer = loop.call_at(until, connection.expire)
            try:
                status, body = await connection.request(data)
            except HttpClientError:
                connection.close()
                self._open.discard(connection)
                # A kept-alive connection the server closed meanwhile fails before any
                # byte of an answer: a GET is safe to send again on a new connection.
                if reused and connection.received_nothing:
                    continue
                raise
            except BaseException:  # timeout or cancellation: the answer is lost
                self._open.discard(connection)
                connection.close()
                raise
            finally:
                timer.cancel()
            if connection.keep_alive and not connection.closed:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.append(connection)
            else:
                self._open.discard(connection)
                connection.close()
            return status, body

    def _take_idle(self) -> _Connection | None:
        """The most recently used live connection; those idle too long are closed (the oldest
        sit at the left)."""
        expired = asyncio.get_running_loop().time() - self.idle_timeout_s
        while self._idle and self._idle[0].idle_since < expired:
            stale = self._idle.popleft()
            stale.close()
            self._open.discard(stale)
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._open.discard(connection)
        return None

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def _one_line(value: str) -> bool:
    """A header value that cannot break the request apart (no CR, LF or NUL)."""
    return not any(c in value for c in "\r\n\x00")
