"""Ids and tokens from the operating system's CSPRNG (payment, event, message and correlation
ids, lock tokens): nothing a caller sees can be predicted from what it saw before.

os.urandom is read in blocks: each call releases the interpreter lock, and one call per id
made the caller wait behind the Kafka client threads under load. Each thread has its own
block, and a forked child starts with none, so no two processes hand out the same bytes.
"""

from __future__ import annotations

import os
import threading
import uuid

_BLOCK = 4096
_VERSION_BITS = ~((0xF << 76) | (0x3 << 62))
_VERSION_4 = (0x4 << 76) | (0x2 << 62)


class _Blocks(threading.local):
    def __init__(self) -> None:
        self.data = b""
        self.at = 0


_blocks = _Blocks()


def _reset_after_fork() -> None:
    global _blocks
    _blocks = _Blocks()


os.register_at_fork(after_in_child=_reset_after_fork)


def random_bytes(n: int) -> bytes:
    """`n` bytes (at most a block) from the CSPRNG, never handed out twice."""
    blocks = _blocks
    if blocks.at + n > len(blocks.data):
        blocks.data, blocks.at = os.urandom(max(_BLOCK, n)), 0
    start = blocks.at
    blocks.at = start + n
    return blocks.data[start : start + n]


def _uuid4_int() -> int:
    return (int.from_bytes(random_bytes(16), "big") & _VERSION_BITS) | _VERSION_4


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID."""
    return uuid.UUID(int=_uuid4_int())


def random_uuid() -> str:
    """A random (version 4) UUID as canonical text."""
    h = f"{_uuid4_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def token_hex(n_bytes: int = 16) -> str:
    """A random token of `n_bytes` bytes as hex (lock tokens)."""
    return random_bytes(n_bytes).hex()
