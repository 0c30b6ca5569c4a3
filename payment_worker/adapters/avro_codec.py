"""Avro encoding of the contract's records: single-object encoding and Confluent framing."""

from __future__ import annotations

import copy
import io
import json
import struct
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import structlog
from fastavro.schema import fingerprint, to_parsing_canonical_form

from payment_worker.adapters import avro_events, avro_reply
from payment_worker.exceptions import InfrastructureUnavailable, PermanentError

log = structlog.get_logger("payment_worker.registry")

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SCHEMA_FILES = {
    "ProcessPayment": "process_payment.avsc",
    "PaymentSucceeded": "payment_succeeded.avsc",
    "PaymentFailed": "payment_failed.avsc",
    "PaymentReply": "payment_reply.avsc",
}


class DecodeError(PermanentError):
    """A record that cannot be decoded; `reason` is the dead letter's dlq-reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def single_object_fingerprint(canonical: str) -> bytes:
    """The 8 bytes after C3 01: CRC-64-AVRO of the parsing canonical form, little-endian
    (fastavro writes the little-endian bytes as hex)."""
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def schemas_dir() -> Path:
    """The contract's Avro schemas, shipped inside the package (wheel, sdist or source tree)."""
    return Path(str(resources.files("payment_worker") / "schemas"))


def _strip_uuid_logical_type(node: Any) -> Any:
    """A copy of a schema whose uuid fields read as plain strings.

    A malformed id must reach validation (and get a reply), not fail decoding.
    """
    if isinstance(node, dict):
        out = {k: _strip_uuid_logical_type(v) for k, v in node.items()}
        if out.get("logicalType") == "uuid":
            out.pop("logicalType")
        return out
    if isinstance(node, list):
        return [_strip_uuid_logical_type(v) for v in node]
    return node


class SchemaSet:
    """The four schemas, parsed once, with their fingerprints."""

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or schemas_dir()
        self.raw: dict[str, dict[str, Any]] = {}
        self.writers: dict[str, Any] = {}
        self.readers: dict[str, Any] = {}
        self.fingerprints: dict[str, bytes] = {}
        self.text: dict[str, str] = {}
        for name, filename in SCHEMA_FILES.items():
            raw = json.loads((directory / filename).read_text(encoding="utf-8"))
            self.raw[name] = raw
            self.text[name] = json.dumps(raw, separators=(",", ":"))
            self.writers[name] = fastavro.parse_schema(copy.deepcopy(raw))
            self.readers[name] = fastavro.parse_schema(_strip_uuid_logical_type(raw))
            canonical = to_parsing_canonical_form(self.writers[name])
            self.fingerprints[name] = single_object_fingerprint(canonical)
        self.by_fingerprint = {fp: name for name, fp in self.fingerprints.items()}


class RegistryUnavailable(InfrastructureUnavailable):
    """The schema registry could not be reached: the worker waits and tries again."""


class RegistryRefused(PermanentError):
    """The registry answered, and the answer will not change by asking again: our credentials
    refused, a subject with no registered version while auto-registration is off, our schema
    refused as incompatible. Start-up stops with this line."""


# Schema Registry error codes (the REST API's `error_code`).
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40402, 40403
_MAX_UNKNOWN_IDS = 10_000


