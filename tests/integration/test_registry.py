"""The codec's registry port (adapters/avro_codec.py) with confluent-kafka's real async client
against a stand-in registry over real HTTP: credentials (basic, bearer), TLS with our own CA,
auto-registration on and off, and the registry's error codes told apart."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from payment_worker.adapters.avro_codec import (
    AvroCodec,
    DecodeError,
    RegistryRefused,
    RegistryUnavailable,
    SchemaSet,
)
from payment_worker.bootstrap import codec as make_codec
from payment_worker.config import load_settings
from payment_worker.domain.model import Outcome, reply
from payment_worker.domain.routing import ReplyRoute
from payment_worker.domain.validation import command_from_record
from payment_worker.service.messages import MessageFactory, Topics
from payment_worker.testing import command_record
from tests.integration.registry_standin import RegistryStandIn, serve_standin
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.integration

Serve = Callable[..., Awaitable[str]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    running: list[Any] = []

    async def start(standin: RegistryStandIn, tls: Pki | None = None) -> str:
        files = (str(tls.server_cert), str(tls.server_key)) if tls else None
        server, task, url = await serve_standin(standin, files)
        running.append((server, task))
        return url

    yield start
    for server, task in running:
        server.should_exit = True
        await task


async def codec_for(url: str, **variables: Any) -> AvroCodec:
    """The codec bootstrap builds from PAYMENT_SCHEMA_REGISTRY_* settings."""
    return make_codec(load_settings(schema_registry_url=url, **variables))


async def round_trip(url: str, **variables: Any) -> None:
    """Encode a command as the shim does (subject loaded first), decode it in a second
    process's codec as the worker does (writer schema fetched by id): the same record."""
    writer, reader = await codec_for(url, **variables), await codec_for(url, **variables)
    record = command_record()
    try:
        await writer.load("ProcessPayment", "process-payment")
        value = writer.encode("ProcessPayment", record, "process-payment")
        assert value[:1] == b"\x00"
        await reader.load_value(value)
        assert reader.decode("ProcessPayment", value) == record
    finally:
        await writer.close()
        await reader.close()


async def test_basic_auth_is_sent_and_a_command_round_trips(serve: Serve) -> None:
    """With PAYMENT_SCHEMA_REGISTRY_USER_INFO the registry accepts us: the schema is
    registered under `<topic>-value` and a second codec reads the record by its id."""
    standin = RegistryStandIn(user_info="payments:pa55word")
    url = await serve(standin)
    await round_trip(url, schema_registry_user_info="payments:pa55word")
    assert ("POST", "/subjects/process-payment-value/versions") in standin.requests
    assert ("GET", "/schemas/ids/100") in standin.requests


@pytest.mark.parametrize(
    "variables",
    [{}, {"schema_registry_user_info": "payments:wrong"}],
    ids=["no credentials", "wrong password"],
)
async def test_refused_credentials_stop_start_up_with_a_line_naming_the_variables(
    serve: Serve, variables: dict[str, str]
) -> None:
    """A 401 is not an outage to wait out: RegistryRefused, naming what to check."""
    url = await serve(RegistryStandIn(user_info="payments:pa55word"))
    codec = await codec_for(url, **variables)
    try:
        with pytest.raises(RegistryRefused, match="PAYMENT_SCHEMA_REGISTRY_USER_INFO"):
            await codec.load("ProcessPayment", "process-payment")
    finally:
        await codec.close()


async def test_a_bearer_token_is_sent_as_the_authorization_header(serve: Serve) -> None:
    """PAYMENT_SCHEMA_REGISTRY_BEARER_TOKEN: accepted with the right token, refused without."""
    token = "t0k3n-for-the-registry"  # noqa: S105  (the stand-in's, made up here)
    url = await serve(RegistryStandIn(bearer_token=token))
    await round_trip(url, schema_registry_bearer_token=token)
    codec = await codec_for(url, schema_registry_bearer_token=token + "-not")
    try:
        with pytest.raises(RegistryRefused, match="HTTP 401"):
            await codec.load("ProcessPayment", "process-payment")
    finally:
        await codec.close()


