"""A record's headers as the bytes on the wire, names included, read with librdkafka itself.

confluent-kafka hands header names over as `str` and has no way to return them as bytes: a
name that is not UTF-8 (the broker does not check names) makes `Message.headers()` raise
SystemError, and the record's headers are lost to it. For such a record only, the same offset
is read again here through librdkafka's C API (the copy bundled in the confluent-kafka wheel,
so no second version of the library and no system package), to keep the names in hex.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from pathlib import Path
from typing import Any

import confluent_kafka

from payment_worker.adapters.kafka.config import consumer_defaults, for_consumer
from payment_worker.domain.ids import token_hex

RawHeaders = list[tuple[bytes, bytes | None]]

_CONSUMER = 1  # rd_kafka_type_t RD_KAFKA_CONSUMER
_NO_HEADERS = -156  # RD_KAFKA_RESP_ERR__NOENT from rd_kafka_message_headers


class RawReadFailed(Exception):
    """The record could not be read again (the library missing, the broker or offset gone)."""


class _Message(ctypes.Structure):
    _fields_ = [  # rd_kafka_message_t, public and stable since librdkafka 0.9
        ("err", ctypes.c_int),
        ("rkt", ctypes.c_void_p),
        ("partition", ctypes.c_int32),
        ("payload", ctypes.c_void_p),
        ("len", ctypes.c_size_t),
        ("key", ctypes.c_void_p),
        ("key_len", ctypes.c_size_t),
        ("offset", ctypes.c_int64),
        ("_private", ctypes.c_void_p),
    ]


_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka itself loaded (its wheel's bundled copy), else the
    system's; RawReadFailed when there is none."""
    global _library
    with _lock:
        if _library is not None:
            return _library
        package = Path(confluent_kafka.__file__).parent
        candidates = [
            *sorted(package.parent.glob("confluent_kafka.libs/librdkafka*.so*")),
            *sorted((package / ".dylibs").glob("librdkafka*.dylib")),
        ]
        name = str(candidates[0]) if candidates else ctypes.util.find_library("rdkafka")
        if name is None:
            raise RawReadFailed("librdkafka not found")
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise RawReadFailed(f"librdkafka not loadable: {exc}") from exc
        _declare(lib)
        _library = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i, s, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_conf_new": (p, []),
        "rd_kafka_conf_set": (i, [p, c, c, c, s]),
        "rd_kafka_conf_destroy": (None, [p]),
        "rd_kafka_new": (p, [i, p, c, s]),
        "rd_kafka_destroy": (None, [p]),
        "rd_kafka_poll_set_consumer": (i, [p]),
        "rd_kafka_consumer_close": (i, [p]),
        "rd_kafka_topic_partition_list_new": (p, [i]),
        "rd_kafka_topic_partition_list_add": (p, [p, c, ctypes.c_int32]),
        "rd_kafka_topic_partition_list_set_offset": (i, [p, c, ctypes.c_int32, ctypes.c_int64]),
        "rd_kafka_topic_partition_list_destroy": (None, [p]),
        "rd_kafka_assign": (i, [p, p]),
        "rd_kafka_consumer_poll": (ctypes.POINTER(_Message), [p, i]),
        "rd_kafka_message_destroy": (None, [ctypes.POINTER(_Message)]),
        "rd_kafka_message_headers": (i, [ctypes.POINTER(_Message), ctypes.POINTER(p)]),
        "rd_kafka_header_cnt": (s, [p]),
        "rd_kafka_header_get_all": (
            i,
            [p, s, ctypes.POINTER(c), ctypes.POINTER(p), ctypes.POINTER(s)],
        ),
        "rd_kafka_headers_new": (p, [s]),
        "rd_kafka_header_add": (i, [p, c, ctypes.c_ssize_t, c, ctypes.c_ssize_t]),
        "rd_kafka_headers_destroy": (None, [p]),
        "rd_kafka_err2str": (c, [i]),
    }
    for fn, (restype, argtypes) in signatures.items():
        getattr(lib, fn).restype = restype
        getattr(lib, fn).argtypes = argtypes


