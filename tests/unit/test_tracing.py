"""Tracing (payment_worker/tracing.py) and the W3C context of commands: without a recorder the
context is carried as it came; with one, what a command causes carries its own span's context
in the command's trace."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)

from payment_worker import tracing
from payment_worker.domain.model import Outcome, reply
from payment_worker.domain.routing import ReplyRoute, record_trace_context, trace_headers
from payment_worker.exceptions import ConfigurationError
from tests.unit.test_messages import (  # noqa: F401
    TRACEPARENT,
    a_command,
    a_payment,
    codec,
    factory,
)

TRACE_ID = TRACEPARENT.split("-")[1]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)  # whatever OTEL_TRACES_SAMPLER the caller set
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()


def _header(message: object, name: str) -> bytes | None:
    return dict(message.headers).get(name)  # type: ignore[attr-defined]


def test_without_a_recorder_a_reply_carries_the_commands_traceparent_byte_for_byte(
    factory,  # noqa: F811
) -> None:
    """No SDK (or OTEL_TRACES_EXPORTER=none): the reply's traceparent and tracestate are the
    command's, unchanged, and no span is made."""
    route = ReplyRoute("payment-replies", None, "c-1", traceparent=TRACEPARENT, tracestate="a=1")
    message = factory.reply(a_command(), route, reply(Outcome.SUCCEEDED, "ok"))
    assert _header(message, "traceparent") == TRACEPARENT.encode()
    assert _header(message, "tracestate") == b"a=1"
    assert not tracing.active()
    assert tracing.span("x").__class__.__name__ == "nullcontext"


