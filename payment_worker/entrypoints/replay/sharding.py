"""A replay split by partition across child processes: each replays its share, the parent
adds up their progress and summaries."""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from payment_worker.entrypoints.replay.exceptions import ReplayError
from payment_worker.entrypoints.replay.options import ReplayOptions
from payment_worker.entrypoints.replay.summary import ReplaySummary, merge_summaries
from payment_worker.exceptions import PaymentWorkerError

ShardRunner = Callable[[ReplayOptions, Any], ReplaySummary]


class PipeProgress:
    """A shard's progress, sent to the process that started it."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def start(self, total: int) -> None:
        self.conn.send(("total", total))

    def advance(self, n: int, answered: int = 0, processed: int = 0) -> None:
        self.conn.send(("advance", (n, answered, processed)))

    def stop(self) -> None:
        pass


def _shard_main(
    run_shard: ShardRunner, options: ReplayOptions, conn: multiprocessing.connection.Connection
) -> None:
    """A child process: replay one shard, send back its summary (or its error)."""
    try:
        summary = run_shard(options, PipeProgress(conn))
        conn.send(("done", (summary, time.time())))
    except BaseException as exc:
        known = isinstance(exc, PaymentWorkerError)
        conn.send(("error", str(exc) if known else f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        conn.close()


def replay_in_processes(
    options: ReplayOptions, processes: int, run_shard: ShardRunner, progress: Any
) -> ReplaySummary:
    """The replay split by partition across `processes` child processes (one Python process
    is bound by one core): each reads its share of the partitions with its own consumer,
    database pool and producer; commands of one order stay in one partition, so their order
    is kept. The summary adds up the shards'; its seconds run from the first shard's start to
    the last one's end.

    The children are forked before this process creates any Kafka client, thread or event
    loop, so they start at once and share nothing that fork would break."""
    context = multiprocessing.get_context("fork")
    sys.stdout.flush()  # or a child would write this process's buffered output again
    sys.stderr.flush()
    gc.collect()
    gc.freeze()  # the children share the start-up objects instead of copying them
    receivers: list[multiprocessing.connection.Connection] = []
    children = []
    for index in range(processes):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_shard_main,
            args=(run_shard, replace(options, shard=(index, processes)), sender),
            name=f"payment-worker-replay-{index}",
        )
        child.start()
        sender.close()
        receivers.append(receiver)
        children.append(child)
    collected = False
    try:
        results, errors = _collect(receivers, processes, progress)
        collected = True
    finally:
        for child in children:
            if not collected and child.is_alive():
                child.terminate()  # interrupted (Ctrl-C): the shards stop too
            child.join()
    lost = len(children) - len(results) - len(errors)
    if lost:
        errors.append(f"{lost} replay process(es) ended without a result")
    if errors:
        raise ReplayError("; ".join(dict.fromkeys(errors)))
    return merge_summaries(results)


def _collect(
    receivers: list[multiprocessing.connection.Connection], processes: int, progress: Any
) -> tuple[list[tuple[ReplaySummary, float]], list[str]]:
    """The shards' messages until every pipe is closed: progress, then a result or an error."""
    totals: list[int] = []
    early = [0, 0, 0]  # progress reported before every shard gave its total
    results: list[tuple[ReplaySummary, float]] = []
    errors: list[str] = []
    waiting = set(receivers)
    while waiting:
        for conn in multiprocessing.connection.wait(list(waiting)):
            assert isinstance(conn, multiprocessing.connection.Connection)
            try:
                kind, value = conn.recv()
            except EOFError:
                waiting.discard(conn)
                continue
            if kind == "total":
                totals.append(value)
                if len(totals) == processes:
                    progress.start(sum(totals))
                    if early[0]:
                        progress.advance(*early)
            elif kind == "advance":
                if len(totals) == processes:
                    progress.advance(*value)
                else:
                    early = [a + b for a, b in zip(early, value, strict=True)]
            elif kind == "done":
                results.append(value)
            elif kind == "error":
                errors.append(value)
    return results, errors
