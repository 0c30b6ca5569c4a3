"""Where to answer a command, read from its headers, which are input like any other
(contract section 2, "Headers are input"): every routing header is checked before anything is
checked or charged, and a bad one is answered on the default replies topic."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from payment_worker.domain.cards import contains_card_number

MAX_PARTITION = 2**31 - 1
MAX_CORRELATION_ID_BYTES = 255
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_DECIMAL = re.compile(rb"[0-9]{1,20}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# Broker and registry internals (__consumer_offsets, _schemas, ...) start with "_"; a reply
# there would corrupt another system's state, whatever PAYMENT_REPLY_TOPIC_PATTERN allows.
INTERNAL_TOPIC = "replies never go to internal topics (names starting with '_')"
ROUTING_HEADERS = frozenset(
    {
        "correlation-id",
        "reply-to",
        "reply-partition",
        "traceparent",
        "tracestate",
        "kafka_correlationId",
        "kafka_replyTopic",
        "kafka_replyPartition",
    }
)


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Where and how to answer one command."""

    topic: str
    partition: int | None
    correlation_id: str
    spring_correlation_id: bytes | None = None
    spring_reply_topic: bytes | None = None
    spring_reply_partition: bytes | None = None
    traceparent: str | None = None
    tracestate: str | None = None  # only beside a valid traceparent

    def to_json(self) -> dict[str, Any]:
        """The route as JSON for the ledger. A correlation id holding NUL (valid UTF-8, but
        not storable in jsonb) is kept as hex."""
        correlation = (
            {"correlation_id_hex": _hex(self.correlation_id.encode())}
            if "\x00" in self.correlation_id
            else {"correlation_id": self.correlation_id}
        )
        return {
            "topic": self.topic,
            "partition": self.partition,
            **correlation,
            "spring_correlation_id": _hex(self.spring_correlation_id),
            "spring_reply_topic": _hex(self.spring_reply_topic),
            "spring_reply_partition": _hex(self.spring_reply_partition),
            "traceparent": self.traceparent,
            **({"tracestate": self.tracestate} if self.tracestate else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplyRoute:
        return cls(
            topic=data["topic"],
            partition=data.get("partition"),
            correlation_id=(
                data["correlation_id"]
                if "correlation_id" in data
                else bytes.fromhex(data["correlation_id_hex"]).decode()  # written by _hex
            ),
            spring_correlation_id=_unhex(data.get("spring_correlation_id")),
            spring_reply_topic=_unhex(data.get("spring_reply_topic")),
            spring_reply_partition=_unhex(data.get("spring_reply_partition")),
            traceparent=data.get("traceparent"),
            tracestate=data.get("tracestate"),
        )


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _unhex(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class RouteRules:
    """What a reply route may be: the default topic, the topics it must never be (the worker's
    own), and PAYMENT_REPLY_TOPIC_PATTERN."""

    default_topic: str = "payment-replies"
    own_topics: frozenset[str] = frozenset()
    topic_pattern: re.Pattern[str] = re.compile(".+")


@dataclass(frozen=True, slots=True)
class InvalidHeader:
    """A header that cannot be honoured, and the route on which the command is answered
    instead (the default replies topic, with whatever correlation the headers allow)."""

    name: str
    why: str
    fallback: ReplyRoute

    @property
    def message(self) -> str:
        return f"Invalid header {self.name}: {self.why}"


class _Bad(Exception):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(why)
        self.name = name
        self.why = why


def valid_traceparent(value: bytes | None) -> str | None:
    """A W3C traceparent as text, or None when it is not one (then it is ignored)."""
    if value is None or len(value) > 512:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    match = _TRACEPARENT.fullmatch(text)
    if match is None:
        return None
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version == "00" and rest is not None:
        return None
    return text


def trace_headers(found: dict[str, list[bytes | None]]) -> tuple[str | None, str | None]:
    """The W3C trace context of a command's headers: a traceparent given once (or repeated
    alike) and valid, and a tracestate beside it that is printable ASCII of at most 512 bytes
    (W3C's limit) with no card number; anything else is ignored, and a new trace starts."""
    traceparents = found.get("traceparent")
    traceparent = (
        valid_traceparent(traceparents[0])
        if traceparents and all(t == traceparents[0] for t in traceparents)
        else None
    )
    states = found.get("tracestate")
    state = states[0] if traceparent and states and len(states) == 1 else None
    if state is None or len(state) > 512 or not all(0x20 <= b <= 0x7E for b in state):
        return traceparent, None
    text = state.decode("ascii").strip()
    return traceparent, (text if text and not contains_card_number(text) else None)


def record_trace_context(
    headers: list[tuple[str, bytes | None]],
) -> tuple[str | None, str | None]:
    """trace_headers() of a record's headers as they came."""
    found: dict[str, list[bytes | None]] = {}
    for name, value in headers:
        if name in ("traceparent", "tracestate"):
            found.setdefault(name, []).append(value)
    return trace_headers(found)


def _single(found: dict[str, list[bytes | None]], name: str) -> bytes | None:
    """The value of a header given once (or repeated with the same value)."""
    values = found.get(name)
    if not values:
        return None
    first = values[0]
    if any(v != first for v in values[1:]):
        raise _Bad(name, "given more than once with different values")
    if first is None:
        raise _Bad(name, "has no value")
    return first


def _topic(found: dict[str, list[bytes | None]], name: str, rules: RouteRules) -> str | None:
    raw = _single(found, name)
    if raw is None:
        return None
    try:
        topic = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Bad(name, "not a legal Kafka topic name") from None
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise _Bad(name, "not a legal Kafka topic name")
    if topic.startswith("_"):
        raise _Bad(name, INTERNAL_TOPIC)
    if topic in rules.own_topics:
        raise _Bad(name, "replies never go to the worker's own topics")
    if not rules.topic_pattern.fullmatch(topic):
        raise _Bad(name, "topic not allowed by PAYMENT_REPLY_TOPIC_PATTERN")
    return topic


def _decimal_partition(found: dict[str, list[bytes | None]]) -> int | None:
    raw = _single(found, "reply-partition")
    if raw is None:
        return None
    if not _DECIMAL.fullmatch(raw) or int(raw) > MAX_PARTITION:
        raise _Bad("reply-partition", f"expected an ASCII decimal number 0-{MAX_PARTITION}")
    return int(raw)


def _spring_partition(found: dict[str, list[bytes | None]]) -> int | None:
    raw = _single(found, "kafka_replyPartition")
    if raw is None:
        return None
    if len(raw) != 4:
        raise _Bad("kafka_replyPartition", "expected a 4-byte big-endian integer")
    value: int = struct.unpack(">i", raw)[0]
    if value < 0:
        raise _Bad("kafka_replyPartition", "expected a partition number of at least 0")
    return value


def _correlation(found: dict[str, list[bytes | None]]) -> str | None:
    raw = _single(found, "correlation-id")
    if raw is None:
        return None
    if len(raw) > MAX_CORRELATION_ID_BYTES:
        raise _Bad("correlation-id", f"longer than {MAX_CORRELATION_ID_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("correlation-id", "not UTF-8") from None
    if contains_card_number(text):
        raise _Bad("correlation-id", "must not contain a card number")
    return text or None


def _spring_correlation(found: dict[str, list[bytes | None]]) -> bytes | None:
    raw = _single(found, "kafka_correlationId")
    if raw is not None and len(raw) > MAX_CORRELATION_ID_BYTES:
        raise _Bad("kafka_correlationId", f"longer than {MAX_CORRELATION_ID_BYTES} bytes")
    if raw is not None and contains_card_number(raw.decode("utf-8", "replace")):
        raise _Bad("kafka_correlationId", "must not contain a card number")
    return raw


def route_from_headers(
    headers: list[tuple[str, bytes | None]] | None, command_id: str, rules: RouteRules
) -> ReplyRoute | InvalidHeader:
    """The reply route a command's headers ask for (ours first, Spring's request-reply ones
    second), or the first header that cannot be honoured. Whether the broker has the topic and
    partition is the caller's to check (`unknown_route`)."""
    if not headers:
        return ReplyRoute(rules.default_topic, None, command_id)
    found: dict[str, list[bytes | None]] = {}
    for name, value in headers:
        if name in ROUTING_HEADERS:
            found.setdefault(name, []).append(value)
    if not found:
        return ReplyRoute(rules.default_topic, None, command_id)
    fallback = ReplyRoute(rules.default_topic, None, command_id)
    try:
        fallback = replace(fallback, correlation_id=_correlation(found) or command_id)
        fallback = replace(fallback, spring_correlation_id=_spring_correlation(found))
        topic = _topic(found, "reply-to", rules)
        spring_topic = _topic(found, "kafka_replyTopic", rules)
        partition = _decimal_partition(found)
        spring_partition = _spring_partition(found)
    except _Bad as bad:
        return InvalidHeader(bad.name, bad.why, fallback)
    traceparent, tracestate = trace_headers(found)
    return ReplyRoute(
        topic=topic or spring_topic or rules.default_topic,
        partition=partition if partition is not None else spring_partition,
        correlation_id=fallback.correlation_id,
        spring_correlation_id=fallback.spring_correlation_id,
        spring_reply_topic=found["kafka_replyTopic"][0] if spring_topic else None,
        spring_reply_partition=(
            found["kafka_replyPartition"][0] if spring_partition is not None else None
        ),
        traceparent=traceparent,
        tracestate=tracestate,
    )


def unknown_route(
    route: ReplyRoute,
    partitions: int | None,
    headers: list[tuple[str, bytes | None]],
    rules: RouteRules,
) -> InvalidHeader | None:
    """The route is bad when the broker does not have its topic (`partitions` None) or its
    partition (`partitions` is the topic's partition count). The default topic is the
    operator's: it is not judged here, only a partition asked for on it."""
    if partitions is None:
        if route.topic == rules.default_topic:
            return None
    elif route.partition is None or route.partition < partitions:
        return None
    if partitions is None:
        return refused_route(route, "the reply topic does not exist", headers, rules)
    names = {name for name, _ in headers}
    name = "reply-partition" if "reply-partition" in names else "kafka_replyPartition"
    why = f"the reply topic has no partition {route.partition}"
    return InvalidHeader(name, why, _fallback(route, rules))


def refused_route(
    route: ReplyRoute, why: str, headers: list[tuple[str, bytes | None]], rules: RouteRules
) -> InvalidHeader:
    """The reply topic the headers named cannot be answered on, for `why`."""
    name = "reply-to" if any(n == "reply-to" for n, _ in headers) else "kafka_replyTopic"
    return InvalidHeader(name, why, _fallback(route, rules))


def _fallback(route: ReplyRoute, rules: RouteRules) -> ReplyRoute:
    return ReplyRoute(
        rules.default_topic,
        None,
        route.correlation_id,
        spring_correlation_id=route.spring_correlation_id,
    )


def needs_broker_check(route: ReplyRoute, rules: RouteRules) -> bool:
    """Whether the broker must be asked about the route: a topic other than the default one,
    or a partition asked for."""
    return route.topic != rules.default_topic or route.partition is not None


def checked_route(data: dict[str, Any] | None, command_id: str, rules: RouteRules) -> ReplyRoute:
    """A route read back from the ledger, where an older version may have stored one that
    breaks today's rules: such a route becomes the default one."""
    if data:
        try:
            route = ReplyRoute.from_json(data)
        except (KeyError, TypeError, ValueError):
            return ReplyRoute(rules.default_topic, None, command_id)
        partition_ok = route.partition is None or (
            type(route.partition) is int and 0 <= route.partition <= MAX_PARTITION
        )
        topic_ok = (
            isinstance(route.topic, str)
            and bool(_TOPIC_NAME.fullmatch(route.topic))
            and not route.topic.startswith("_")
            and route.topic not in rules.own_topics
        )
        if partition_ok and topic_ok and isinstance(route.correlation_id, str):
            return route
    return ReplyRoute(rules.default_topic, None, command_id)
