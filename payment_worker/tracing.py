"""Traces through OpenTelemetry: spans, and the W3C context carried on commands, replies,
events and HTTP calls.

The API is a dependency of the package; the SDK and the OTLP exporter come with the `otel`
extra (`pip install 'payment-worker[otel]'`). Tracing is configured only by the standard
`OTEL_*` variables, read here and by the SDK (not by Settings: they are the SDK's, and every
OpenTelemetry deployment already sets them): `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`
(`otlp` by default, `console`, `none`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` by
default, or `grpc`), `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
and `OTEL_TRACES_SAMPLER_ARG` (the SDK's built-in samplers; one it would not read as written is
refused at start-up)...

Without the SDK (or with `OTEL_TRACES_EXPORTER=none`) nothing is recorded: `span()` is a
`nullcontext` and `outgoing()` gives back the context that came in, so a command's
`traceparent` is carried onto what it causes byte for byte, as the contract says.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from importlib.metadata import entry_points
from time import time_ns
from types import TracebackType
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from payment_worker.exceptions import ConfigurationError

log = structlog.get_logger("payment_worker.tracing")

PROPAGATOR = TraceContextTextMapPropagator()
SERVER, CLIENT, PRODUCER, CONSUMER = (
    SpanKind.SERVER,
    SpanKind.CLIENT,
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
)

# The exporters OTEL_TRACES_EXPORTER may name, as their packages register them.
_EXPORTERS = {
    ("otlp", "http/protobuf"): "otlp_proto_http",
    ("otlp", "grpc"): "otlp_proto_grpc",
    ("console", ""): "console",
}

# The samplers OTEL_TRACES_SAMPLER may name, as the SDK's TracerProvider reads it.
_SAMPLERS = (
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
)

_active = False
_provider: Any = None
# What a recorded span is made with, from the installed provider and its SDK (install()).
_decide: Any = None  # the provider's sampler
_ids: Any = None  # its id generator
_resource: Any = None
_processor: Any = None  # its span processors, as one
_Readable: Any = None  # the SDK's ReadableSpan, what processors and exporters are given
_Event: Any = None
_SCOPE: Any = None


def active() -> bool:
    return _active


def configure(default_service_name: str) -> bool:
    """Record spans when the SDK is installed and the OTEL_* variables ask for an exporter;
    returns whether spans are recorded. `default_service_name` is this process's
    `service.name` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names one."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return False  # the API alone: spans cost nothing, contexts are carried as they came
    sampler = _sampler()
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    exporters = []
    for name in names:
        entry = _EXPORTERS.get((name, protocol if name == "otlp" else ""))
        found = [e for e in entry_points(group="opentelemetry_traces_exporter") if e.name == entry]
        if entry is None or not found:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER={name}"
                + (f" with OTEL_EXPORTER_OTLP_PROTOCOL={protocol}" if name == "otlp" else "")
                + ": no such exporter installed (install payment-worker[otel]; otlp speaks"
                " http/protobuf, or grpc with opentelemetry-exporter-otlp-proto-grpc; console;"
                " none)"
            )
        exporters.append(_otlp_http() if entry == "otlp_proto_http" else found[0].load()())
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # The provider reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG itself (checked above).
    resource = Resource.create({} if named else {"service.name": default_service_name})
    provider = TracerProvider(resource=_hashed_once(resource))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info("tracing_on", exporters=names, protocol=protocol, sampler=sampler)
    return True


def _otlp_http() -> Any:
    """The OTLP/HTTP exporter with our encoder (adapters/otlp.py), or the library's own where
    the library is not the one that exporter was written against."""
    try:
        from payment_worker.adapters.otlp import http_exporter
    except ImportError:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return http_exporter()


def _hashed_once(resource: Any) -> Any:
    """`resource` with its hash computed once. The OTLP exporter groups the spans it encodes by
    resource, hashing each span's resource on the way, and the SDK's Resource hashes by
    serialising its attributes to JSON every time (~6% of a worker's CPU when every command is
    traced); a resource never changes, so neither does its hash."""
    from opentelemetry.sdk.resources import Resource

    class HashedOnce(Resource):
        def __init__(self, attributes: Any, schema_url: str | None) -> None:
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return HashedOnce(resource.attributes, resource.schema_url)