class RegistryPort:
    """Schema ids and writer schemas from a Confluent Schema Registry, on confluent-kafka's
    AsyncSchemaRegistryClient: `load_*` ask the registry (awaited, never blocking the event
    loop), and encode/decode then read what they loaded, in memory.

    With `auto_register`, our schema is registered under each subject (the registry answers
    with its id; registering an existing schema is idempotent). Without it, the subject's
    latest registered version is used, and records are written with that schema."""

    def __init__(self, client: Any, *, auto_register: bool = True) -> None:
        self._client = client
        self.auto_register = auto_register
        self._subjects: dict[str, tuple[int, Any]] = {}  # subject -> (id, writer or None: ours)
        self._writers: dict[int, Any] = {}
        self._unknown: set[int] = set()

    def subject(self, subject: str) -> tuple[int, Any] | None:
        """(schema id, writer schema or None for ours) of a loaded subject."""
        return self._subjects.get(subject)

    async def load_subject(self, subject: str, schema_text: str) -> None:
        if subject in self._subjects:
            return
        from confluent_kafka.schema_registry import Schema

        try:
            if self.auto_register:
                schema_id = await self._client.register_schema(subject, Schema(schema_text, "AVRO"))
                self._subjects[subject] = (schema_id, None)
                return
            latest = await self._client.get_latest_version(subject)
        except Exception as exc:  # the registry client raises many types
            code = _error_code(exc)
            if code in (SUBJECT_NOT_FOUND, VERSION_NOT_FOUND):
                raise RegistryRefused(
                    f"schema registry: subject {subject} has no registered version; register"
                    " the contract's schema, or set PAYMENT_SCHEMA_REGISTRY_AUTO_REGISTER=true"
                ) from None
            raise _refused_or_unavailable(exc, f"cannot register {subject}") from exc
        writer = fastavro.parse_schema(json.loads(latest.schema.schema_str))
        ours = fastavro.parse_schema(json.loads(schema_text))
        same = to_parsing_canonical_form(writer) == to_parsing_canonical_form(ours)
        self._subjects[subject] = (latest.schema_id, None if same else writer)
        if not same:
            log.warning(
                "registered_schema_differs",
                subject=subject,
                schema_id=latest.schema_id,
                detail="records are written with the registered schema",
            )

    def needs_writer(self, schema_id: int) -> bool:
        return schema_id not in self._writers and schema_id not in self._unknown

    async def load_writer(self, schema_id: int) -> None:
        if not self.needs_writer(schema_id):
            return
        try:
            schema = await self._client.get_schema(schema_id)
            parsed = json.loads(schema.schema_str)
        except Exception as exc:
            # 40403; confluent-kafka's in-memory mock says 404 with a code of its own.
            if _error_code(exc) == SCHEMA_NOT_FOUND or _status(exc) == 404:
                self._forget(schema_id)
                return
            raise RegistryUnavailable(f"cannot fetch schema {schema_id}: {exc}") from exc
        try:
            self._writers[schema_id] = fastavro.parse_schema(_strip_uuid_logical_type(parsed))
        except Exception:  # a registered schema that is not Avro we can read
            self._forget(schema_id)

    def _forget(self, schema_id: int) -> None:
        """Remember an id that decodes nothing; hostile ids keep the memory bounded."""
        if len(self._unknown) >= _MAX_UNKNOWN_IDS:
            self._unknown.clear()
        self._unknown.add(schema_id)

    def writer(self, schema_id: int) -> Any:
        if schema_id in self._writers:
            return self._writers[schema_id]
        if schema_id in self._unknown:
            raise DecodeError("unknown-schema", f"schema id {schema_id} unknown to the registry")
        raise RuntimeError(f"schema id {schema_id} decoded before load()")

    async def close(self) -> None:
        close = getattr(self._client, "aclose", None)
        if close is not None:
            await close()


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, int) else None


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "http_status_code", None)
    return status if isinstance(status, int) else None


def _refused_or_unavailable(exc: BaseException, what: str) -> Exception:
    status = _status(exc)
    if status in (401, 403):
        return RegistryRefused(
            f"schema registry refused our credentials (HTTP {status}): check"
            " PAYMENT_SCHEMA_REGISTRY_USER_INFO or PAYMENT_SCHEMA_REGISTRY_BEARER_TOKEN"
        )
    if status is not None and 400 <= status < 500 and status != 429:
        return RegistryRefused(f"schema registry: {what}: {exc}")
    return RegistryUnavailable(f"{what}: {exc}")


