"""Ids and tokens from the operating system's CSPRNG (payment, event, message and correlation
ids, lock tokens): nothing a caller sees can be predicted from what it saw before. Each is read
from os.urandom when it is made, so a forked process never hands out its parent's bytes."""

from __future__ import annotations

import os
import uuid


class Id(uuid.UUID):
    """A UUID that keeps its canonical text once it has been asked for: a command's ids are
    written out as text a few dozen times on its way (the lookups' paths, the lock's key, the
    event, the reply, the logs), and `uuid.UUID` formats them again each time (~1.5 µs against
    ~0.2). Equal to, and hashed as, the `uuid.UUID` of the same value."""

    __slots__ = ("_text",)
    _text: str

    def __str__(self) -> str:
        try:
            return self._text
        except AttributeError:
            text = uuid.UUID.__str__(self)
            object.__setattr__(self, "_text", text)  # UUID forbids setting attributes
            return text


def new_uuid() -> Id:
    """A random (version 4) UUID."""
    return Id(bytes=os.urandom(16), version=4)


def random_uuid() -> str:
    """A random (version 4) UUID as canonical text."""
    return str(uuid.uuid4())


def token_hex(n_bytes: int = 16) -> str:
    """A random token of `n_bytes` bytes as hex (lock tokens)."""
    return os.urandom(n_bytes).hex()