def _sampler() -> str:
    """The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name, refused unless the SDK
    reads them as written: on a name or a ratio it cannot read, the SDK logs a warning and
    records every trace, the costliest choice, which a busy worker should not find out from its
    CPU."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "")
    if not name:
        return _SAMPLERS[0]
    if name.lower() not in _SAMPLERS:
        raise ConfigurationError(
            f"OTEL_TRACES_SAMPLER={name[:100]!r}: no such sampler (one of {', '.join(_SAMPLERS)})"
        )
    if not name.lower().endswith("traceidratio"):
        return name.lower()
    arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "")
    try:
        ratio = float(arg) if arg else 1.0  # the standard's default
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigurationError(
            f"OTEL_TRACES_SAMPLER_ARG={arg[:100]!r}: the ratio of {name.lower()} is a number"
            " from 0 to 1"
        )
    return f"{name.lower()} {ratio:g}"


def install(provider: Any) -> None:
    """Record spans with this SDK tracer provider (configure() makes one; tests give theirs).
    It is this package's own, not the global provider: nothing else in the process changes."""
    global _active, _provider, _decide, _ids, _resource, _processor, _Readable, _Event, _SCOPE
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    tracer = provider.get_tracer("payment_worker")  # the SDK's: its parts are public attributes
    _decide, _ids = tracer.sampler, tracer.id_generator
    _resource, _processor = tracer.resource, tracer.span_processor
    _Readable, _Event, _SCOPE = ReadableSpan, Event, InstrumentationScope("payment_worker")
    _provider = provider
    _active = True


def uninstall() -> None:
    """Back to recording nothing (the provider is shut down: what it buffered is exported)."""
    global _active, _provider
    _active = False
    if _provider is not None:
        _provider.shutdown()
    _provider = None


def shutdown() -> None:
    """Export what is buffered (at process end)."""
    if _provider is not None:
        _provider.shutdown()


# What span() gives when nothing is recorded: one instance for every step (it holds no state).
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()

# The span a step runs in: this module's own context variable rather than OpenTelemetry's
# context (nothing else in the process reads our spans, and a set/reset of one variable costs a
# fraction of the API's attach and detach).
_CURRENT: ContextVar[_Step | None] = ContextVar("payment_worker_span", default=None)
_NO_PARENT = Context()  # what a root's sampler is given: no parent, whatever else runs
_RECORDED_VALUES = (str, bool, int, float)