def new_handle(lib: ctypes.CDLL, kind: int, config: dict[str, Any]) -> int:
    """An rd_kafka_t of `kind` with every property of `config` (as text); RawReadFailed."""
    conf = lib.rd_kafka_conf_new()
    errstr = ctypes.create_string_buffer(512)
    for key, value in config.items():
        if not isinstance(value, str | int | float):
            continue  # a logger, callbacks: confluent-kafka's own, not librdkafka properties
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if lib.rd_kafka_conf_set(conf, key.encode(), text.encode(), errstr, 512) != 0:
            lib.rd_kafka_conf_destroy(conf)
            raise RawReadFailed(f"{key}: {errstr.value.decode(errors='replace')}")
    handle = lib.rd_kafka_new(kind, conf, errstr, 512)  # owns conf from here on
    if not handle:
        lib.rd_kafka_conf_destroy(conf)
        raise RawReadFailed(errstr.value.decode(errors="replace"))
    return int(handle)


class RawHeaderReader:
    """Reads one record's headers again by offset; its librdkafka consumer (no group joined,
    nothing committed) is created on first use and kept for the next, until `close()`. Every
    call runs on the caller's thread (the worker's consumer thread)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {
            **consumer_defaults(config),
            **for_consumer(config),
            "group.id": f"payment-worker-raw-{token_hex(6)}",
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
        }
        self._handle: int | None = None

    def read(self, topic: str, partition: int, offset: int, timeout_s: float = 5.0) -> RawHeaders:
        """The headers of the record at `offset`, names and values as bytes."""
        lib = librdkafka()
        if self._handle is None:
            self._handle = new_handle(lib, _CONSUMER, self.config)
            lib.rd_kafka_poll_set_consumer(self._handle)
        handle = self._handle
        wanted = lib.rd_kafka_topic_partition_list_new(1)
        lib.rd_kafka_topic_partition_list_add(wanted, topic.encode(), partition)
        lib.rd_kafka_topic_partition_list_set_offset(wanted, topic.encode(), partition, offset)
        err = lib.rd_kafka_assign(handle, wanted)
        lib.rd_kafka_topic_partition_list_destroy(wanted)
        if err:
            raise RawReadFailed(f"assign: {lib.rd_kafka_err2str(err).decode()}")
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                message = lib.rd_kafka_consumer_poll(handle, 100)
                if not message:
                    continue
                try:
                    found = message.contents
                    if found.err or found.partition != partition or found.offset != offset:
                        continue
                    return _headers_of(lib, message)
                finally:
                    lib.rd_kafka_message_destroy(message)
            raise RawReadFailed(f"{topic}[{partition}]@{offset} not read within {timeout_s} s")
        finally:
            lib.rd_kafka_assign(handle, None)

    def close(self) -> None:
        if self._handle is not None:
            lib = librdkafka()
            lib.rd_kafka_consumer_close(self._handle)
            lib.rd_kafka_destroy(self._handle)
            self._handle = None


def _headers_of(lib: ctypes.CDLL, message: Any) -> RawHeaders:
    headers = ctypes.c_void_p()
    err = lib.rd_kafka_message_headers(message, ctypes.byref(headers))
    if err == _NO_HEADERS:
        return []
    if err:
        raise RawReadFailed(f"headers: {lib.rd_kafka_err2str(err).decode()}")
    out: RawHeaders = []
    name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
    for index in range(lib.rd_kafka_header_cnt(headers)):
        if lib.rd_kafka_header_get_all(
            headers, index, ctypes.byref(name), ctypes.byref(value), ctypes.byref(size)
        ):
            break
        data = ctypes.string_at(value.value, size.value) if value.value is not None else None
        out.append((name.value or b"", data))
    return out
