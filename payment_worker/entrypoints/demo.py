"""`payment-worker demo`: the newcomer's first run on one machine.

Starts what is missing (a local Apache Kafka broker, the development Ordering/Inventory server,
localstripe with `--gateway stripe`), migrates, runs the worker and the shim as child processes,
sends sample payments over HTTP, prints the outcomes, and stops everything it started (and
nothing else).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

from payment_worker.adapters.kafka import broker_reachable
from payment_worker.adapters.postgres.migrations import migrate
from payment_worker.config import Settings
from payment_worker.devstack import localstripe
from payment_worker.devstack.broker import BrokerUnavailable, free_port, local_broker, port_open
from payment_worker.entrypoints.demo_cases import Case, simulated_cases, stripe_cases
from payment_worker.entrypoints.topics import report_topics
from payment_worker.exceptions import PaymentWorkerError

console = Console()


class DemoError(PaymentWorkerError):
    """The demo cannot run here; the message says what to do."""


def _listening(bootstrap: str) -> bool:
    """Whether any host:port of a bootstrap list accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if port.isdigit() and port_open(host.strip("[]") or "127.0.0.1", int(port)):
            return True
    return False


def _port(preferred: int) -> int:
    return preferred if not port_open("127.0.0.1", preferred) else free_port()


