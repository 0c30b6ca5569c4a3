"""From a consumed message to a record (adapters/kafka/consumer.py): whatever the message's
bytes, a record comes back; one confluent-kafka cannot hand over whole is marked unreadable,
with header names that are not UTF-8 kept in hex (contract section 2). Real messages (read
as bytes before confluent-kafka converts them) are in tests/integration/test_raw_headers.py."""

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


def test_a_message_whose_bytes_cannot_be_read_first_falls_back_without_raising() -> None:
    """Where the headers cannot be read as bytes (not confluent-kafka's own Message), the
    library's conversion raising does not escape: the record is unreadable, without headers,
    its key and value kept (it is dead-lettered, never a crash)."""
    record = to_record(_Message(raises=True))  # type: ignore[arg-type]
    assert record.headers == []
    assert record.unreadable is not None and "not UTF-8" in record.unreadable
    assert (record.key, record.value, record.offset) == (b"k", b"v", 41)


def test_header_names_are_kept_in_hex_only_when_not_utf8() -> None:
    """UTF-8 names (any script) are kept as text; others become `dlq-name-hex:<hex>`."""
    assert readable_headers([("é".encode(), b"1"), (b"\xc3(", b"2")]) == [
        ("é", b"1"),
        ("dlq-name-hex:c328", b"2"),
    ]
