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
from fastavro.schema import to_parsing_canonical_form

from payment_worker.adapters import avro_reply
from payment_worker.exceptions import InfrastructureUnavailable, PermanentError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SCHEMA_FILES = {
    "ProcessPayment": "process_payment.avsc",
    "PaymentSucceeded": "payment_succeeded.avsc",
    "PaymentFailed": "payment_failed.avsc",
    "PaymentReply": "payment_reply.avsc",
}

_EMPTY64 = 0xC15D213AA4D7A795
_FP_TABLE: list[int] = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY64 & -(_fp & 1))
    _FP_TABLE.append(_fp)


class DecodeError(PermanentError):
    """A record that cannot be decoded; `reason` is the dead letter's dlq-reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def crc64_avro(data: bytes) -> int:
    """The Avro spec's CRC-64-AVRO (Rabin) fingerprint."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


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
            self.fingerprints[name] = struct.pack("<Q", crc64_avro(canonical.encode("utf-8")))
        self.by_fingerprint = {fp: name for name, fp in self.fingerprints.items()}


class RegistryPort:
    """The slice of confluent-kafka's SchemaRegistryClient the codec uses."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._ids: dict[str, int] = {}
        self._writers: dict[int, Any] = {}

    def id_for(self, subject: str, schema_text: str) -> int:
        if subject not in self._ids:
            from confluent_kafka.schema_registry import Schema

            try:
                self._ids[subject] = self._client.register_schema(
                    subject, Schema(schema_text, "AVRO")
                )
            except Exception as exc:  # the registry client raises many types
                raise RegistryUnavailable(f"cannot register {subject}: {exc}") from exc
        return self._ids[subject]

    def writer(self, schema_id: int) -> Any:
        if schema_id not in self._writers:
            try:
                schema = self._client.get_schema(schema_id)
            except Exception as exc:
                message = str(exc)
                if "40403" in message or "not found" in message.lower():
                    raise DecodeError("unknown-schema", f"schema id {schema_id} unknown") from exc
                raise RegistryUnavailable(f"cannot fetch schema {schema_id}: {exc}") from exc
            try:
                parsed = json.loads(schema.schema_str)
                self._writers[schema_id] = fastavro.parse_schema(_strip_uuid_logical_type(parsed))
            except Exception as exc:
                raise DecodeError("unknown-schema", f"schema id {schema_id}: {exc}") from exc
        return self._writers[schema_id]


class RegistryUnavailable(InfrastructureUnavailable):
    """The schema registry could not be reached: the worker waits and tries again."""


class AvroCodec:
    """Encodes the worker's records and decodes commands in either framing."""

    def __init__(self, schemas: SchemaSet, registry: RegistryPort | None = None) -> None:
        self.schemas = schemas
        self.registry = registry
        reply = schemas.raw["PaymentReply"]
        self.reply_encoder = avro_reply.ReplyEncoder(reply) if avro_reply.matches(reply) else None

    def encode(self, name: str, record: dict[str, Any], topic: str | None = None) -> bytes:
        if self.registry is not None and topic is not None:
            schema_id = self.registry.id_for(f"{topic}-value", self.schemas.text[name])
            header = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
        else:
            header = SINGLE_OBJECT_MAGIC + self.schemas.fingerprints[name]
        if name == "PaymentReply" and self.reply_encoder is not None:
            body = self.reply_encoder.encode(record)
            if body is not None:
                return header + body
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, self.schemas.writers[name], record)
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


def registry_client(url: str) -> RegistryPort:
    """A registry port for PAYMENT_SCHEMA_REGISTRY_URL (`mock://...` works for tests)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return RegistryPort(SchemaRegistryClient.new_client({"url": url}))