def _wait_http(
    url: str, timeout_s: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{what} exited early; see {log}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoError(f"{what} not ready after {timeout_s:.0f}s; see {log}")


# What the demo's clients use; stopped after them (their last calls still reach these).
BACKING = ("broker", "localstripe")


class Demo:
    def __init__(self, settings: Settings, workdir: Path, gateway: str = "simulated") -> None:
        self.settings = settings
        self.workdir = workdir
        self.gateway = gateway
        self.stripe_url: str | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env: dict[str, str] = {}

    def check_services(self) -> None:
        url = self.settings.database_url.get_secret_value()
        try:
            psycopg.connect(url, connect_timeout=3).close()
        except psycopg.OperationalError:
            raise DemoError(
                "PostgreSQL is not reachable at PAYMENT_DATABASE_URL; start it with: "
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            ) from None
        import redis

        try:
            redis.Redis.from_url(
                self.settings.redis_url.get_secret_value(), socket_connect_timeout=2
            ).ping()
        except (redis.RedisError, OSError):
            raise DemoError(
                "Redis is not reachable at PAYMENT_REDIS_URL; start it with: redis-server "
                "--daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
            ) from None

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._track(name, proc)
        return proc

    def _track(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Remember a child (and list it in pids.txt, so anyone can check it is gone)."""
        self.children.append((name, proc))
        with open(self.workdir / "pids.txt", "a") as pids:
            pids.write(f"{proc.pid} {name}\n")

    def start_localstripe(self) -> dict[str, str]:
        """localstripe, a Stripe stand-in (payment_worker/devstack/localstripe.py): the
        settings that point the Stripe gateway at it."""
        port = _port(8420)
        log = self.workdir / "localstripe.log"
        proc = localstripe.start(port, log)
        self._track("localstripe", proc)
        url = f"http://127.0.0.1:{port}"
        try:
            localstripe.wait_until_answering(url, proc, log)
        except RuntimeError:
            raise DemoError(f"localstripe did not start; see {log}") from None
        console.print(f"[green]✓[/] localstripe (a Stripe stand-in) at {url}")
        self.stripe_url = url
        return {"PAYMENT_STRIPE_API_KEY": localstripe.API_KEY, "PAYMENT_STRIPE_API_BASE": url}

    def start(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "pids.txt").write_text("")
        settings = self.settings
        bootstrap = settings.kafka_bootstrap_servers
        # A TCP probe first: nobody listening on the port means no broker, without waiting out
        # a Kafka client's metadata timeout.
        if _listening(bootstrap) and broker_reachable(settings.kafka_common(), 2.0):
            console.print(f"[green]✓[/] Kafka broker at {bootstrap} (already running)")
        else:
            data = self.workdir / "broker-data"
            shutil.rmtree(data, ignore_errors=True)  # a new cluster for each demo
            broker = local_broker(_port(9092), self.workdir / "broker.log", data_dir=data)
            try:
                broker.start()
            except BrokerUnavailable as exc:
                raise DemoError(f"no broker at {bootstrap}, and none starts: {exc}") from None
            assert broker.process is not None
            self._track("broker", broker.process)
            bootstrap = broker.bootstrap
            console.print(f"[green]✓[/] started a local broker: {broker.describe()}")
        kafka_config = settings.kafka_config
        created = [
            line
            for line in report_topics(
                settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
            )
            if " created " in line
        ]
        console.print(
            f"[green]✓[/] topics: {len(created)} created" if created else "[green]✓[/] topics exist"
        )
        dev_port = _port(5002)
        dev_url = f"http://127.0.0.1:{dev_port}"
        dev = self._spawn(
            "devservices",
            [
                sys.executable,
                "-m",
                "payment_worker.devstack.services",
                "--port",
                str(dev_port),
                "--seed",
                "100",
            ],
            dict(os.environ),
        )
        _wait_http(
            dev_url + "/health",
            20,
            "the development services",
            dev,
            self.workdir / "devservices.log",
        )
        console.print(f"[green]✓[/] development Ordering/Inventory server at {dev_url}")
        applied = migrate(settings.database_url.get_secret_value(), settings.db_schema)
        console.print(
            f"[green]✓[/] database schema {settings.db_schema} "
            + ("migrated" if applied else "up to date")
        )
        gateway = {"PAYMENT_GATEWAY": self.gateway}
        if self.gateway == "stripe":
            gateway.update(self.start_localstripe())
        shim_port = _port(settings.shim_port)
        metrics_port = _port(settings.metrics_port or 9100)
        self.env = {
            **os.environ,
            "PAYMENT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PAYMENT_KAFKA_CONFIG": json.dumps(kafka_config),
            "PAYMENT_ORDERING_URL": dev_url,
            "PAYMENT_INVENTORY_URL": dev_url,
            "PAYMENT_SHIM_PORT": str(shim_port),
            "PAYMENT_METRICS_PORT": str(metrics_port),
            **gateway,
        }
        worker = self._spawn("worker", [sys.executable, "-m", "payment_worker", "run"], self.env)
        shim = self._spawn(
            "shim",
            [sys.executable, "-m", "payment_worker", "shim"],
            {**self.env, "PAYMENT_METRICS_PORT": ""},
        )
        _wait_http(
            f"http://127.0.0.1:{metrics_port}/health",
            60,
            "the worker",
            worker,
            self.workdir / "worker.log",
        )
        console.print(
            f"[green]✓[/] worker running (metrics http://127.0.0.1:{metrics_port}/metrics)"
        )
        shim_url = f"http://127.0.0.1:{shim_port}"
        _wait_http(shim_url + "/health", 60, "the shim", shim, self.workdir / "shim.log")
        console.print(f"[green]✓[/] shim answering POST {shim_url}/payments")
        self.dev_url, self.shim_url, self.metrics_port = dev_url, shim_url, metrics_port
        self.bootstrap = bootstrap
        return shim_url

    def cases(self) -> list[Case]:
        with httpx.Client(base_url=self.dev_url, timeout=5) as dev:
            if self.stripe_url is not None:
                return stripe_cases(dev, self.stripe_url)
            return simulated_cases(dev)

    def send(self, cases: list[Case]) -> list[tuple[Case, int, dict[str, Any]]]:
        results = []
        with httpx.Client(base_url=self.shim_url, timeout=30) as client:
            for case in cases:
                headers = {"Idempotency-Key": case.key} if case.key else {}
                body = json.dumps(case.body).replace(
                    f'"amount": "{case.body["amount"]}"', f'"amount": {case.body["amount"]}'
                )
                response = client.post(
                    "/payments",
                    content=body,
                    headers={**headers, "Content-Type": "application/json"},
                )
                results.append((case, response.status_code, response.json()))
        return results

    def report(self, results: list[tuple[Case, int, dict[str, Any]]]) -> None:
        on = " (Stripe gateway on localstripe)" if self.stripe_url else ""
        table = Table(title=f"payment-worker demo: sample payments through POST /payments{on}")
        table.add_column("#", justify="right")
        table.add_column("case")
        table.add_column("HTTP", justify="right")
        table.add_column("success")
        table.add_column("payment / errorMessage")
        for i, (case, status, body) in enumerate(results, 1):
            payment = body.get("payment") or {}
            detail = body.get("errorMessage") or (
                f"{payment.get('status')} {payment.get('transactionId') or ''} "
                f"id {str(payment.get('id', ''))[:8]}…"
            )
            colour = "green" if status == 200 else "yellow" if status < 500 else "red"
            table.add_row(
                str(i),
                case.name,
                f"[{colour}]{status}[/]",
                str(body.get("success")).lower(),
                detail,
            )
        console.print(table)
        s = self.settings
        print(  # plain print: the commands must stay copy-pasteable, unwrapped
            "\nWhere to look next\n"
            f"  topics      {s.topic_commands}, {s.topic_succeeded}, {s.topic_failed}, "
            f"{s.topic_replies}, {s.topic_dlq} on {self.bootstrap}\n"
            f"  tables      psql '{_safe(s.database_url.get_secret_value())}' -c "
            f"'SELECT status, amount, transaction_id FROM {s.db_schema}.payments "
            "ORDER BY created_at DESC LIMIT 10'\n"
            f"  metrics     http://127.0.0.1:{self.metrics_port}/metrics, "
            f"{self.shim_url}/metrics\n"
            f"  API docs    {self.shim_url}/docs\n"
            f"  logs        {self.workdir}/\n"
            + self._stripe_lines()
            + "  try it      curl -s -X POST "
            + self.shim_url
            + "/payments -H 'Content-Type: application/json' -H 'Idempotency-Key: try-1' "
            '-d \'{"orderId":"'
            + _seeded_order()
            + '","customerId":"'
            + _seeded_customer()
            + '","amount":10.50'
            + self._try_method()
            + "}'\n"
        )

    def _stripe_lines(self) -> str:
        if self.stripe_url is None:
            return ""
        return (
            f"  stripe      curl -s -u {localstripe.API_KEY}: "
            f"{self.stripe_url}/v1/payment_intents (localstripe)\n"
        )

    def _try_method(self) -> str:
        """The Stripe gateway charges a PaymentMethod: one of a card that pays, for the curl."""
        if self.stripe_url is None:
            return ""
        return f',"paymentMethod":"{localstripe.card(self.stripe_url, localstripe.PAYS)}"'

    def stop(self) -> None:
        """The worker, the shim and the dev server first, then the broker and localstripe they
        were using (so their last commits, deliveries and charges still reach them)."""
        clients = [(n, p) for n, p in self.children if n not in BACKING]
        for group in (clients, [(n, p) for n, p in self.children if n in BACKING]):
            for _, proc in reversed(group):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in reversed(group):
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    console.print(f"{name} did not stop in 30 s; killing it")
                    proc.kill()
                    proc.wait(5)
        self.children.clear()


def _safe(url: str) -> str:
    return url.split("?")[0]


def _seeded_order() -> str:
    from payment_worker.devstack.services import seeded_order

    return str(seeded_order(0)["id"])


def _seeded_customer() -> str:
    from payment_worker.devstack.services import seeded_order

    return str(seeded_order(0)["customerId"])


def run_demo(
    settings: Settings, *, keep_running: bool, workdir: Path, gateway: str = "simulated"
) -> int:
    demo = Demo(settings, workdir, gateway)
    demo.check_services()
    stop_requested = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    # Both, explicitly: a shell that starts the demo in the background may have set SIGINT
    # to be ignored, and then Python would not turn Ctrl-C into KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, on_signal)
    previous_int = signal.signal(signal.SIGINT, on_signal)
    try:
        demo.start()
        demo.report(demo.send(demo.cases()))
        if keep_running:
            console.print("[bold]Running.[/] Press Ctrl-C to stop everything the demo started.")
            while True:
                time.sleep(1)
                for name, proc in demo.children:
                    if proc.poll() is not None:
                        raise DemoError(
                            f"{name} stopped (exit {proc.returncode}); "
                            f"see {workdir / (name + '.log')}"
                        )
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        demo.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        console.print("stopped everything the demo started.")
    return 0
