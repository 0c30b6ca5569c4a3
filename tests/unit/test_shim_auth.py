"""The shim's door (entrypoints/shim/app.py `with_api_keys`): which paths need a key, how a
key is presented, what a refusal looks like. On an ASGI app that answers 200 to whatever gets
in."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from payment_worker.config import load_settings
from payment_worker.entrypoints.shim import with_api_keys

KEYS = "first-key-0123456789,second-key-0123456789"


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"in"})


async def status_of(path: str, *, metrics_public: bool = False, **headers: str) -> int:
    settings = load_settings(shim_api_keys=KEYS, shim_metrics_public=metrics_public)
    app = with_api_keys(inner, settings.api_key_digests(), metrics_public=metrics_public)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
        method = "POST" if path == "/payments" else "GET"
        return (await client.request(method, path, headers=headers)).status_code


@pytest.mark.parametrize(
    "authorization",
    ["Bearer first-key-0123456789", "Bearer second-key-0123456789", "bearer first-key-0123456789"],
)
async def test_any_configured_key_as_a_bearer_token_gets_in(authorization: str) -> None:
    """Each configured key, sent as a bearer token (scheme in any case), is let through."""
    assert await status_of("/payments", authorization=authorization) == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer "},
        {"authorization": "Bearer first-key-012345678"},  # one character short
        {"authorization": "Bearer first-key-0123456789x"},
        {"authorization": "Basic Zmlyc3Qta2V5LTAxMjM0NTY3ODk="},
        {"authorization": "first-key-0123456789"},
        {"x-api-key": "first-key-0123456789"},
    ],
)
async def test_no_key_or_a_wrong_one_is_401_with_a_challenge(headers: dict[str, str]) -> None:
    """No key, a near miss, another scheme or another header: 401, a challenge, the contract's
    body."""
    settings = load_settings(shim_api_keys=KEYS)
    app = with_api_keys(inner, settings.api_key_digests(), metrics_public=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
        answer = await client.post("/payments", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="payment-shim"'
    assert answer.json() == {
        "success": False,
        "payment": None,
        "errorMessage": "Unauthorized: send an API key as 'Authorization: Bearer <key>'",
    }


async def test_health_stays_open_and_metrics_follows_its_setting() -> None:
    """/health needs no key; /metrics only when PAYMENT_SHIM_METRICS_PUBLIC says so; the rest
    always."""
    assert await status_of("/health") == 200
    assert await status_of("/metrics") == 401
    assert await status_of("/metrics", metrics_public=True) == 200
    assert await status_of("/openapi.json", metrics_public=True) == 401


async def test_without_keys_the_door_is_open() -> None:
    """PAYMENT_SHIM_API_KEYS unset: the app is served as it is (a mesh may authenticate)."""
    assert with_api_keys(inner, [], metrics_public=False) is inner


def test_shim_tls_files_that_are_not_a_certificate_and_key_stop_start_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Certificate files that do not load are one start-up line naming both variables."""
    from payment_worker.entrypoints.shim import tls_files
    from payment_worker.exceptions import ConfigurationError

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("junk\n")
    key.write_text("junk\n")
    settings = load_settings(shim_tls_cert_file=cert, shim_tls_key_file=key)
    with pytest.raises(ConfigurationError, match=r"^PAYMENT_SHIM_TLS_CERT_FILE / "):
        tls_files(settings)
    assert tls_files(load_settings()) is None
