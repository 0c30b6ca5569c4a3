"""Which offsets may be committed: a record's offset only once it and every earlier record of
its partition are done."""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets consumed from one partition, in order, and which of them are done."""

    __slots__ = ("_done", "_pending", "committed", "ready")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.ready: int | None = None  # next offset to commit: everything below it is done
        self.committed: int | None = None

    def started(self, offset: int) -> None:
        self._pending.append(offset)

    def finished(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            first = self._pending.popleft()
            self._done.discard(first)
            self.ready = first + 1

    @property
    def unfinished(self) -> int:
        """Records consumed and not done yet (or done but behind one that is not)."""
        return len(self._pending)


class OffsetTracker:
    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionOffsets] = {}

    def started(self, topic: str, partition: int, offset: int) -> PartitionOffsets:
        """Track a consumed record; the returned partition is where it is marked finished.
        Once a partition is forgotten (revoked), a record of the old assignment marks its
        own, detached copy: never the offsets of the same partition assigned again."""
        tracked = self.partitions.setdefault((topic, partition), PartitionOffsets())
        tracked.started(offset)
        return tracked

    def finished(self, topic: str, partition: int, offset: int) -> None:
        tracked = self.partitions.get((topic, partition))
        if tracked is not None:
            tracked.finished(offset)

    def to_commit(self, only: list[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """Offsets that moved since their last successful commit."""
        return {
            key: t.ready
            for key, t in self.partitions.items()
            if t.ready is not None and t.ready != t.committed and (only is None or key in only)
        }

    def committed(self, points: dict[tuple[str, int], int]) -> None:
        for key, offset in points.items():
            tracked = self.partitions.get(key)
            if tracked is not None:
                tracked.committed = offset

    def unfinished(self, keys: list[tuple[str, int]] | None = None) -> int:
        return sum(t.unfinished for k, t in self.partitions.items() if keys is None or k in keys)

    def forget(self, keys: list[tuple[str, int]]) -> None:
        for key in keys:
            self.partitions.pop(key, None)
