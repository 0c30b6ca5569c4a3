"""A record's headers as the bytes on the wire, names included, read with librdkafka itself.

confluent-kafka hands header names over as `str` and has no way to return them as bytes: a
name that is not UTF-8 (the broker does not check names) makes `Message.headers()` raise
SystemError, or crash the interpreter (seen with several such names). So headers are never
converted by it: they are read here, before it would, from the librdkafka header list the
Message holds, through librdkafka's C API (the copy bundled in the confluent-kafka wheel, the
very library confluent-kafka calls). Where the Message's layout is not the one this was
written against (checked on each message), None says so and the caller falls back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from pathlib import Path
from typing import Any

import confluent_kafka

RawHeaders = list[tuple[bytes, bytes | None]]


class RawKafkaError(Exception):
    """librdkafka cannot be loaded, or refused a handle's configuration."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka itself loaded (its wheel's bundled copy), else the
    system's; RawKafkaError when there is none."""
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
            raise RawKafkaError("librdkafka not found")
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise RawKafkaError(f"librdkafka not loadable: {exc}") from exc
        _declare(lib)
        lib._bundled = bool(candidates)  # type: ignore[attr-defined]
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
    """An rd_kafka_t of `kind` with every property of `config` (as text); RawKafkaError."""
    conf = lib.rd_kafka_conf_new()
    errstr = ctypes.create_string_buffer(512)
    for key, value in config.items():
        if not isinstance(value, str | int | float):
            continue  # a logger, callbacks: confluent-kafka's own, not librdkafka properties
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if lib.rd_kafka_conf_set(conf, key.encode(), text.encode(), errstr, 512) != 0:
            lib.rd_kafka_conf_destroy(conf)
            raise RawKafkaError(f"{key}: {errstr.value.decode(errors='replace')}")
    handle = lib.rd_kafka_new(kind, conf, errstr, 512)  # owns conf from here on
    if not handle:
        lib.rd_kafka_conf_destroy(conf)
        raise RawKafkaError(errstr.value.decode(errors="replace"))
    return int(handle)


_HEAD = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # PyObject_HEAD
_FIELDS = 5  # topic, value, key, headers (converted), c_headers (librdkafka's list)


_VOID_P = ctypes.sizeof(ctypes.c_void_p)
_Fields = ctypes.c_void_p * _FIELDS


class _HeaderApi:
    """The two librdkafka calls reading a header list, bound once (this runs per message)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.count = lib.rd_kafka_header_cnt
        self.get_all = lib.rd_kafka_header_get_all
        self.name, self.value, self.size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
        self.refs = (ctypes.byref(self.name), ctypes.byref(self.value), ctypes.byref(self.size))
        self.lock = threading.Lock()  # the out-parameters are shared by every consumer thread


_api: _HeaderApi | bool | None = False  # False: not looked for yet; None: not available


def _header_api() -> _HeaderApi | None:
    """The calls, when librdkafka is the copy confluent-kafka itself calls (the wheel's)."""
    global _api
    if _api is False:
        try:
            lib = librdkafka()
            _api = _HeaderApi(lib) if getattr(lib, "_bundled", False) else None
        except RawKafkaError:
            _api = None
    return _api  # type: ignore[return-value]


def message_headers(message: confluent_kafka.Message) -> RawHeaders | None:
    """The headers of a consumed message as bytes, read before confluent-kafka converts them;
    None when that cannot be done safely (not the bundled library, an unknown layout, headers
    already converted), and then only `message.headers()` is left."""
    api = _header_api()
    if api is None or type(message) is not confluent_kafka.Message:
        return None
    if type(message).__basicsize__ < _HEAD + _FIELDS * _VOID_P:
        return None
    topic, value, key, converted, c_headers = _Fields.from_address(id(message) + _HEAD)
    # The layout is confirmed by the fields whose objects Python hands out as they are held
    # (a field left NULL reads None, and hands out None).
    held = message.topic(), message.value(), message.key()
    if converted is not None or held[0] is None or topic != id(held[0]):
        return None
    if (value != id(held[1]) and value is not None) or (key != id(held[2]) and key is not None):
        return None
    if c_headers is None:
        return []
    out: RawHeaders = []
    string_at = ctypes.string_at
    with api.lock:
        name, data, size = api.name, api.value, api.size
        for index in range(api.count(c_headers)):
            if api.get_all(c_headers, index, *api.refs):
                break
            found = data.value
            out.append((name.value or b"", None if found is None else string_at(found, size.value)))
    return out
