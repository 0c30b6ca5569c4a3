"""Replay split across processes: the orchestration, with shards that need no services."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from typing import Any

import pytest

from payment_worker.entrypoints.replay import (
    ReplayError,
    ReplayOptions,
    ReplaySummary,
    merge_summaries,
    replay_in_processes,
)


class RecordingProgress:
    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, n: int, answered: int = 0, processed: int = 0) -> None:
        self.done += n
        self.answered = getattr(self, "answered", 0) + answered

    def stop(self) -> None:
        pass


def _shard(options: ReplayOptions, progress: Any) -> ReplaySummary:
    """Shard i of n 'reads' 10 * (i + 1) records, all answered from the ledger."""
    index, count = options.shard
    read = 10 * (index + 1)
    progress.start(read)
    progress.advance(read, read, 0)
    summary = ReplaySummary(read=read, seconds=0.5)
    summary.kinds["answered from ledger"] = read
    summary.outcomes[f"shard-{index}-of-{count}"] = 1
    return summary


def test_each_process_gets_its_shard_and_the_summaries_add_up() -> None:
    """Three processes, one shard each: reads, kinds, outcomes and progress add up."""
    progress = RecordingProgress()
    summary = replay_in_processes(ReplayOptions(topic="t"), 3, _shard, progress)
    assert summary.read == 10 + 20 + 30
    assert summary.kinds == Counter({"answered from ledger": 60})
    assert set(summary.outcomes) == {"shard-0-of-3", "shard-1-of-3", "shard-2-of-3"}
    assert progress.total == 60 and progress.done == 60 and progress.answered == 60
    assert 0.5 <= summary.seconds < 30


def _failing(options: ReplayOptions, progress: Any) -> ReplaySummary:
    if options.shard[0] == 1:
        raise ReplayError("topic 't' does not exist")
    return _shard(options, progress)


def test_a_failing_shard_fails_the_replay_with_its_message() -> None:
    """A shard that raises fails the whole replay with that shard's message."""
    with pytest.raises(ReplayError, match="topic 't' does not exist"):
        replay_in_processes(ReplayOptions(topic="t"), 2, _failing, RecordingProgress())


def _dying(options: ReplayOptions, progress: Any) -> ReplaySummary:
    if options.shard[0] == 0:
        os._exit(3)  # killed, say: no summary, no error message
    return _shard(options, progress)


def test_a_shard_that_dies_without_a_word_fails_the_replay() -> None:
    """A shard that exits without a result fails the replay instead of being forgotten."""
    with pytest.raises(ReplayError, match="ended without a result"):
        replay_in_processes(ReplayOptions(topic="t"), 2, _dying, RecordingProgress())


def test_merged_seconds_run_from_the_first_start_to_the_last_end() -> None:
    """The merged duration is wall time from the first shard's start to the last one's end."""
    a = ReplaySummary(read=5, seconds=2.0)  # ran from 98 to 100
    b = ReplaySummary(read=7, seconds=1.0)  # ran from 100.5 to 101.5
    merged = merge_summaries([(a, 100.0), (b, 101.5)])
    assert merged.read == 12
    assert merged.seconds == pytest.approx(3.5)


class Interrupted(Exception):
    """Stands for Ctrl-C reaching the parent while the shards run."""


class InterruptingProgress(RecordingProgress):
    def start(self, total: int) -> None:
        raise Interrupted


def _slow(options: ReplayOptions, progress: Any) -> ReplaySummary:
    progress.start(1)
    time.sleep(120)  # a long replay; only being stopped ends it early
    return ReplaySummary(read=1)


def test_an_interrupted_split_replay_stops_its_processes() -> None:
    """Interrupted, a split replay leaves no shard process running."""
    started = time.monotonic()
    with pytest.raises(Interrupted):
        replay_in_processes(ReplayOptions(topic="t"), 2, _slow, InterruptingProgress())
    assert multiprocessing.active_children() == []
    assert time.monotonic() - started < 60  # the shards were stopped, not waited for


def test_off_a_terminal_progress_is_a_line_every_few_seconds_even_while_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a terminal, `replay_progress` lines (read, answered, processed, per second)
    come from a timer: they keep coming while nothing advances."""
    from payment_worker.entrypoints.replay import progress as replay

    events: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def info(self, event: str, **fields: Any) -> None:
            events.append((event, fields))

    monkeypatch.setattr(replay, "log", Recorder())
    progress = replay.Progress(every_s=0.1, tty=False)
    progress.start(100)
    progress.advance(40, answered=30, processed=10)
    time.sleep(0.55)  # nothing advances meanwhile
    progress.stop()
    ticks = [fields for event, fields in events if event == "replay_progress"]
    assert len(ticks) >= 3
    assert {(t["read"], t["of"], t["answered"], t["processed"]) for t in ticks} == {
        (40, 100, 30, 10)
    }
    assert all(t["per_s"] > 0 for t in ticks)
