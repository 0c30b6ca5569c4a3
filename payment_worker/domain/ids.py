"""Ids and tokens from the operating system's CSPRNG (payment, event, message and correlation
ids, lock tokens): nothing a caller sees can be predicted from what it saw before. Each is read
from os.urandom when it is made, so a forked process never hands out its parent's bytes."""

from __future__ import annotations

import os
import uuid


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID."""
    return uuid.uuid4()


def random_uuid() -> str:
    """A random (version 4) UUID as canonical text."""
    return str(uuid.uuid4())


def token_hex(n_bytes: int = 16) -> str:
    """A random token of `n_bytes` bytes as hex (lock tokens)."""
    return os.urandom(n_bytes).hex()
