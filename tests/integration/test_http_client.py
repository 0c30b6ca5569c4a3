"""The lean HTTP/1.1 client (adapters/http_client.py) against a scripted TCP server on
loopback: keep-alive reuse, chunked bodies, `Connection: close`, a kept-alive connection the
server dropped, malformed answers, timeouts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from payment_worker.adapters.http_client import (
    ConnectionWaitTimeout,
    HttpClient,
    HttpClientError,
    ResponseTooLarge,
)
from payment_worker.adapters.http_services import JsonService
from payment_worker.bootstrap import http_client_options
from payment_worker.config import load_settings
from payment_worker.service.ports import DependencyUnavailable
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.integration

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}'

Answer = Callable[[bytes, int], bytes | None]  # (request, its number on the connection)


@dataclass
class Server:
    """Answers each request with `answer(request, n)`; None means close without answering.
    After `close_after` answers on a connection, closes it (keep-alive notwithstanding)."""

    answer: Answer
    close_after: int | None = None
    delay_s: float = 0.0  # before each answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(request)
                n += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                reply = self.answer(request, n)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.close_after is not None and n >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(
        answer: Answer, close_after: int | None = None, tls: ssl.SSLContext | None = None
    ) -> Server:
        state = Server(answer, close_after)
        server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=tls)
        state.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return state

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_sequential_requests_share_one_kept_alive_connection(serve: Callable) -> None:
    """Five GETs one after another go over one connection, each answered in full."""
    server = await serve(lambda request, n: OK)
    client = HttpClient(f"http://127.0.0.1:{server.port}/base/")
    try:
        answers = [await client.get(f"/orders/{i}", 2.0) for i in range(5)]
    finally:
        await client.close()

    assert answers == [(200, b'{"a": 1}')] * 5
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /base/orders/0 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]


async def test_chunked_body_is_reassembled(serve: Callable) -> None:
    """A chunked answer comes back as one body."""
    chunked = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n5\r\n: 12}\r\n0\r\n\r\n'
    )
    server = await serve(lambda request, n: chunked)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.get("/x", 2.0) == (200, b'{"a": 12}')
        assert await client.get("/x", 2.0) == (200, b'{"a": 12}')
    finally:
        await client.close()
    assert server.connections == 1


async def test_connection_close_answer_is_not_reused(serve: Callable) -> None:
    """An answer with `Connection: close` ends its connection: the next GET opens another."""
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = await serve(lambda request, n: closing, close_after=1)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        for _ in range(3):
            assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 3


async def test_a_kept_alive_connection_dropped_by_the_server_is_replaced(
    serve: Callable,
) -> None:
    """The server drops a kept-alive connection as the next request arrives on it (no answer,
    no `Connection: close` said): that GET is sent again on a new connection, not failed."""
    server = await serve(lambda request, n: OK if n == 1 else None)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 2
    assert len(server.requests) == 3  # the second GET was sent twice


async def test_status_and_body_of_an_error_answer_are_returned(serve: Callable) -> None:
    """Non-200 answers are answers: status and body come back for the caller to judge."""
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
    server = await serve(lambda request, n: not_found)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.get("/x", 2.0) == (404, b"not found")
    finally:
        await client.close()


async def test_malformed_answer_raises_http_client_error(serve: Callable) -> None:
    """Bytes that are not HTTP raise HttpClientError (a failed try, for the caller to retry)."""
    server = await serve(lambda request, n: b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(HttpClientError, match="malformed"):
            await client.get("/x", 2.0)
    finally:
        await client.close()


async def test_closed_without_an_answer_on_a_new_connection_raises(serve: Callable) -> None:
    """A fresh connection closed before any answer raises HttpClientError: it is not sent again
    forever (only a reused connection gets one more try)."""
    server = await serve(lambda request, n: None)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(HttpClientError, match="connection lost"):
            await client.get("/x", 2.0)
    finally:
        await client.close()
    assert server.connections == 1


async def test_refused_connection_raises_http_client_error() -> None:
    """Nobody listening: HttpClientError naming where it tried to connect."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = HttpClient(f"http://127.0.0.1:{port}")
    with pytest.raises(HttpClientError, match=f"127.0.0.1:{port}"):
        await client.get("/x", 2.0)
    await client.close()


