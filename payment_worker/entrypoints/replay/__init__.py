"""`payment-worker replay`: read a topic with a consumer of its own, from a start position to
the end offsets seen at start, and feed every command through the pipeline again.

The live group's offsets are never read or moved (manual assignment, nothing committed).
Recorded outcomes are answered from the ledger in batches; new and ERROR commands do work.
"""

from payment_worker.entrypoints.replay.exceptions import ReplayError
from payment_worker.entrypoints.replay.options import ReplayOptions, parse_timestamp
from payment_worker.entrypoints.replay.processing import ReplayApp, Replayer
from payment_worker.entrypoints.replay.progress import Progress
from payment_worker.entrypoints.replay.reading import Bounds, PartitionReader
from payment_worker.entrypoints.replay.sharding import (
    PipeProgress,
    ShardRunner,
    replay_in_processes,
)
from payment_worker.entrypoints.replay.summary import (
    ReplaySummary,
    merge_summaries,
    print_summary,
)

__all__ = [
    "Bounds",
    "PartitionReader",
    "PipeProgress",
    "Progress",
    "ReplayApp",
    "ReplayError",
    "ReplayOptions",
    "ReplaySummary",
    "Replayer",
    "ShardRunner",
    "merge_summaries",
    "parse_timestamp",
    "print_summary",
    "replay_in_processes",
]