class _Step(Span):
    """One span of ours, as a context manager: it is decided, current and timed from `with` to
    its end, then handed, read-only, to the provider's span processors (their `on_end`, the one
    step the SDK's batch and simple processors act on).

    Why not the SDK's own spans: a span started and ended through the SDK's Tracer cost ~55 µs
    of CPU (its locks, bounded attributes, context attach/detach), this ~10-20, and a worker
    records up to eight per command. What it keeps of the SDK: the provider's sampler, id
    generator, resource and processors; the decisions, ids, flags, status and exception event
    the SDK would give (tests/unit/test_tracing.py compares them). What it leaves: processors'
    `on_start`, the SDK's span limits (our spans carry a dozen attributes of our own at most),
    and OpenTelemetry's current context (no instrumentation library runs under our spans)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_events",
        "_outgoing",
        "_parent",
        "_recording",
        "_start",
        "_status",
        "_token",
        "kind",
        "name",
    )
    _context: SpanContext
    _parent: SpanContext | None
    _recording: bool

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        parent: SpanContext | None,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self.name = name
        self.kind = kind
        self._parent = parent  # a remote parent, or None: the current step's child (or a root)
        # What the OTLP encoder could not write is dropped, as the SDK drops it.
        self._attributes: dict[str, Any] = (
            {k: v for k, v in attributes.items() if _recordable(k, v)} if attributes else {}
        )
        self._status = _UNSET
        self._events: list[Any] = []
        self._outgoing: tuple[str, str | None] | None = None

    def __enter__(self) -> _Step:
        given = self._parent
        current = _CURRENT.get() if given is None else None
        if current is not None:
            # A local child: every built-in sampler decides it as its parent (parentbased_*
            # follow it, traceidratio decides by the trace id they share, always_* alike), and
            # span() never starts one under a parent that does not record.
            local = current._context
            trace_id, flags, state = local.trace_id, local.trace_flags, local.trace_state
            parent: SpanContext | None = local
            self._recording = current._recording  # span() checked it, but maybe not here
        else:
            parent = given if given is not None and given.is_valid else None
            if parent is None:
                trace_id = _ids.generate_trace_id()
                random_id = _ids.is_trace_id_random()
                asked = _NO_PARENT
            else:
                trace_id = parent.trace_id
                random_id = parent.trace_flags.random_trace_id
                asked = set_span_in_context(NonRecordingSpan(parent), _NO_PARENT)
            decided = _decide.should_sample(
                asked, trace_id, self.name, self.kind, self._attributes or None, ()
            )
            flags = TraceFlags(
                (TraceFlags.SAMPLED if decided.decision.is_sampled() else TraceFlags.DEFAULT)
                | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
            )
            state = decided.trace_state
            self._recording = decided.decision.is_recording()
            self._attributes = dict(decided.attributes) if decided.attributes else {}
        self._parent = parent
        self._context = SpanContext(trace_id, _ids.generate_span_id(), False, flags, state)
        self._start = time_ns()
        self._token = _CURRENT.set(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            _CURRENT.reset(self._token)
        except (ValueError, RuntimeError):  # left in another context than it was entered in
            log.warning("span_left_elsewhere", span=self.name)
        if not self._recording:
            return
        if isinstance(error, Exception):  # as the SDK's use_span: not a cancellation or an exit
            self.record_exception(error)
            self.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._recording = False  # ended: what is set from now on is ignored, as the SDK does
        _processor.on_end(
            _Readable(
                name=self.name,
                context=self._context,
                parent=self._parent,
                resource=_resource,
                attributes=self._attributes,
                events=self._events,
                kind=self.kind,
                status=self._status,
                start_time=self._start,
                end_time=time_ns(),
                instrumentation_scope=_SCOPE,
            )
        )

    def outgoing(self) -> tuple[str, str | None]:
        """This span's W3C context as the API's propagator writes it, formatted once."""
        if self._outgoing is None:
            c = self._context
            state = c.trace_state.to_header() if c.trace_state else None
            self._outgoing = (
                f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}",
                state or None,
            )
        return self._outgoing

    # The API's Span, for what a caller holding the span may do.
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._recording

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._recording:
            for key, value in attributes.items():
                self.set_attribute(key, value)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._recording and _recordable(key, value):
            self._attributes[key] = value

    def add_event(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
    ) -> None:
        if self._recording:
            self._events.append(_Event(name, dict(attributes or {}), timestamp))

    def update_name(self, name: str) -> None:
        if self._recording:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: an OK status is final, and UNSET never replaces one.
        given = status if isinstance(status, Status) else Status(status, description)
        if (
            self._recording
            and self._status.status_code is not StatusCode.OK
            and given.status_code is not StatusCode.UNSET
        ):
            self._status = given

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        named: dict[str, Any] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        self.add_event("exception", {**named, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """Spans of ours end with their `with` block."""


_UNSET = Status(StatusCode.UNSET)


def _recordable(key: object, value: object) -> bool:
    return isinstance(key, str) and isinstance(value, _RECORDED_VALUES)


def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    parent: SpanContext | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span | None]:
    """A span around a step, the current one's child (or `parent`'s, a remote context from
    parent_from()); nothing without the SDK, nor under a current span that is not recorded (its
    trace was not sampled: every built-in sampler drops its children too). An exception leaving
    it is recorded on it and sets its status to error."""
    if not _active:
        return _NOTHING
    if parent is None:
        current = _CURRENT.get()
        if current is not None and not current._recording:
            return _NOTHING
    return _Step(name, kind, parent, attributes)


def recording() -> bool:
    """Whether the current span records: what only its attributes need can be skipped if not."""
    if not _active:
        return False
    current = _CURRENT.get()
    return current is not None and current._recording


def annotate(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (ids, outcome); never a card number."""
    if _active:
        current = _CURRENT.get()
        if current is not None and current._recording:
            current.set_attributes(attributes)


def parent_from(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The remote context a W3C traceparent names (None: start a new trace)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    context = trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def outgoing(
    traceparent: str | None = None, tracestate: str | None = None
) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) for what is sent now: the current span's context when spans
    are recorded, else the context given (the one that came in), unchanged."""
    if _active:
        current = _CURRENT.get()
        if current is not None:
            return current.outgoing()
    return traceparent, tracestate