async def test_a_slow_answer_times_out_and_its_connection_is_dropped(serve: Callable) -> None:
    """No answer within the timeout raises TimeoutError; the connection is not reused (its late
    answer would be taken for the next request's)."""
    slow: dict[str, bool] = {"first": True}

    def answer(request: bytes, n: int) -> bytes | None:
        if slow.pop("first", False):
            return b""  # send nothing for this request
        return OK

    server = await serve(answer)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(TimeoutError):
            await client.get("/x", 0.3)
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 2


async def test_at_most_max_connections_are_open_at_once(serve: Callable) -> None:
    """Twenty concurrent GETs with max_connections=3 use no more than three connections."""

    def answer(request: bytes, n: int) -> bytes:
        return OK

    server = await serve(answer)
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_connections=3)
    try:
        answers = await asyncio.gather(*[client.get("/x", 5.0) for _ in range(20)])
    finally:
        await client.close()
    assert answers == [(200, b'{"a": 1}')] * 20
    assert server.connections <= 3


def test_a_url_that_is_not_http_is_refused() -> None:
    """Only http and https base URLs are accepted, with a clear message."""
    with pytest.raises(ValueError, match="not an http"):
        HttpClient("ftp://example.com")


async def test_an_interim_answer_is_skipped_for_the_real_one(serve: Callable) -> None:
    """A 1xx answer (103 Early Hints) before the real one is not taken as the answer, and the
    next request on the connection gets its own answer."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    server = await serve(lambda request, n: early + OK.replace(b"1}", str(n).encode() + b"}"))
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
        assert await client.get("/x", 2.0) == (200, b'{"a": 2}')
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("timeout_s", "deadline_in_s"),
    [(0.3, None), (5.0, 0.3)],
    ids=["deadline-is-the-timeout", "deadline-before-the-timeout"],
)
async def test_waiting_for_a_free_connection_ends_at_the_deadline(
    serve: Callable, timeout_s: float, deadline_in_s: float | None
) -> None:
    """With its only connection held by a request that gets no answer, a second GET gives up
    at its deadline (by default its timeout from now) with ConnectionWaitTimeout, a
    TimeoutError, instead of waiting for the first one to end: it was never sent."""

    def answer(request: bytes, n: int) -> bytes:
        return b"" if b"/hang" in request else OK

    server = await serve(answer)
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_connections=1)
    loop = asyncio.get_running_loop()
    try:
        hanging = asyncio.ensure_future(client.get("/hang", 3.0))
        await asyncio.sleep(0.05)
        started = loop.time()
        deadline = started + deadline_in_s if deadline_in_s is not None else None
        with pytest.raises(ConnectionWaitTimeout):
            await client.get("/x", timeout_s, deadline=deadline)
        assert loop.time() - started < 1.0
        with pytest.raises(TimeoutError):
            await hanging
    finally:
        await client.close()

    assert len(server.requests) == 1  # the second GET never reached the server


async def test_a_request_waiting_in_line_for_a_connection_may_wait_until_its_deadline(
    serve: Callable,
) -> None:
    """Eight concurrent GETs over one connection, each answered in 0.1 s, with a 0.3 s timeout
    and a 3 s deadline: all are answered. The later ones waited in line longer than their
    timeout, but the timeout is for the server's answer; the wait is bounded by the deadline."""
    server = await serve(lambda request, n: OK)
    server.delay_s = 0.1
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_connections=1)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        deadline = started + 3.0
        answers = await asyncio.gather(
            *(client.get("/x", 0.3, deadline=deadline) for _ in range(8))
        )
        elapsed = loop.time() - started
    finally:
        await client.close()

    assert answers == [(200, b'{"a": 1}')] * 8
    assert elapsed >= 0.75  # one after another on the one connection: the last waited 0.7 s
    assert server.connections == 1


class _BrokenTransport:
    """A transport whose writes fail, as one closing underneath the client does."""

    def __init__(self, real: asyncio.BaseTransport) -> None:
        self.real = real

    def write(self, data: bytes) -> None:
        raise OSError("broken pipe")

    def close(self) -> None:
        self.real.close()


