"""A producer that can write what confluent-kafka cannot: header names of any bytes.

confluent-kafka encodes header names from `str`, so a name that is not UTF-8 (as any librdkafka
producer may send, and the broker accepts) can only be written below it: here through
librdkafka's C API, the copy bundled in the confluent-kafka wheel, with ctypes. Chosen over
Debian's kcat so the tests need no system package beyond the Python environment.
"""

from __future__ import annotations

import ctypes
from typing import Any

from payment_worker.adapters.kafka.raw import librdkafka, new_handle

_PRODUCER = 0  # RD_KAFKA_PRODUCER
# rd_kafka_vtype_t
_TOPIC, _PARTITION, _VALUE, _KEY, _MSGFLAGS, _HEADERS = 1, 3, 4, 5, 7, 10
_MSG_F_COPY = 0x2


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Value(ctypes.Union):
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("i", ctypes.c_int),
        ("i32", ctypes.c_int32),
        ("mem", _Mem),
        ("ptr", ctypes.c_void_p),
        ("_pad", ctypes.c_char * 64),
    ]


class _Vu(ctypes.Structure):
    _fields_ = [("vtype", ctypes.c_int), ("u", _Value)]


class RawProducer:
    """A librdkafka producer (acks=all) for records with header names of any bytes."""

    def __init__(self, bootstrap: str) -> None:
        self.lib = librdkafka()
        self.lib.rd_kafka_produceva.restype = ctypes.c_void_p
        self.lib.rd_kafka_produceva.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_Vu),
            ctypes.c_size_t,
        ]
        self.lib.rd_kafka_error_string.restype = ctypes.c_char_p
        self.lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
        self.lib.rd_kafka_flush.restype = ctypes.c_int
        self.lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": "all"}
        self.handle: int | None = new_handle(self.lib, _PRODUCER, config)

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[bytes, bytes | None]],
        partition: int = 0,
    ) -> None:
        """Queue one record (payload copied); AssertionError if librdkafka refuses it."""
        lib = self.lib
        list_ = lib.rd_kafka_headers_new(len(headers))
        for name, data in headers:
            lib.rd_kafka_header_add(list_, name, len(name), data, -1 if data is None else len(data))
        fields = [_Vu(_TOPIC, _Value(cstr=topic.encode())), _Vu(_PARTITION, _Value(i32=partition))]
        kept = []  # buffers alive until librdkafka copied them (MSG_F_COPY)
        for vtype, data in ((_KEY, key), (_VALUE, value)):
            if data is not None:
                buffer = ctypes.create_string_buffer(data, len(data))
                kept.append(buffer)
                mem = _Mem(ctypes.cast(buffer, ctypes.c_void_p), len(data))
                fields.append(_Vu(vtype, _Value(mem=mem)))
        fields += [
            _Vu(_MSGFLAGS, _Value(i=_MSG_F_COPY)),
            _Vu(_HEADERS, _Value(ptr=list_)),  # owned by the message once produced
        ]
        error = lib.rd_kafka_produceva(self.handle, (_Vu * len(fields))(*fields), len(fields))
        if error:
            lib.rd_kafka_headers_destroy(list_)
            raise AssertionError(lib.rd_kafka_error_string(error).decode())

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait for every queued record to be acknowledged; AssertionError if one is not."""
        assert self.lib.rd_kafka_flush(self.handle, int(timeout_s * 1000)) == 0, "not delivered"

    def close(self) -> None:
        if self.handle is not None:
            self.lib.rd_kafka_destroy(self.handle)
            self.handle = None


def produce_raw(
    bootstrap: str,
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[bytes, bytes | None]],
    partition: int = 0,
) -> None:
    """Write one record whose header names are bytes as given, and wait for its ack."""
    producer = RawProducer(bootstrap)
    try:
        producer.produce(topic, key=key, value=value, headers=headers, partition=partition)
        producer.flush()
    finally:
        producer.close()
