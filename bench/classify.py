"""`python -m bench.classify`: the CPU time the worker spends on one hostile 1 MiB record before
any money work (decode, header checks, validation, the card-number search, the reply or dead
letter built), worst of a few runs per shape. Goal: at most 50 ms each, so that no record holds
the event loop, and the commands of other partitions, for long.

The record goes through the worker's own `Pipeline.handle`; only the ports behind it are
stand-ins (nothing is written, and reaching the money path is an error: no shape is payable).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from payment_worker.adapters.avro_codec import AvroCodec, DecodeError, SchemaSet
from payment_worker.service.messages import MessageFactory, Topics
from payment_worker.service.pipeline import Pipeline
from payment_worker.service.ports import InboundRecord, OutboxMessage
from payment_worker.testing import command_record

MIB = 1 << 20
GOAL_MS = 50.0


class _Ledger:
    """Takes what the pipeline writes and keeps nothing."""

    async def record(self, messages: list[OutboxMessage], ledger: Any = None) -> list[Any]:
        return []


class _NoMoney:
    """Every port of the money path: classification must never get there."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raise AssertionError(f"a hostile record reached the money path ({name})")


def _pipeline(codec: AvroCodec) -> Pipeline:
    no_money: Any = _NoMoney()
    return Pipeline(
        decoder=codec,
        decode_error=DecodeError,
        messages=MessageFactory(codec, Topics()),
        ledger=_Ledger(),  # type: ignore[arg-type]
        ordering=no_money,
        inventory=no_money,
        gateway=no_money,
        locks=no_money,
        topics=no_money,
    )


def _record(
    value: bytes | None, headers: list[tuple[str, bytes | None]] | None = None
) -> InboundRecord:
    return InboundRecord("process-payment", 0, 0, b"key", value, headers or [])


def shapes(codec: AvroCodec) -> dict[str, InboundRecord]:
    """One 1 MiB record per way of making the worker search a lot."""
    command = command_record()
    small = codec.encode("ProcessPayment", command, "process-payment")
    fill = MIB - len(small)
    spaced = (b"1 " * MIB)[:MIB]
    rng = random.Random(30)
    return {
        # 1s have no 13-19 digit window passing Luhn: the search's worst case.
        "digit_run_command_id": _record(
            codec.encode("ProcessPayment", {**command, "commandId": "1" * fill}, "process-payment")
        ),
        "digits_in_a_header": _record(small, [("kafka_correlationId", b"1" * MIB)]),
        "digits_in_a_correlation_id": _record(small, [("correlation-id", b"1" * MIB)]),
        "dead_letter_value_of_digits": _record(b"\xff" + b"1" * (MIB - 1)),
        "dead_letter_value_of_spaced_digits": _record(b"\xff" + spaced[1:]),
        "dead_letter_many_large_headers": _record(
            b"\xff", [(f"h{i}", b"1" * (64 * 1024)) for i in range(16)]
        ),
        "random_bytes": _record(rng.randbytes(MIB)),
        "random_bytes_in_headers": _record(
            b"\xff", [(f"h{i}", rng.randbytes(64 * 1024)) for i in range(16)]
        ),
    }


def worst_classify_ms(runs: int = 3) -> dict[str, Any]:
    """CPU milliseconds (time.process_time) of `Pipeline.handle` for each 1 MiB shape, the
    worst of `runs`; plus the worst of all and the goal. CPU time of this process, so other
    work on the machine weighs less than on a wall clock."""
    codec = AvroCodec(SchemaSet())
    pipeline = _pipeline(codec)
    figures: dict[str, float] = {}

    async def measure() -> None:
        for name, record in shapes(codec).items():
            worst = 0.0
            for _ in range(runs):
                started = time.process_time()
                await pipeline.handle(record)
                worst = max(worst, (time.process_time() - started) * 1000)
            figures[name] = round(worst, 2)

    # The pipeline's log lines are held back (stdout is the JSON's), not timed being printed.
    with structlog.testing.capture_logs():
        asyncio.run(measure())
    worst = max(figures.values())
    return {
        "record_bytes": MIB,
        "shapes_ms": figures,
        "worst_ms": worst,
        "goal_ms": GOAL_MS,
        "within_goal": worst <= GOAL_MS,
    }


if __name__ == "__main__":
    print(json.dumps(worst_classify_ms(), indent=2))
