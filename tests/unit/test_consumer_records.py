"""From a consumed message to a record (adapters/kafka/consumer.py): whatever the message's
bytes, a record comes back; one confluent-kafka cannot hand over whole is marked unreadable,
with header names that are not UTF-8 kept in hex (contract section 2)."""

from __future__ import annotations

from typing import Any

from payment_worker.adapters.kafka.consumer import readable_headers, to_record


class _Message:
    """A stand-in for confluent_kafka.Message (which cannot be built from Python) whose
    headers() raises as the library does for a name that is not UTF-8."""

    def __init__(self, headers: Any = None, raises: bool = False) -> None:
        self._headers, self._raises = headers, raises

    def topic(self) -> str:
        return "process-payment"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 41

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> Any:
        if self._raises:
            raise SystemError("<built-in method headers> returned NULL without setting an error")
        return self._headers


def test_a_readable_message_becomes_a_readable_record() -> None:
    """Key, value, headers and position as consumed; not marked unreadable."""
    record = to_record(_Message([("reply-to", b"x"), ("empty", None)]))  # type: ignore[arg-type]
    assert (record.key, record.value, record.partition, record.offset) == (b"k", b"v", 2, 41)
    assert record.headers == [("reply-to", b"x"), ("empty", None)]
    assert record.unreadable is None


def test_headers_the_library_cannot_read_are_read_again_with_names_in_hex() -> None:
    """headers() raising does not escape: the record is unreadable, and its headers come from
    the raw reader, a name that is not UTF-8 in hex and any other as it was."""
    asked: list[tuple[str, int, int]] = []

    def read_raw(topic: str, partition: int, offset: int) -> list[tuple[bytes, bytes | None]]:
        asked.append((topic, partition, offset))
        return [(b"\xff\xfe", b"v"), (b"ok", None)]

    record = to_record(_Message(raises=True), read_raw)  # type: ignore[arg-type]
    assert asked == [("process-payment", 2, 41)]
    assert record.unreadable is not None and "not UTF-8" in record.unreadable
    assert record.headers == [("dlq-name-hex:fffe", b"v"), ("ok", None)]
    assert (record.key, record.value) == (b"k", b"v")


def test_a_failing_raw_read_still_gives_an_unreadable_record() -> None:
    """When the headers cannot be read again either, the record comes back without them,
    marked unreadable with both reasons (it is dead-lettered, never a crash)."""

    def read_raw(topic: str, partition: int, offset: int) -> list[tuple[bytes, bytes | None]]:
        raise OSError("broker gone")

    record = to_record(_Message(raises=True), read_raw)  # type: ignore[arg-type]
    assert record.headers == []
    assert record.unreadable is not None and "broker gone" in record.unreadable


def test_header_names_are_kept_in_hex_only_when_not_utf8() -> None:
    """UTF-8 names (any script) are kept as text; others become `dlq-name-hex:<hex>`."""
    assert readable_headers([("é".encode(), b"1"), (b"\xc3(", b"2")]) == [
        ("é", b"1"),
        ("dlq-name-hex:c328", b"2"),
    ]
