"""payment-worker: takes payments for the ticketing platform.

Commands: run (the worker), shim (HTTP), migrate (the schema), topics (create missing topics),
replay (reprocess a topic), demo (everything on this machine). Configuration is environment
only (PAYMENT_*)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

import structlog

from payment_worker import tracing
from payment_worker.config import Settings, load_settings
from payment_worker.domain.health import Thresholds
from payment_worker.exceptions import ConfigurationError, PaymentWorkerError
from payment_worker.logs import configure_logging

log = structlog.get_logger("payment_worker")
T = TypeVar("T")


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _run_worker(settings: Settings) -> int:
    from payment_worker.adapters.kafka import broker_problem, topic_partitions
    from payment_worker.adapters.postgres.migrations import schema_problem
    from payment_worker.bootstrap import check_gateway, open_app, redis_problem
    from payment_worker.entrypoints.http_status import StatusServer
    from payment_worker.entrypoints.startup import Dependency, load_schemas, wait_for, where

    stop = _stop_event()
    database = Dependency(
        "postgresql", "PAYMENT_DATABASE_URL", where(settings.database_url.get_secret_value())
    )
    kafka = Dependency("kafka", "PAYMENT_KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    topics = Dependency("kafka topics", "PAYMENT_TOPIC_*", settings.kafka_bootstrap_servers)
    async with open_app(settings) as app:

        async def database_problem() -> str | None:
            return await app.store.connect_problem(settings.database_url.get_secret_value())

        async def broker_down() -> str | None:
            return await asyncio.to_thread(broker_problem, settings.kafka_common(), 3.0)

        async def topics_missing() -> str | None:
            names = settings.own_topics()
            found = await asyncio.to_thread(topic_partitions, settings.kafka_common(), names)
            missing = [name for name, partitions in found.items() if partitions is None]
            if not missing:
                return None
            return f"missing {', '.join(missing)}: create them with `payment-worker topics`"

        if not await wait_for(database, database_problem, stop):
            return 0
        problem = schema_problem(settings.db_schema, await app.store.applied_migrations())
        if problem:
            raise PaymentWorkerError(problem)
        if not await wait_for(kafka, broker_down, stop):
            return 0
        if not await wait_for(topics, topics_missing, stop):
            return 0
        if not await load_schemas(settings, app.pipeline.messages.load, stop):
            return 0
        await check_gateway(app.gateway)
        redis_down = await redis_problem(settings)
        if redis_down is not None:
            log.warning(
                "redis_unreachable",
                variable="PAYMENT_REDIS_URL",
                target=where(settings.redis_url.get_secret_value()),
                error=redis_down,
                degrades="no per-order lock until it is back: commands still run, and the"
                " database still refuses a second charge for an order",
            )
        server = None
        if settings.metrics_port is not None:

            def health() -> tuple[bool, dict[str, object]]:
                ready = app.worker.ready
                return ready, {
                    "status": "Healthy" if ready else "Starting",
                    "service": "payment-worker",
                }

            server = StatusServer(settings.metrics_port, health)
            await server.start()
            log.info("status_endpoint", port=settings.metrics_port, paths=["/metrics", "/health"])
        gauges = asyncio.create_task(app.gauges.run(), name="state-gauges")
        try:
            await app.worker.run(stop)
        finally:
            gauges.cancel()
            if server is not None:
                await server.close()
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from payment_worker.entrypoints.replay import (
        Progress,
        ReplayOptions,
        parse_timestamp,
        print_summary,
        replay_in_processes,
    )

    options = ReplayOptions(
        topic=args.topic or settings.topic_commands,
        from_timestamp_ms=parse_timestamp(args.from_timestamp) if args.from_timestamp else None,
        to_timestamp_ms=parse_timestamp(args.to_timestamp) if args.to_timestamp else None,
        republish_events=args.republish_events,
        dry_run=args.dry_run,
    )
    progress = Progress()
    try:
        if args.processes == 1:
            summary = _replay_shard(settings, options, progress)
        else:
            summary = replay_in_processes(
                options, args.processes, partial(_replay_shard, settings), progress
            )
    finally:
        progress.stop()
    print_summary(summary, options, args.processes)
    return 0


def _replay_shard(settings: Settings, options: Any, progress: Any) -> Any:
    """Replay the partitions `options.shard` selects, in this process (a ReplaySummary)."""
    return _run(_replay_async(settings, options, progress))


async def _replay_async(settings: Settings, options: Any, progress: Any) -> Any:
    from payment_worker.adapters.postgres import DatabaseUnavailable
    from payment_worker.adapters.postgres.migrations import schema_problem
    from payment_worker.bootstrap import open_app
    from payment_worker.entrypoints.replay import Replayer
    from payment_worker.entrypoints.startup import load_schemas

    async with open_app(settings, client_id="payment-worker-replay", min_connections=2) as app:
        try:
            await app.store.ping()
        except DatabaseUnavailable as exc:
            raise PaymentWorkerError(f"PostgreSQL is not reachable: {exc}") from exc
        problem = schema_problem(settings.db_schema, await app.store.applied_migrations())
        if problem:
            raise PaymentWorkerError(problem)
        await load_schemas(settings, app.pipeline.messages.load)
        await app.relay.start()
        try:
            return await Replayer(app, options).run(progress)
        finally:
            await app.relay.stop()


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from payment_worker.adapters.postgres.migrations import migrate

    applied = migrate(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        accept_changed=args.accept_changed_migrations,
    )
    print(
        f"schema {settings.db_schema}: "
        + (
            f"applied migrations {', '.join(f'{v:03d}' for v in applied)}"
            if applied
            else "up to date"
        )
    )
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, not {text!r}")
    return value


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from payment_worker.bootstrap import open_status
    from payment_worker.entrypoints.status import gather, print_report

    limits = Thresholds(
        max_lag=int(args.max_lag),
        max_outbox_age_s=args.max_outbox_age,
        max_parked=int(args.max_parked),
        max_pending_age_s=args.max_pending_age,
        max_dead_letters=int(args.max_dead_letters),
        max_reconciler_silence_s=args.max_reconciler_silence,
    )

    async def report() -> Any:
        async with open_status(settings) as (store, lag):
            return await gather(store, lag, limits, settings)

    result = asyncio.run(report())
    print_report(result, as_json=args.json)
    code: int = result.exit_code
    return code


def _outbox_retry(settings: Settings, topic: str | None) -> int:
    from payment_worker.bootstrap import open_status

    async def retry() -> int:
        async with open_status(settings) as (store, _lag):
            return await store.unpark(topic)

    count = asyncio.run(retry())
    where = f" for topic {topic}" if topic else ""
    print(f"outbox: {count} parked row(s){where} handed back to the relays")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from payment_worker.entrypoints.cli import add_command, global_options

    parser = argparse.ArgumentParser(
        prog="payment-worker",
        description=__doc__,
        epilog="`payment-worker COMMAND --help` lists the variables each command reads.",
        parents=[global_options()],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command(sub, "run")
    migrate = add_command(sub, "migrate")
    migrate.add_argument(
        "--accept-changed-migrations",
        action="store_true",
        help="record the new checksum of an applied migration whose file changed (repairs only)",
    )
    add_command(sub, "shim")
    topics = add_command(sub, "topics")
    topics.add_argument(
        "--dry-run", action="store_true", help="say what would be created; create nothing"
    )
    status = add_command(sub, "status")
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    limits = Thresholds()
    for flag, default, unit in (
        ("--max-lag", limits.max_lag, "records behind on a partition"),
        ("--max-outbox-age", limits.max_outbox_age_s, "seconds, oldest unsent outbox row"),
        ("--max-parked", limits.max_parked, "parked outbox rows"),
        ("--max-pending-age", limits.max_pending_age_s, "seconds, oldest pending payment"),
        ("--max-dead-letters", limits.max_dead_letters, "dead letters in the last hour"),
        (
            "--max-reconciler-silence",
            limits.max_reconciler_silence_s,
            "seconds since a reconciler ran, while payments are pending",
        ),
    ):
        status.add_argument(
            flag,
            type=_non_negative,
            default=default,
            metavar="N",
            help=f"{unit} (default {default:g})",
        )
    outbox = add_command(sub, "outbox")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    retry = outbox_sub.add_parser("retry", help="send the parked rows again")
    retry.add_argument("--topic", metavar="NAME", help="only the rows parked for this topic")
    demo = add_command(sub, "demo")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave everything up for exploring until Ctrl-C"
    )
    demo.add_argument(
        "--once",
        action="store_true",
        help="print the outcomes and stop (the default; for scripts and tests)",
    )
    demo.add_argument(
        "--gateway",
        choices=("simulated", "stripe"),
        default="simulated",
        help="the simulator (the default), or the Stripe gateway on localstripe started here",
    )
    demo.add_argument("--workdir", default=".devstack/demo", help="where the logs go")
    replay = add_command(sub, "replay")
    start = replay.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="start at the first record (the default)"
    )
    start.add_argument(
        "--from-timestamp",
        metavar="T",
        help="start at the first record at or after T (ISO 8601 or epoch ms)",
    )
    replay.add_argument(
        "--to-timestamp", metavar="T", help="stop before the first record at or after T"
    )
    replay.add_argument(
        "--topic",
        metavar="NAME",
        help="topic to read (default PAYMENT_TOPIC_COMMANDS; the DLQ works too)",
    )
    replay.add_argument(
        "--republish-events",
        action="store_true",
        help="re-emit the recorded event of every finalized payment met, "
        "with its original event id",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="report what would happen; write nothing"
    )
    replay.add_argument(
        "--processes",
        type=_positive,
        default=1,
        metavar="N",
        help="split the partitions across N processes (one per core to spare; default 1)",
    )
    return parser


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived command on uvloop (when installed), with the collector tuned for a
    process that allocates many short-lived objects per message: what start-up built is frozen
    out of the collections, and the youngest generation is collected less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# Each process reports its own service.name in traces, unless OTEL_SERVICE_NAME names one.
SERVICE_NAMES = {"run": "payment-worker", "shim": "payment-shim", "replay": "payment-worker-replay"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flag_level = getattr(args, "log_level", None)
    configure_logging(flag_level or "INFO")
    try:
        settings = load_settings()
        configure_logging(flag_level or settings.log_level, settings.log_format)
        if args.command in SERVICE_NAMES:
            tracing.configure(SERVICE_NAMES[args.command])
        if args.command == "run":
            return _run(_run_worker(settings))
        if args.command == "migrate":
            return _migrate(settings, args)
        if args.command == "demo":
            from pathlib import Path

            from payment_worker.entrypoints.demo import run_demo

            return run_demo(
                settings,
                keep_running=args.keep_running and not args.once,
                workdir=Path(args.workdir),
                gateway=args.gateway,
            )
        if args.command == "replay":
            return _replay(settings, args)
        if args.command == "status":
            return _status(settings, args)
        if args.command == "outbox":
            return _outbox_retry(settings, args.topic)
        if args.command == "topics":
            from payment_worker.entrypoints.topics import report_topics

            for line in report_topics(settings, dry_run=args.dry_run):
                print(line)
            return 0
        if args.command == "shim":
            from payment_worker.bootstrap import codec, shim_clients
            from payment_worker.entrypoints.shim import serve

            _run(serve(settings, codec(settings), shim_clients(settings)))
            return 0
    except ConfigurationError as exc:
        print(f"payment-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except PaymentWorkerError as exc:
        print(f"payment-worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        tracing.shutdown()
    return 2


if __name__ == "__main__":
    sys.exit(main())