async def test_a_request_whose_write_fails_is_sent_again_on_a_new_connection(
    serve: Callable,
) -> None:
    """A kept-alive connection whose write fails: the GET is a connection error (retryable),
    sent once more on a new connection, never a TypeError from a missing answer."""
    server = await serve(lambda request, n: OK)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert (await client.get("/x", 2.0))[0] == 200
        [idle] = client._idle
        idle.transport = _BrokenTransport(idle.transport)  # type: ignore[assignment]
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_write_failure_on_a_new_connection_raises_http_client_error(
    serve: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write of a fresh connection fails: HttpClientError (the caller retries within its
    budget), not a TypeError."""
    from payment_worker.adapters import http_client

    server = await serve(lambda request, n: OK)
    original = http_client._Connection.connection_made

    def broken(self: http_client._Connection, transport: asyncio.BaseTransport) -> None:
        original(self, transport)
        self.transport = _BrokenTransport(transport)  # type: ignore[assignment]

    monkeypatch.setattr(http_client._Connection, "connection_made", broken)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(HttpClientError, match="broken pipe"):
            await client.get("/x", 2.0)
    finally:
        await client.close()


# -- production settings: TLS, credentials, idle expiry, size cap -------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def ordering_client(port: int, **variables: object) -> HttpClient:
    """The client bootstrap builds for Ordering from PAYMENT_ORDERING_* settings."""
    settings = load_settings(ordering_url=f"https://127.0.0.1:{port}", **variables)
    return HttpClient(settings.ordering_url, **http_client_options(settings, "ordering"))


async def test_https_with_a_custom_ca_file_is_trusted(serve: Callable, pki: Pki) -> None:
    """A server whose certificate our CA signed is reached over TLS with
    PAYMENT_ORDERING_CA_FILE; its answers come back as over plain http."""
    server = await serve(lambda request, n: OK, tls=pki.server_context())
    client = ordering_client(server.port, ordering_ca_file=pki.ca_file)
    try:
        assert await client.get("/orders/1", 2.0) == (200, b'{"a": 1}')
        assert await client.get("/orders/2", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 1  # kept alive over TLS too


@pytest.mark.parametrize("trust", ["system store", "another CA"])
async def test_a_server_certificate_our_ca_did_not_sign_is_refused(
    serve: Callable, pki: Pki, trust: str
) -> None:
    """Without our CA (the system's trust store, or a CA that signed something else) the
    server's certificate fails verification: an error, and no request is sent."""
    server = await serve(lambda request, n: OK, tls=pki.server_context())
    variables = {"ordering_ca_file": pki.other_ca_file} if trust == "another CA" else {}
    client = ordering_client(server.port, **variables)
    try:
        with pytest.raises(HttpClientError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get("/orders/1", 2.0)
    finally:
        await client.close()
    assert server.requests == []


async def test_a_client_certificate_is_presented_when_the_server_demands_one(
    serve: Callable, pki: Pki
) -> None:
    """Mutual TLS: with PAYMENT_ORDERING_CERT_FILE/KEY_FILE the server accepts us; without
    them the same server refuses the connection."""
    server = await serve(lambda request, n: OK, tls=pki.server_context(require_client_cert=True))
    with_cert = ordering_client(
        server.port,
        ordering_ca_file=pki.ca_file,
        ordering_cert_file=pki.client_cert,
        ordering_key_file=pki.client_key,
    )
    without = ordering_client(server.port, ordering_ca_file=pki.ca_file)
    try:
        assert await with_cert.get("/orders/1", 2.0) == (200, b'{"a": 1}')
        with pytest.raises(HttpClientError):
            await without.get("/orders/1", 2.0)
    finally:
        await with_cert.close()
        await without.close()
    assert len(server.requests) == 1


async def test_the_credential_header_is_sent_with_every_request(serve: Callable) -> None:
    """PAYMENT_ORDERING_AUTHORIZATION goes out as the Authorization header of each GET."""
    server = await serve(lambda request, n: OK)
    settings = load_settings(
        ordering_url=f"http://127.0.0.1:{server.port}", ordering_authorization="Bearer s3cr3t-t0ken"
    )
    client = HttpClient(settings.ordering_url, **http_client_options(settings, "ordering"))
    try:
        await client.get("/orders/1", 2.0)
        await client.get("/orders/2", 2.0)
    finally:
        await client.close()
    assert [b"\r\nAuthorization: Bearer s3cr3t-t0ken\r\n" in r for r in server.requests] == [
        True,
        True,
    ]


@pytest.mark.parametrize(("idle_timeout_s", "connections"), [(0.2, 2), (30.0, 1)])
async def test_a_connection_idle_past_the_expiry_is_not_reused(
    serve: Callable, idle_timeout_s: float, connections: int
) -> None:
    """A kept-alive connection left idle longer than the expiry is closed and a new one
    opened (a load balancer may have dropped it silently); within the expiry it is reused."""
    server = await serve(lambda request, n: OK)
    client = HttpClient(f"http://127.0.0.1:{server.port}", idle_timeout_s=idle_timeout_s)
    try:
        await client.get("/x", 2.0)
        await asyncio.sleep(0.5)
        await client.get("/x", 2.0)
    finally:
        await client.close()
    assert server.connections == connections


async def test_an_answer_past_the_size_cap_fails_and_is_not_asked_again(serve: Callable) -> None:
    """A body larger than PAYMENT_HTTP_MAX_RESPONSE_BYTES is cut off (ResponseTooLarge); the
    service call fails at once (a bigger answer will not shrink on another try)."""
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    server = await serve(lambda request, n: big)
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_response_bytes=2048)
    try:
        with pytest.raises(ResponseTooLarge, match="2048 bytes"):
            await client.get("/x", 2.0)
        uncapped = HttpClient(f"http://127.0.0.1:{server.port}")
        assert await uncapped.get("/x", 2.0) == (200, b"x" * 5000)
        await uncapped.close()
    finally:
        await client.close()
    service = JsonService("Ordering", f"http://127.0.0.1:{server.port}", max_response_bytes=2048)
    await service.open()
    try:
        with pytest.raises(DependencyUnavailable, match="larger than 2048 bytes"):
            await service.get_json("/orders/1")
    finally:
        await service.close()
    assert len(server.requests) == 3  # one each: the capped try was not repeated


# -- message boundaries ------------------------------------------------------------------------

# An answer that starts where a 2-byte body should have ended: a client that kept reading the
# connection would take the next real answer's first 11 bytes as this one's body.
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"
TOO_LONG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" + SMUGGLED


async def test_a_connection_with_bytes_past_the_answer_is_not_reused(serve: Callable) -> None:
    """A body longer than its Content-Length: the answer is the declared body, and the
    connection holding the extra bytes is never used again, so the next GET gets its own
    answer on a new connection."""
    asked = iter(range(1000))
    server = await serve(lambda request, n: TOO_LONG if next(asked) == 0 else OK)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.get("/x", 2.0) == (200, b"{}")
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 2


async def test_bytes_arriving_after_the_answer_end_its_connection() -> None:
    """Extra bytes that arrive a moment after a complete answer (a separate segment, while
    the connection sits idle) close it: the next GET is answered on a new connection, never
    with those bytes."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" if first else OK)
                await writer.drain()
                if first:
                    await asyncio.sleep(0.05)
                    writer.write(SMUGGLED)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = HttpClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert await client.get("/x", 2.0) == (200, b"{}")
        await asyncio.sleep(0.2)
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert connections == 2


async def test_a_body_delimited_by_closing_the_connection_is_read(serve: Callable) -> None:
    """HTTP/1.1 (RFC 9112 section 6.3): an answer with neither Content-Length nor chunking
    ends where the server closes the connection; that body is the answer, and the next GET
    opens a new connection."""
    until_close = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": 1}'
    server = await serve(lambda request, n: until_close, close_after=1)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
        assert await client.get("/x", 2.0) == (200, b'{"a": 1}')
    finally:
        await client.close()
    assert server.connections == 2


async def test_a_body_cut_short_of_its_content_length_still_fails(serve: Callable) -> None:
    """A declared Content-Length is not close-delimited: a connection closed before the body
    is complete raises HttpClientError, never a truncated answer."""
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"a": 1}'
    server = await serve(lambda request, n: cut, close_after=1)
    client = HttpClient(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(HttpClientError, match="connection lost"):
            await client.get("/x", 2.0)
    finally:
        await client.close()