def test_a_reply_and_an_event_made_in_a_process_span_carry_its_context(
    factory,  # noqa: F811
    spans: InMemorySpanExporter,
) -> None:
    """With a recorder: the reply and the event carry the command's trace id and the id of the
    process span continuing the command, and no span of their own is made."""
    route = ReplyRoute("payment-replies", None, "c-1", traceparent=TRACEPARENT)
    command = a_command()
    with tracing.span(
        "process-payment process", tracing.CONSUMER, parent=tracing.parent_from(TRACEPARENT)
    ):
        made = [
            factory.reply(command, route, reply(Outcome.SUCCEEDED, "ok")),
            factory.event(a_payment(command), route),
        ]
    (process,) = spans.get_finished_spans()
    assert process.parent is not None
    assert format(process.parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    for message in made:
        header = _header(message, "traceparent")
        assert header is not None
        _, trace_id, span_id, flags = header.decode().split("-")
        assert trace_id == TRACE_ID == format(process.context.trace_id, "032x")
        assert span_id == format(process.context.span_id, "016x")
        assert flags == "01"


class _CountingSampler(ParentBased):
    """The default parent-based sampler, counting the decisions it is asked for."""

    def __init__(self, root: Sampler) -> None:
        super().__init__(root)
        self.asked = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.asked += 1
        return super().should_sample(*args, **kwargs)


UNSAMPLED = TRACEPARENT[:-2] + "00"


@pytest.mark.parametrize(
    ("root", "traceparent"),
    [(ALWAYS_ON, UNSAMPLED), (ALWAYS_OFF, None)],
    ids=["caller-unsampled", "root-dropped"],
)
def test_under_an_unsampled_command_a_step_asks_the_sdk_nothing(
    factory,  # noqa: F811
    root: Sampler,
    traceparent: str | None,
) -> None:
    """A command whose trace is not sampled (its caller's flag, or the root sampler's
    decision): its steps are nullcontexts the sampler is never asked about, annotate() sets
    nothing, nothing is exported; its reply still carries its trace id, flagged unsampled, so
    that what it causes is not sampled either."""
    exporter = InMemorySpanExporter()
    sampler = _CountingSampler(root)
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        route = ReplyRoute("payment-replies", None, "c-1", traceparent=traceparent)
        with tracing.span(
            "process-payment process", tracing.CONSUMER, parent=tracing.parent_from(traceparent)
        ) as process:
            assert process is not None and not process.is_recording()
            assert not tracing.recording()
            with tracing.span("gateway charge", tracing.CLIENT) as step:
                assert step is None
                tracing.annotate({"payment.outcome": "SUCCEEDED"})
            message = factory.reply(a_command(), route, reply(Outcome.SUCCEEDED, "ok"))
    finally:
        tracing.uninstall()
    assert sampler.asked == 1
    assert exporter.get_finished_spans() == ()
    header = _header(message, "traceparent")
    assert header is not None
    _, trace_id, span_id, flags = header.decode().split("-")
    assert trace_id == format(process.get_span_context().trace_id, "032x")
    assert span_id == format(process.get_span_context().span_id, "016x")
    assert int(flags, 16) & 1 == 0  # not sampled (the SDK may set its random-trace-id bit)
    if traceparent:
        assert trace_id == TRACE_ID


def test_a_root_span_under_an_unsampled_one_is_still_asked_of_the_sampler() -> None:
    """A span given a remote parent (the reconciler's, the next command's) is a new decision
    of the sampler even while an unsampled span is current."""
    exporter = InMemorySpanExporter()
    sampler = _CountingSampler(ALWAYS_ON)
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        with (
            tracing.span("unsampled", parent=tracing.parent_from(UNSAMPLED)),
            tracing.span("payment reconcile", parent=tracing.parent_from(TRACEPARENT)) as span,
        ):
            assert span is not None and span.is_recording()
    finally:
        tracing.uninstall()
    assert sampler.asked == 2
    assert [s.name for s in exporter.get_finished_spans()] == ["payment reconcile"]


def test_an_exception_in_a_span_marks_it_failed(spans: InMemorySpanExporter) -> None:
    """A step that raises leaves its span with status ERROR and the exception recorded."""
    with pytest.raises(RuntimeError), tracing.span("gateway charge"):
        raise RuntimeError("boom")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert any(event.name == "exception" for event in span.events)


def _traceparent_of(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _as_exported(span: Any, ids: dict[int, str]) -> dict[str, Any]:
    """What an exporter reads of a finished span, its own ids named by the order they came."""

    def named(span_id: int) -> str:
        return ids.setdefault(span_id, f"span {len(ids)}")

    return {
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.context.trace_id,
        "span_id": named(span.context.span_id),
        "flags": span.context.trace_flags,
        "trace_state": span.context.trace_state.to_header(),
        "remote": span.context.is_remote,
        "parent": None
        if span.parent is None
        else (span.parent.trace_id, named(span.parent.span_id), span.parent.is_remote),
        "attributes": dict(span.attributes),
        "status": (span.status.status_code, span.status.description),
        "events": [
            (e.name, {k: v for k, v in e.attributes.items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        "stacktrace": [bool(e.attributes.get("exception.stacktrace")) for e in span.events],
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope.name,
        "timed": 0 < span.start_time <= span.end_time,
    }


def test_a_recorded_span_is_exported_as_the_sdks_own_tracer_would_export_it(
    spans: InMemorySpanExporter,
) -> None:
    """A command's spans, made by this module, reach the provider's processors as the SDK's own
    Tracer would hand them over for the same steps: names, kinds, trace, parents, flags, the
    caller's tracestate, attributes (None dropped), status, the exception event, resource and
    scope. Only the ids and times differ."""
    from opentelemetry.context import attach, detach
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    caller = {"traceparent": TRACEPARENT, "tracestate": "caller=1"}
    attributes: dict[str, Any] = {"messaging.system": "kafka", "messaging.kafka.offset": 5}

    with tracing.span(
        "commands process",
        tracing.CONSUMER,
        parent=tracing.parent_from(TRACEPARENT, "caller=1"),
        attributes=attributes,
    ) as ours_process:
        tracing.annotate({"payment.outcome": "SUCCEEDED", "payment.dead_letter_reason": None})
        assert ours_process is not None
        injected: dict[str, str] = {}
        tracing.PROPAGATOR.inject(
            injected, set_span_in_context(NonRecordingSpan(ours_process.get_span_context()))
        )
        assert tracing.outgoing() == (injected["traceparent"], injected["tracestate"])
        with pytest.raises(ValueError), tracing.span("gateway charge", tracing.CLIENT):
            raise ValueError("declined by a test")
        with tracing.span("order-lock acquire", tracing.CLIENT, attributes={"a": True}):
            pass
    ours = spans.get_finished_spans()

    theirs_exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON, resource=tracing._provider.resource)
    provider.add_span_processor(SimpleSpanProcessor(theirs_exported))
    tracer = provider.get_tracer("payment_worker")
    token = attach(tracing.PROPAGATOR.extract(caller))
    try:
        with tracer.start_as_current_span(
            "commands process", kind=tracing.CONSUMER, attributes=attributes
        ) as process:
            process.set_attributes({"payment.outcome": "SUCCEEDED"})
            with (
                pytest.raises(ValueError),
                tracer.start_as_current_span("gateway charge", kind=tracing.CLIENT),
            ):
                raise ValueError("declined by a test")
            with tracer.start_as_current_span(
                "order-lock acquire", kind=tracing.CLIENT, attributes={"a": True}
            ):
                pass
    finally:
        detach(token)
    theirs = theirs_exported.get_finished_spans()

    caller_span = int(TRACEPARENT.split("-")[2], 16)
    assert [_as_exported(s, {caller_span: "caller"}) for s in ours] == [
        _as_exported(s, {caller_span: "caller"}) for s in theirs
    ]
    assert ours[-1].parent.span_id == caller_span  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("traceparent", TRACEPARENT.encode())], (TRACEPARENT, None)),
        (
            [("traceparent", TRACEPARENT.encode()), ("tracestate", b"vendor=abc")],
            (TRACEPARENT, "vendor=abc"),
        ),
        ([("traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")], (None, None)),
        ([("traceparent", b"not a traceparent")], (None, None)),
        ([("traceparent", TRACEPARENT.encode()), ("traceparent", b"00-x")], (None, None)),
        ([("tracestate", b"vendor=abc")], (None, None)),  # no traceparent: no tracestate
        ([("traceparent", TRACEPARENT.encode()), ("tracestate", b"v=\xff")], (TRACEPARENT, None)),
        (
            [("traceparent", TRACEPARENT.encode()), ("tracestate", b"v=4111111111111111")],
            (TRACEPARENT, None),
        ),
        (
            [("traceparent", TRACEPARENT.encode()), ("tracestate", b"v=" + b"a" * 600)],
            (TRACEPARENT, None),
        ),
        ([("traceparent", None)], (None, None)),
    ],
    ids=[
        "traceparent",
        "with-tracestate",
        "zero-trace-id",
        "garbage",
        "two-different",
        "tracestate-alone",
        "tracestate-not-ascii",
        "tracestate-card-number",
        "tracestate-too-long",
        "null-header",
    ],
)
def test_a_commands_trace_context_is_taken_only_when_valid(
    headers: list[tuple[str, bytes | None]], expected: tuple[str | None, str | None]
) -> None:
    """W3C Trace Context: an invalid traceparent is ignored (a new trace starts); tracestate
    only beside a valid one, printable ASCII of at most 512 bytes, never a card number."""
    assert record_trace_context(headers) == expected
    found: dict[str, list[bytes | None]] = {}
    for name, value in headers:
        found.setdefault(name, []).append(value)
    assert trace_headers(found) == expected


