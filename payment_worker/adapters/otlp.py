"""OTLP/HTTP span export: the OpenTelemetry exporter, writing its protobuf request directly.

The library's encoder builds a protobuf object for every span, attribute and value before
serialising them: ~55 µs of CPU per span here, seven spans per traced command, in the worker's
process. `encode_spans` writes the same ExportTraceServiceRequest's bytes directly (~20 µs a
span); a batch it was not written for (links, a value of another type, a string that is not
Unicode text) goes to the library's encoder. tests/unit/test_otlp.py compares their bytes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as _library
from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

_logger = logging.getLogger(__name__)

_DOUBLE = struct.Struct("<d")
_FIXED32 = struct.Struct("<I")
_FIXED64 = struct.Struct("<Q")
# Span.flags: whether the parent is remote is known (0x100), and it is (0x200).
_KNOWN_LOCAL, _KNOWN_REMOTE = _FIXED32.pack(0x100), _FIXED32.pack(0x300)


class _Unexpected(Exception):
    """A span this encoder does not write: the batch goes to the library's encoder."""


_SMALL = [bytes((n,)) for n in range(0x80)]  # a varint below 128 is its own byte


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (tag is its one-byte key)."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue: the scalar types our spans carry; anything else, _Unexpected."""
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", _utf8(value))
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 63:
            raise _Unexpected("an integer beyond int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    raise _Unexpected(type(value).__name__)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no protobuf string can carry it
        raise _Unexpected("a string that is not Unicode text") from None


# A KeyValue written once: our spans repeat a few dozen short names and values (a system, an
# operation, an outcome). A bounded cache of the short ones that came first; ids are written
# anew. Only strings: True == 1 == 1.0 as keys, and they are written differently.
_PAIRS: dict[tuple[str, str], bytes] = {}


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None, cached: bool = True) -> bytes:
    if not attributes:
        return b""
    out = bytearray()
    for key, value in attributes.items():
        if type(key) is not str:
            raise _Unexpected("an attribute name that is not a string")
        short = cached and type(value) is str and len(value) <= 40
        written = _PAIRS.get((key, value)) if short else None
        if written is None:
            written = (_field(b"\x0a", _utf8(key)) if key else b"") + _field(
                b"\x12", _any_value(value)
            )
            if short and len(_PAIRS) < 1024:
                _PAIRS[(key, value)] = written
        out += _field(tag, written)
    return bytes(out)


def _string(tag: bytes, text: str | None) -> bytes:
    return _field(tag, _utf8(text)) if text else b""


def _count(tag: bytes, count: int) -> bytes:
    return tag + _varint(count) if count else b""


def _span(span: ReadableSpan) -> bytes:
    if span.links:
        raise _Unexpected("links")
    context = span.context
    parent = span.parent
    state = context.trace_state
    status = span.status
    out = bytearray(b"\x0a\x10")
    out += context.trace_id.to_bytes(16, "big")
    out += b"\x12\x08"
    out += context.span_id.to_bytes(8, "big")
    if state:
        out += _string(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items()))
    if parent:
        out += b"\x22\x08"
        out += parent.span_id.to_bytes(8, "big")
    out += _string(b"\x2a", span.name)
    out += b"\x30"
    out += _SMALL[span.kind.value + 1]  # the SDK's kinds start at 0, OTLP's at 1
    if span.start_time:
        out += b"\x39"
        out += _FIXED64.pack(span.start_time)
    if span.end_time:
        out += b"\x41"
        out += _FIXED64.pack(span.end_time)
    out += _attributes(b"\x4a", span.attributes)
    out += _count(b"\x50", span.dropped_attributes)
    for event in span.events:
        out += _field(
            b"\x5a",
            (b"\x09" + _FIXED64.pack(event.timestamp) if event.timestamp else b"")
            + _string(b"\x12", event.name)
            + _attributes(b"\x1a", event.attributes, cached=False)
            + _count(b"\x20", event.dropped_attributes),
        )
    out += _count(b"\x60", span.dropped_events)
    out += _count(b"\x70", span.dropped_links)
    out += _field(
        b"\x7a", _string(b"\x12", status.description) + _count(b"\x18", status.status_code.value)
    )
    out += b"\x85\x01"
    out += _KNOWN_REMOTE if parent and parent.is_remote else _KNOWN_LOCAL
    return bytes(out)


_HEADS: dict[tuple[Any, Any], tuple[bytes, bytes, bytes, bytes]] = {}


def _heads(resource: Any, scope: Any) -> tuple[bytes, bytes, bytes, bytes]:
    """The resource's field and schema URL, the scope's field and schema URL, written once per
    pair (a process has one resource and one scope)."""
    key = (resource, scope)
    found = _HEADS.get(key)
    if found is None:
        scope_body = b""
        if scope is not None:
            scope_body = (
                _string(b"\x0a", scope.name)
                + _string(b"\x12", scope.version)
                + _attributes(b"\x1a", scope.attributes)
            )
        found = (
            _field(b"\x0a", _attributes(b"\x0a", resource.attributes)),
            _string(b"\x1a", resource.schema_url),
            _field(b"\x0a", scope_body),
            _string(b"\x1a", scope.schema_url if scope is not None else None),
        )
        if len(_HEADS) < 16:
            _HEADS[key] = found
    return found


def _direct(spans: Sequence[ReadableSpan]) -> bytes:
    # Grouped by resource, then scope, in the order they first come, as the library does.
    grouped: dict[Any, dict[Any, list[bytes]]] = {}
    for span in spans:
        scope = span.instrumentation_scope or None
        by_scope = grouped.setdefault(span.resource, {})
        by_scope.setdefault(scope, []).append(_span(span))
    out = []
    for resource, by_scope in grouped.items():
        body = []
        for scope, encoded in by_scope.items():
            resource_field, resource_schema, scope_field, scope_schema = _heads(resource, scope)
            body.append(
                _field(
                    b"\x12",
                    scope_field + b"".join(_field(b"\x12", s) for s in encoded) + scope_schema,
                )
            )
        out.append(_field(b"\x0a", resource_field + b"".join(body) + resource_schema))
    return b"".join(out)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The OTLP ExportTraceServiceRequest carrying `spans`, serialised."""
    try:
        return _direct(spans)
    except _Unexpected:
        return bytes(_library(spans).SerializePartialToString())


def http_exporter() -> OTLPSpanExporter:
    """OtlpHttpSpanExporter, or the library's own exporter if this one would not find the
    parts of it that its export() uses (another version of the library)."""
    ours = OtlpHttpSpanExporter()
    if all(hasattr(ours, a) for a in ("_shutdown", "_metrics", "_client", "_max_request_size")):
        return ours
    _logger.warning("OTLP span export through the library's own encoder (another version)")
    ours.shutdown()  # type: ignore[no-untyped-call]  # the library leaves it untyped
    return OTLPSpanExporter()


class OtlpHttpSpanExporter(OTLPSpanExporter):
    """The library's OTLP/HTTP span exporter (its endpoint, headers, TLS, compression, timeout
    and retries, from the same OTEL_EXPORTER_OTLP_* variables) with encode_spans above. Its
    export() is the library's, step for step, but for the encoder."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                body = encode_spans(spans)
            except Exception as error:  # what the library does: the batch is lost, logged
                _logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(body, self._max_request_size):
                _logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size"
                    " %d bytes.",
                    len(body),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(body)} bytes exceeds max_request_size"
                    f" {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(body)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    {"http.response.status_code": sent.status_code}
                    if sent.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
