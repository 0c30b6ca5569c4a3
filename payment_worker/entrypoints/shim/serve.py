"""The shim served by uvicorn until SIGTERM, over TLS when certificate files are set."""

from __future__ import annotations

import ssl

import structlog
from starlette.types import ASGIApp

from payment_worker.adapters.avro_codec import AvroCodec
from payment_worker.config import Settings
from payment_worker.entrypoints.shim.app import create_app, with_api_keys
from payment_worker.entrypoints.shim.handling import ShimClients
from payment_worker.exceptions import ConfigurationError

log = structlog.get_logger("payment_worker.shim")


def tls_files(settings: Settings) -> tuple[str, str] | None:
    """The shim's certificate and key files, checked now: a bad pair is one start-up line."""
    if settings.shim_tls_cert_file is None or settings.shim_tls_key_file is None:
        return None
    cert, key = str(settings.shim_tls_cert_file), str(settings.shim_tls_key_file)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            "PAYMENT_SHIM_TLS_CERT_FILE / PAYMENT_SHIM_TLS_KEY_FILE: not a PEM certificate"
            f" and its private key ({exc})"
        ) from None
    return cert, key


def served_app(settings: Settings, codec: AvroCodec, clients: ShimClients) -> ASGIApp:
    """What uvicorn serves: the FastAPI app, every route included, behind the API-key door."""
    return with_api_keys(
        create_app(settings, codec, clients),
        settings.api_key_digests(),
        metrics_public=settings.shim_metrics_public,
    )


async def serve(settings: Settings, the_codec: AvroCodec, clients: ShimClients) -> None:
    """The shim until SIGTERM: the registry's schema for commands loaded (waited for), then
    uvicorn on PAYMENT_SHIM_PORT, over TLS when certificate files are set. The codec and the
    clients are the composition root's; the codec is closed here."""
    import uvicorn

    from payment_worker.entrypoints.startup import load_schemas

    tls = tls_files(settings)
    try:
        if not await load_schemas(
            settings, lambda: the_codec.load("ProcessPayment", settings.topic_commands)
        ):
            return
        config = uvicorn.Config(
            served_app(settings, the_codec, clients),
            host="0.0.0.0",  # noqa: S104  (a service port, reached from other hosts)
            port=settings.shim_port,
            log_level="warning",
            log_config=None,  # uvicorn's lines go through our handler (logs.py)
            access_log=False,
            timeout_keep_alive=75,  # callers' pools keep connections; do not cut them at 5 s
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        log.info(
            "shim_listening",
            port=settings.shim_port,
            tls=bool(tls),
            api_keys=len(settings.shim_api_keys),
        )
        await uvicorn.Server(config).serve()
    finally:
        await the_codec.close()