def _configure(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "from payment_worker import tracing; print(tracing.configure('payment-worker'))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "recording"),
    [
        ({"OTEL_TRACES_EXPORTER": "none"}, "False"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, "False"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "True"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, "True"),  # otlp by default
    ],
    ids=["none", "sdk-disabled", "console", "otlp-default"],
)
def test_tracing_is_configured_by_the_standard_variables(
    env: dict[str, str], recording: str
) -> None:
    """configure() records spans exactly when the OTEL_* variables ask for an exporter."""
    done = _configure(env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == recording


def test_an_exporter_that_is_not_installed_is_a_configuration_error() -> None:
    """OTEL_TRACES_EXPORTER naming an exporter that is not there fails with a clear line."""
    done = _configure({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER=zipkin: no such exporter installed" in done.stderr


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No OTEL_* variable of the caller's; a console exporter (nothing leaves the process)."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    yield monkeypatch
    tracing.uninstall()


@pytest.mark.parametrize(
    ("sampler", "ratio", "caller", "recorded"),
    [
        (None, None, None, True),
        (None, None, UNSAMPLED, False),
        ("traceidratio", "0", None, False),
        ("traceidratio", "1", None, True),
        ("traceidratio", "0", TRACEPARENT, False),
        ("parentbased_traceidratio", "0", None, False),
        ("parentbased_traceidratio", "1", None, True),
        ("parentbased_traceidratio", "0", TRACEPARENT, True),
        ("parentbased_traceidratio", "1", UNSAMPLED, False),
        ("parentbased_traceidratio", None, None, True),
        ("PARENTBASED_ALWAYS_OFF", None, None, False),
        ("parentbased_always_off", None, TRACEPARENT, True),
        ("always_off", None, TRACEPARENT, False),
        ("always_on", "0", UNSAMPLED, True),
    ],
    ids=[
        "default-root",
        "default-unsampled-caller",
        "ratio-0-root",
        "ratio-1-root",
        "ratio-0-sampled-caller",
        "parentbased-ratio-0-root",
        "parentbased-ratio-1-root",
        "parentbased-ratio-0-sampled-caller",
        "parentbased-ratio-1-unsampled-caller",
        "parentbased-ratio-unset-root",
        "parentbased-off-upper-case-root",
        "parentbased-off-sampled-caller",
        "always-off-sampled-caller",
        "always-on-unsampled-caller",
    ],
)
def test_the_worker_honours_the_standard_sampler_variables(
    otel_env: pytest.MonkeyPatch,
    sampler: str | None,
    ratio: str | None,
    caller: str | None,
    recorded: bool,
) -> None:
    """OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG decide whether a command's process span
    and its steps are recorded: by ratio at the root, by the caller's sampled flag under
    parentbased_* (parentbased_always_on when unset; a ratio sampler without a ratio takes 1)."""
    if sampler is not None:
        otel_env.setenv("OTEL_TRACES_SAMPLER", sampler)
    if ratio is not None:
        otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    assert tracing.configure("payment-worker")
    with (
        tracing.span("process-payment process", parent=tracing.parent_from(caller)) as process,
        tracing.span("gateway charge", tracing.CLIENT) as step,
    ):
        assert process is not None and process.is_recording() is recorded
        assert (step is not None and step.is_recording()) is recorded
        assert tracing.recording() is recorded


@pytest.mark.parametrize(
    ("sampler", "ratio", "refused"),
    [
        ("parentbased_traceidratioo", "0.1", "OTEL_TRACES_SAMPLER='parentbased_traceidratioo'"),
        (" always_off", None, "OTEL_TRACES_SAMPLER=' always_off'"),
        ("jaeger_remote", None, "OTEL_TRACES_SAMPLER='jaeger_remote'"),
        ("traceidratio", "10%", "OTEL_TRACES_SAMPLER_ARG='10%'"),
        ("parentbased_traceidratio", "1.5", "OTEL_TRACES_SAMPLER_ARG='1.5'"),
        ("parentbased_traceidratio", "-0.1", "OTEL_TRACES_SAMPLER_ARG='-0.1'"),
        ("parentbased_traceidratio", "nan", "OTEL_TRACES_SAMPLER_ARG='nan'"),
    ],
    ids=["typo", "space", "not-built-in", "percent", "above-1", "negative", "nan"],
)
def test_a_sampler_the_sdk_would_not_read_is_refused_at_start_up(
    otel_env: pytest.MonkeyPatch, sampler: str, ratio: str | None, refused: str
) -> None:
    """A sampler name or ratio that the SDK would replace by sampling everything (with one
    warning) stops the start with one line naming the variable and what is accepted."""
    otel_env.setenv("OTEL_TRACES_SAMPLER", sampler)
    if ratio is not None:
        otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    with pytest.raises(ConfigurationError) as raised:
        tracing.configure("payment-worker")
    assert str(raised.value).startswith(refused + ": ")
    assert not tracing.active()


def test_the_resource_is_hashed_once_and_is_the_one_the_sdk_would_make(
    otel_env: pytest.MonkeyPatch,
) -> None:
    """The provider's resource equals, and hashes as, the SDK's Resource.create of the same
    attributes, and hashing it again (the OTLP exporter does for every span) serialises
    nothing."""
    from opentelemetry.sdk import resources
    from opentelemetry.sdk.resources import Resource

    otel_env.setenv("OTEL_SERVICE_NAME", "payment-worker-test")
    assert tracing.configure("payment-worker")
    resource = tracing._provider.resource
    made = Resource.create({})
    assert resource == made and hash(resource) == hash(made)
    assert resource.attributes["service.name"] == "payment-worker-test"
    calls = []
    real = resources.dumps
    otel_env.setattr(resources, "dumps", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert {hash(resource) for _ in range(100)} == {hash(made)}
    assert len(calls) == 1  # the one for `made`, hashed above with the patch in place


def test_a_dependency_calls_span_ends_even_when_counting_it_fails(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dependency call's span is ended, and stops being the current span, even if
    observing the call fails on the way out (the failure itself propagates)."""
    from payment_worker import metrics

    def refuse(*_: object) -> None:
        raise RuntimeError("labels refused")

    monkeypatch.setattr(metrics, "_DEPENDENCY_CHILDREN", {})
    monkeypatch.setattr(metrics.DEPENDENCY_SECONDS, "labels", refuse)
    with tracing.span("process-payment process", tracing.CONSUMER) as process:
        with pytest.raises(RuntimeError, match="labels refused"):
            with metrics.dependency_call("unit-span", "GET /orders/{orderId}") as call:
                call.outcome = "ok"
        assert process is not None  # the current span again: what is sent carries its id
        assert tracing.outgoing()[0] == _traceparent_of(process)
    assert [s.name for s in spans.get_finished_spans()] == [
        "GET /orders/{orderId}",
        "process-payment process",
    ]


def test_a_span_left_in_another_context_still_ends_and_is_exported(
    spans: InMemorySpanExporter,
) -> None:
    """A span whose `with` ends in another context than it began in (an async generator closed
    by the loop) is still exported, and leaving it raises nothing."""
    import contextvars

    step = tracing.span("gateway charge", tracing.CLIENT)
    contextvars.copy_context().run(step.__enter__)  # in a context of its own: this one is left
    contextvars.copy_context().run(step.__exit__, None, None, None)
    assert [s.name for s in spans.get_finished_spans()] == ["gateway charge"]


def test_what_a_span_cannot_carry_is_dropped_from_its_attributes(
    spans: InMemorySpanExporter,
) -> None:
    """Attributes given at the start or later that OTLP cannot carry as a scalar (None, a list,
    a name that is not a string) are dropped, as the SDK drops them; the others are kept."""
    given: dict[Any, Any] = {"kept": "yes", "none": None, "list": [1, 2], 3: "number"}
    with tracing.span("x", attributes=given):
        tracing.annotate({"later": 1, "dropped": object()})
    (span,) = spans.get_finished_spans()
    assert dict(span.attributes) == {"kept": "yes", "later": 1}


def test_a_step_entered_under_an_unsampled_span_records_nothing() -> None:
    """A step made outside any span and entered under a span that is not recorded records
    nothing, as its sampler would decide: its `with` ends without exporting."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        step = tracing.span("gateway charge", tracing.CLIENT)
        with tracing.span("process", parent=tracing.parent_from(UNSAMPLED)), step as entered:
            assert entered is not None and not entered.is_recording()
    finally:
        tracing.uninstall()
    assert exporter.get_finished_spans() == ()


def test_a_status_set_as_the_sdk_would_keep_it(spans: InMemorySpanExporter) -> None:
    """UNSET never replaces a status, OK is final, and an exception leaving the span marks it
    ERROR with the exception's description unless it was set OK."""
    from opentelemetry.trace.status import Status, StatusCode

    with tracing.span("a") as a:
        assert a is not None
        a.set_status(Status(StatusCode.ERROR, "first"))
        a.set_status(StatusCode.UNSET)
    with pytest.raises(ValueError), tracing.span("b") as b:
        assert b is not None
        b.set_status(Status(StatusCode.ERROR, "first"))
        raise ValueError("second")
    with pytest.raises(ValueError), tracing.span("c") as c:
        assert c is not None
        c.set_status(StatusCode.OK)
        raise ValueError("ignored")
    statuses = [(s.status.status_code, s.status.description) for s in spans.get_finished_spans()]
    assert statuses == [
        (StatusCode.ERROR, "first"),
        (StatusCode.ERROR, "ValueError: second"),
        (StatusCode.OK, None),
    ]