async def test_a_registry_over_tls_is_trusted_through_the_ca_file(serve: Serve, pki: Pki) -> None:
    """An https registry whose certificate our CA signed: reached with
    PAYMENT_SCHEMA_REGISTRY_CA_FILE; without it the certificate fails verification."""
    url = await serve(RegistryStandIn(), tls=pki)
    assert url.startswith("https://")
    await round_trip(url, schema_registry_ca_file=pki.ca_file)
    codec = await codec_for(url)
    try:
        with pytest.raises(RegistryUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await codec.load("ProcessPayment", "process-payment")
    finally:
        await codec.close()


async def test_without_auto_register_a_subject_with_no_version_is_refused(serve: Serve) -> None:
    """Registration locked down and nothing registered: one line saying what to do, and the
    codec never tried to register."""
    standin = RegistryStandIn()
    url = await serve(standin)
    codec = await codec_for(url, schema_registry_auto_register="false")
    try:
        with pytest.raises(RegistryRefused, match="PAYMENT_SCHEMA_REGISTRY_AUTO_REGISTER"):
            await codec.load("PaymentReply", "payment-replies")
    finally:
        await codec.close()
    assert [method for method, _ in standin.requests] == ["GET"]


async def test_without_auto_register_the_latest_registered_version_is_used(serve: Serve) -> None:
    """The platform registered the subject (here: the contract's schema with one optional
    field more, as the latest version): records are written with that version's id and schema,
    never registered by us, and read back by a worker whose schema lacks the field."""
    standin = RegistryStandIn()
    ours = json.loads(SchemaSet().text["ProcessPayment"])
    note = {"name": "note", "type": ["null", "string"], "default": None}
    evolved = {**ours, "fields": [*ours["fields"], note]}
    standin.register("process-payment-value", SchemaSet().text["ProcessPayment"])
    latest = standin.register("process-payment-value", json.dumps(evolved))
    url = await serve(standin)
    writer = await codec_for(url, schema_registry_auto_register="false")
    reader = await codec_for(url, schema_registry_auto_register="false")
    record = command_record()
    try:
        await writer.load("ProcessPayment", "process-payment")
        value = writer.encode("ProcessPayment", {**record, "note": "x"}, "process-payment")
        assert value[1:5] == struct.pack(">I", latest)
        await reader.load_value(value)
        decoded = reader.decode("ProcessPayment", value)
    finally:
        await writer.close()
        await reader.close()
    assert decoded == record  # the reader's schema has no `note`: resolution drops it
    assert not [path for method, path in standin.requests if method == "POST"]


async def test_a_schema_id_the_registry_does_not_know_is_a_dead_letter_asked_once(
    serve: Serve,
) -> None:
    """40403 for a forged id: decode says `unknown-schema` (the record is dead-lettered, not
    waited on), and the answer is remembered: a flood of such records asks once."""
    standin = RegistryStandIn()
    url = await serve(standin)
    codec = await codec_for(url)
    forged = b"\x00" + struct.pack(">I", 4242) + b"\x02ab"
    try:
        for _ in range(3):
            await codec.load_value(forged)
            with pytest.raises(DecodeError) as info:
                codec.decode("ProcessPayment", forged)
            assert info.value.reason == "unknown-schema"
    finally:
        await codec.close()
    assert standin.requests == [("GET", "/schemas/ids/4242")]


async def test_a_registry_answering_503_is_an_outage_to_wait_out(serve: Serve) -> None:
    """5xx: RegistryUnavailable (the worker waits and tries again), for loading a subject and
    for fetching a writer schema alike; never a dead letter."""
    url = await serve(RegistryStandIn(fail_with=503))
    codec = await codec_for(url)
    try:
        with pytest.raises(RegistryUnavailable):
            await codec.load("ProcessPayment", "process-payment")
        with pytest.raises(RegistryUnavailable):
            await codec.load_value(b"\x00" + struct.pack(">I", 7) + b"\x02ab")
    finally:
        await codec.close()


async def test_a_reply_to_a_callers_topic_uses_the_default_replies_subject(serve: Serve) -> None:
    """Contract section 3: after start-up loads the worker's own subjects, a reply to a
    caller's topic (as the reconciler writes one for a stale payment, with no load of that
    topic) is framed with the schema id of `<replies>-value` and reads back; the registry gets
    no subject of the caller's topic, nor of anything but the worker's own topics."""
    standin = RegistryStandIn()
    url = await serve(standin)
    writer, reader = await codec_for(url), await codec_for(url)
    topics = Topics()
    messages = MessageFactory(writer, topics)
    command = command_from_record(command_record())
    try:
        await messages.load()
        replies_id = standin.subjects[f"{topics.replies}-value"][-1]
        for topic in ("caller-replies", "spring-replies"):
            route = ReplyRoute(topic, None, "corr-1")
            message = messages.reply(command, route, reply(Outcome.ORDER_NOT_FOUND))
            assert message.topic == topic
            assert message.value is not None and message.value[:5] == b"\x00" + struct.pack(
                ">I", replies_id
            )
            await reader.load_value(message.value)
            decoded = reader.decode("PaymentReply", message.value)
            assert (decoded["commandId"], decoded["outcome"]) == (
                command.command_id,
                "ORDER_NOT_FOUND",
            )
    finally:
        await writer.close()
        await reader.close()
    own = {f"{name}-value" for name in (topics.replies, topics.succeeded, topics.failed)}
    assert set(standin.subjects) == own
