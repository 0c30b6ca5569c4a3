"""The OTLP span encoder (payment_worker/adapters/otlp.py): the request it writes is the one the
OpenTelemetry library's encoder would serialise, for every span a worker makes and for those it
leaves to the library."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from payment_worker.adapters.otlp import encode_spans

RESOURCE = Resource.create({"service.name": "payment-worker"})
SCOPE = InstrumentationScope("payment_worker")
UNSET = Status(StatusCode.UNSET)


def _span(
    name: str = "gateway charge",
    *,
    attributes: dict[str, Any] | None = None,
    parent: SpanContext | None = None,
    state: TraceState | None = None,
    kind: SpanKind = SpanKind.CLIENT,
    status: Status = UNSET,
    events: tuple[Event, ...] = (),
    links: tuple[Link, ...] = (),
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
) -> ReadableSpan:
    trace_id = parent.trace_id if parent else random.getrandbits(128) or 1
    context = SpanContext(
        trace_id, random.getrandbits(64) or 1, False, TraceFlags(1), state or TraceState()
    )
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes or {},
        events=events,
        links=links,
        kind=kind,
        status=status,
        start_time=1_765_000_000_000_000_000 + random.getrandbits(30),
        end_time=1_765_000_000_000_000_000 + (1 << 31),
        instrumentation_scope=scope,
    )


def _same(spans: list[ReadableSpan]) -> None:
    ours = encode_spans(spans)
    theirs = library(spans)
    assert ExportTraceServiceRequest.FromString(ours) == theirs
    assert ours == theirs.SerializePartialToString()


def test_a_commands_spans_are_written_as_the_library_writes_them() -> None:
    """The spans of one traced command (a remote caller, a process span, client steps with an
    error and its exception event, tracestate) and a second command's, in one batch."""
    caller = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1)
    )
    state = TraceState([("caller", "1"), ("vendor", "x y")])
    process = _span(
        "payment-commands process",
        kind=SpanKind.CONSUMER,
        parent=caller,
        state=state,
        attributes={
            "messaging.system": "kafka",
            "messaging.kafka.offset": 123456789012,
            "payment.duplicate": False,
            "payment.outcome": "SUCCEEDED",
        },
    )
    failed = _span(
        "gateway charge",
        parent=process.context,
        status=Status(StatusCode.ERROR, "TimeoutError: no answer in 2.0 s"),
        events=(
            Event(
                "exception",
                {
                    "exception.type": "TimeoutError",
                    "exception.message": "no answer in 2.0 s",
                    "exception.stacktrace": "Traceback (most recent call last):\n  ...",
                    "exception.escaped": "False",
                },
                1_765_000_000_500_000_000,
            ),
        ),
    )
    steps = [
        _span(n, parent=process.context, attributes={"payment.dependency.result": "ok"})
        for n in ("GET /orders/{orderId}", "order-lock acquire", "postgresql begin_payment")
    ]
    other = _span("payment-commands process", kind=SpanKind.CONSUMER, status=Status(StatusCode.OK))
    _same([*steps, failed, process, other])


def test_spans_of_several_resources_and_scopes_are_grouped_as_the_library_groups_them() -> None:
    """Two resources (one with a schema URL), a second scope with a version, a span without a
    scope: grouped by resource then scope, in the order they first come."""
    shim = Resource.create({"service.name": "payment-shim"}, "https://opentelemetry.io/schemas/1")
    versioned = InstrumentationScope("payment_worker.shim", "1.2.3", "https://example.com/s")
    spans = [
        _span("a"),
        _span("b", resource=shim),
        _span("c", scope=versioned),
        _span("d", resource=shim, scope=None),
        _span("e"),
    ]
    _same(spans)


def test_what_the_encoder_does_not_write_goes_to_the_library() -> None:
    """Links, sequences, bytes, an integer past int64, a string with a lone surrogate (no valid
    UTF-8), a name that is not a string, an empty value: the batch is the library's, byte for
    byte (which drops the attributes it cannot write)."""
    linked = SpanContext(random.getrandbits(128), random.getrandbits(64), False, TraceFlags(1))
    for odd in (
        _span(links=(Link(linked, {"why": "retry"}),)),
        _span(attributes={"sizes": (1, 2, 3)}),
        _span(attributes={"raw": b"\x00\x01"}),
        _span(attributes={"big": 1 << 70}),
        _span(attributes={"message": "not text \ud800"}),  # a lone surrogate
        _span(attributes={1: "a name that is not a string"}),  # type: ignore[dict-item]
        _span(attributes={"empty": None}),
    ):
        batch = [_span(), odd]
        assert encode_spans(batch) == library(batch).SerializePartialToString()


_VALUES = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(
    attributes=st.dictionaries(st.text(max_size=40), _VALUES, max_size=8),
    name=st.text(max_size=60),
    kind=st.sampled_from(list(SpanKind)),
    code=st.sampled_from(list(StatusCode)),
    description=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_span_of_scalar_attributes_is_written_as_the_library_writes_it(
    attributes: dict[str, Any],
    name: str,
    kind: SpanKind,
    code: StatusCode,
    description: str | None,
) -> None:
    """Any name (empty, non-ASCII), kind, status and attributes of the four scalar types,
    including empty strings, negative and extreme integers and false."""
    status = Status(code, description if code is StatusCode.ERROR else None)
    span = _span(name, attributes=attributes, kind=kind, status=status)
    _same([span, _span(name, attributes=attributes, parent=span.context)])


def test_the_cache_of_written_attributes_stays_bounded() -> None:
    """Unique values (ids) never grow the cache of written attributes past its bound, and a long
    value or an event's attribute is never kept."""
    from payment_worker.adapters import otlp

    spans = [_span(attributes={"payment.id": f"id-{n}", "x": "y" * 41}) for n in range(3000)]
    _same(spans)
    assert len(otlp._PAIRS) <= 1024
    assert not [key for key in otlp._PAIRS if key[0] == "x"]