class AvroCodec:
    """Encodes the worker's records and decodes commands in either framing."""

    def __init__(self, schemas: SchemaSet, registry: RegistryPort | None = None) -> None:
        self.schemas = schemas
        self.registry = registry
        reply = schemas.raw["PaymentReply"]
        self.reply_encoder = avro_reply.ReplyEncoder(reply) if avro_reply.matches(reply) else None
        # The records written once per command, without fastavro's per-call cost.
        self.direct: dict[str, avro_reply.DirectEncoder] = {}
        if self.reply_encoder is not None:
            self.direct["PaymentReply"] = self.reply_encoder
        for event in ("PaymentSucceeded", "PaymentFailed"):
            encoder = avro_events.event_encoder(event, schemas.raw[event])
            if encoder is not None:
                self.direct[event] = encoder

    async def close(self) -> None:
        if self.registry is not None:
            await self.registry.close()

    async def load(self, name: str, topic: str) -> None:
        """What encoding `name` for `topic` needs from the registry (nothing without one)."""
        if self.registry is not None:
            await self.registry.load_subject(f"{topic}-value", self.schemas.text[name])

    def writer_id(self, value: bytes | None) -> int | None:
        """The registry schema id decoding `value` still needs, if any."""
        if (
            self.registry is not None
            and value is not None
            and len(value) >= 5
            and value[:1] == CONFLUENT_MAGIC
        ):
            schema_id: int = struct.unpack(">I", value[1:5])[0]
            return schema_id if self.registry.needs_writer(schema_id) else None
        return None

    async def load_value(self, value: bytes | None) -> None:
        """What decoding `value` needs from the registry (a writer schema not seen before)."""
        schema_id = self.writer_id(value)
        if schema_id is not None and self.registry is not None:
            await self.registry.load_writer(schema_id)

    def encode(self, name: str, record: dict[str, Any], topic: str | None = None) -> bytes:
        """`record` as bytes; with a registry and a topic, in Confluent framing under the
        subject `load(name, topic)` loaded."""
        writer = self.schemas.writers[name]
        direct = self.direct.get(name)
        if self.registry is not None and topic is not None:
            loaded = self.registry.subject(f"{topic}-value")
            if loaded is None:
                raise RuntimeError(f"subject {topic}-value encoded before load()")
            schema_id, registered = loaded
            header = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
            if registered is not None:  # a registered schema of another layout: fastavro's
                writer, direct = registered, None
        else:
            header = SINGLE_OBJECT_MAGIC + self.schemas.fingerprints[name]
        if direct is not None:
            body = direct.encode(record)
            if body is not None:
                return header + body
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, writer, record)
        return buf.getvalue()

    def decode(self, name: str, value: bytes | None) -> dict[str, Any]:
        """A record of schema `name` from either framing, uuids as plain strings."""
        if not value:
            raise DecodeError("undecodable", "empty value")
        reader = self.schemas.readers[name]
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < 10:
                raise DecodeError("undecodable", "truncated single-object header")
            writer_name = self.schemas.by_fingerprint.get(value[2:10])
            if writer_name != name:
                raise DecodeError(
                    "unknown-schema", f"unknown writer schema fingerprint {value[2:10].hex()}"
                )
            return _read(value, 10, reader, reader)
        if value[:1] == CONFLUENT_MAGIC:
            if len(value) < 5:
                raise DecodeError("undecodable", "truncated Confluent header")
            schema_id = struct.unpack(">I", value[1:5])[0]
            if self.registry is None:
                raise DecodeError(
                    "unknown-schema",
                    f"Confluent framing (schema id {schema_id}) but no schema registry configured",
                )
            return _read(value, 5, self.registry.writer(schema_id), reader)
        raise DecodeError("undecodable", f"unknown framing (first byte 0x{value[0]:02x})")


def _read(value: bytes, offset: int, writer: Any, reader: Any) -> dict[str, Any]:
    buf = io.BytesIO(value)
    buf.seek(offset)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
        raise DecodeError("undecodable", f"malformed Avro body: {type(exc).__name__}") from exc
    if buf.tell() != len(value):
        raise DecodeError("undecodable", f"{len(value) - buf.tell()} trailing bytes after record")
    if not isinstance(record, dict):
        raise DecodeError("undecodable", "not a record")
    return record


def registry_client(
    url: str,
    *,
    user_info: str | None = None,
    bearer_token: str | None = None,
    logical_cluster: str = "",
    ca_file: str | None = None,
    auto_register: bool = True,
) -> RegistryPort:
    """A registry port for PAYMENT_SCHEMA_REGISTRY_URL (`mock://...` works for tests), with
    basic auth (`user:password`) or a bearer token, and a CA file for its TLS."""
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    config: dict[str, Any] = {"url": url}
    if user_info:
        config["basic.auth.user.info"] = user_info
    if bearer_token:
        # confluent-kafka sends the logical cluster as `target-sr-cluster` (Confluent Cloud's
        # routing header); other registries ignore it.
        config["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        config["bearer.auth.token"] = bearer_token
        config["bearer.auth.logical.cluster"] = logical_cluster
    if ca_file:
        config["ssl.ca.location"] = ca_file
    return RegistryPort(AsyncSchemaRegistryClient.new_client(config), auto_register=auto_register)
