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
from collections.abc import Mapping
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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

_tracer: trace.Tracer = trace.NoOpTracer()
_active = False
_provider: Any = None


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
        exporters.append(found[0].load()())
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
    global _tracer, _active, _provider
    _provider = provider
    _tracer = provider.get_tracer("payment_worker")
    _active = True


def uninstall() -> None:
    """Back to recording nothing (the provider is shut down: what it buffered is exported)."""
    global _tracer, _active, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _active, _provider = trace.NoOpTracer(), False, None


def shutdown() -> None:
    """Export what is buffered (at process end)."""
    if _provider is not None:
        _provider.shutdown()


# What span() gives when nothing is recorded: one instance for every step (it holds no state).
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    parent: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span | None]:
    """A span around a step, the current one's child (or `parent`'s); nothing without the SDK,
    nor under a current span that is not recorded (its trace was not sampled). An exception
    leaving it is recorded on it and sets its status to error."""
    if not _active:
        return _NOTHING
    if parent is None:
        current = trace.get_current_span()
        context = current.get_span_context()
        # A local parent that is not recorded belongs to a trace that was not sampled, and
        # every built-in sampler drops its child too: parentbased_* follow the parent,
        # traceidratio decides by the trace id the child shares, always_off drops everything
        # and always_on never leaves a parent unsampled. Asking the SDK would only build a
        # span that records nothing.
        if context.is_valid and not context.is_remote and not current.is_recording():
            return _NOTHING
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def recording() -> bool:
    """Whether the current span records: what only its attributes need can be skipped if not."""
    return _active and trace.get_current_span().is_recording()


def annotate(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (ids, outcome); never a card number."""
    if _active:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def parent_from(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The remote context a W3C traceparent names (None: start a new trace)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return PROPAGATOR.extract(carrier)


def outgoing(
    traceparent: str | None = None, tracestate: str | None = None
) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) for what is sent now: the current span's context when spans
    are recorded, else the context given (the one that came in), unchanged."""
    if _active:
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)
        if "traceparent" in carrier:
            return carrier["traceparent"], carrier.get("tracestate")
    return traceparent, tracestate
