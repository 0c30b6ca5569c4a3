"""Where a command's CPU goes in the worker, stage by stage: py-spy samples the worker's Python
threads while they hold the interpreter lock (`--gil`, 250 Hz, without pausing the worker), each
sample goes to the innermost stage its stack is in, and the Python threads' CPU per command (from
/proc, per thread) is shared out in those proportions. librdkafka's own threads are measured
apart, from /proc. Sampling runs in its own process: the worker's CPU is its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (stage, patterns a frame "function (file:line)" may contain), matched from the innermost frame
# outwards: the first frame that matches any stage decides. Library frames (psycopg, redis,
# asyncio) match nothing and count for the stage of our code that called them.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("metrics and tracing", ("prometheus_client/", "payment_worker/metrics.py", "tracing.py")),
    ("consume and decode", ("kafka/consumer.py", "kafka/raw.py", "avro_codec.py:3", "decode (")),
    (
        "header and field checks",
        ("domain/routing.py", "domain/validation.py", "domain/cards.py", "service/intake.py"),
    ),
    (
        "Ordering/Inventory lookups",
        (
            "http_services.py",
            "http_client.py",
            "service/lookups.py",
            "check_order",
            "check_reservation",
        ),
    ),
    ("order lock", ("redis_lock.py",)),
    (
        "ledger read and begin",
        ("_snapshot_batch", "_begin_batch", "LedgerSteps.snapshot", "LedgerSteps.begin_payment"),
    ),
    ("gateway", ("adapters/gateway.py", "gateway_rules.py")),
    (
        "reply, event and final transaction",
        (
            "_finish_batch",
            "_record_batch",
            "messages.py",
            "avro_reply.py",
            "avro_codec.py",
            "answering.py",
            "LedgerSteps.finish_payment",
            "LedgerSteps.record",
        ),
    ),
    ("relay produce", ("entrypoints/relay.py", "kafka/producer.py", "postgres/outbox.py")),
    ("offset commit", ("Worker._commit", "tracking.py", "ThreadedConsumer._commit")),
    (
        "dispatch and decide",
        (
            "entrypoints/worker.py",
            "entrypoints/chains.py",
            "service/pipeline.py",
            "service/paying.py",
            "domain/decision.py",
            "adapters/coalesce.py",
            "retrying.py",
        ),
    ),
]
LOOP = "event loop and scheduling"
LIBRDKAFKA = "librdkafka threads"


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(p in frame for p in patterns):
                return stage
    return LOOP


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of each kind of thread: librdkafka's (named rdk:*) and Python's."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {"python": 0.0, LIBRDKAFKA: 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        kind = LIBRDKAFKA if name.startswith("rdk:") else "python"
        found[kind] += (int(fields[11]) + int(fields[12])) / tick
    return found


class Sampler:
    """py-spy on one process, from start() until stop(); then `stages(...)`."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None
        self.before: dict[str, float] = {}

    def start(self) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        self.before = thread_cpu_s(self.pid)
        self.proc = subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--gil",
                "--nonblocking",
                "--rate",
                "250",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, float]:
        """The CPU seconds each kind of thread used since start()."""
        used = {k: v - self.before.get(k, 0.0) for k, v in thread_cpu_s(self.pid).items()}
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return used

    def stages(self, used: dict[str, float], commands: int) -> dict[str, float]:
        """CPU µs per command of each stage (librdkafka's threads apart); empty when py-spy
        could not sample (not permitted on this machine, or no samples)."""
        samples: Counter[str] = Counter()
        if self.out.exists():
            for line in self.out.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if stack and count.isdigit():
                    samples[stage_of(stack.split(";"))] += int(count)
        total = sum(samples.values())
        if not total or commands <= 0:
            return {}
        python_us = used["python"] * 1e6 / commands
        table = {stage: python_us * n / total for stage, n in samples.most_common()}
        table[LIBRDKAFKA] = used[LIBRDKAFKA] * 1e6 / commands
        return table
