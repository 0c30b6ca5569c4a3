"""`payment-worker demo --once`: the newcomer's first run, non-interactively."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

EXPECTED = [
    ("card charged", "200"),
    ("same request retried", "200"),
    ("new request for the paid", "200"),
    ("card declined", "422"),
    ("insufficient funds", "422"),
    ("processor timeout", "422"),
    ("amount too large", "422"),
    ("invalid request", "400"),
    ("unknown order", "404"),
    ("another customer's order", "401"),
    ("reservation expired", "400"),
]
# With --gateway stripe: what each test card (or a method that is no pm_ id) comes to.
STRIPE_EXPECTED = [
    ("card charged", "200"),
    ("same request retried", "200"),
    ("new request for the paid", "200"),
    ("card declined", "422"),
    ("authentication required", "422"),
    ("no such PaymentMethod", "422"),
    ("not a PaymentMethod id", "400"),
    ("invalid request", "400"),
    ("unknown order", "404"),
    ("another customer's order", "401"),
    ("reservation expired", "400"),
]


def demo_env(worker_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The test's services for the demo, a wide table, a short gateway latency."""
    env = {**os.environ, **worker_env, "COLUMNS": "200", "PAYMENT_GATEWAY_LATENCY_MS": "10-50"}
    env.pop("PAYMENT_METRICS_PORT", None)
    return {**env, **extra}


def test_demo_prints_every_outcome_and_leaves_nothing_running(worker_env, tmp_path):
    """The demo answers each sample with its contract status and stops all it started."""
    env = demo_env(worker_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "payment_worker", "demo", "--once", "--workdir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, output[-4000:]
    outcomes(output, EXPECTED)
    assert "Where to look next" in output
    assert re.search(r"curl -s -X POST http://127\.0\.0\.1:\d+/payments", output)
    assert "stopped everything the demo started" in output
    all_stopped(tmp_path, {"devservices", "worker", "shim"})


def test_the_stripe_demo_charges_test_cards_on_localstripe_and_stops_it(worker_env, tmp_path):
    """`demo --gateway stripe`: the worker charges PaymentIntents on the localstripe the demo
    starts, each test card (and a PaymentMethod Stripe does not have) answered as Stripe
    would, a method that is no pm_ id refused before anything is charged; localstripe is
    stopped with everything else."""
    demo = ["demo", "--once", "--gateway", "stripe", "--workdir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "payment_worker", *demo],
        env=demo_env(worker_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    rows = outcomes(done.stdout, STRIPE_EXPECTED)
    assert re.search(r"succeeded pi_\w+", rows["card charged"]), rows["card charged"]
    assert "The card requires authentication" in rows["authentication required"]
    assert "No such PaymentMethod: 'pm_" in rows["no such PaymentMethod"]
    assert "must be a Stripe payment method id" in rows["not a PaymentMethod id"]
    assert re.search(r'"paymentMethod":"pm_\w+"', done.stdout)  # the curl to try it
    all_stopped(tmp_path, {"devservices", "worker", "shim", "localstripe"})


def outcomes(output: str, expected: list[tuple[str, str]]) -> dict[str, str]:
    """The table's row of each expected case, which shows its HTTP status."""
    rows = [line for line in output.splitlines() if line.startswith("│")]
    found = {}
    for case, status in expected:
        row = next((r for r in rows if case in r), None)
        assert row is not None, f"no row for {case}:\n{output[-4000:]}"
        cells = [c.strip() for c in row.split("│")]
        assert status in cells, (case, row)
        found[case] = row
    assert len(rows) == len(expected), rows
    return found


def all_stopped(workdir, names: set[str]) -> None:
    """The demo started these (at least), and none of what it started still runs."""
    started = [line.split() for line in (workdir / "pids.txt").read_text().splitlines()]
    assert {name for _, name in started} >= names
    for pid, name in started:
        assert not _alive(int(pid)), f"{name} ({pid}) still running"


def test_a_demo_that_starts_its_own_broker_shows_no_connection_noise(worker_env, tmp_path):
    """No broker where PAYMENT_KAFKA_BOOTSTRAP_SERVERS points: the demo starts Apache Kafka, the
    newcomer's terminal shows no librdkafka line (no client is made before a broker listens);
    every line the demo's processes log to their files is one JSON object."""
    from payment_worker.devstack.broker import free_port

    env = demo_env(worker_env, PAYMENT_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    done = subprocess.run(
        [sys.executable, "-m", "payment_worker", "demo", "--once", "--workdir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "started a local broker: Apache Kafka" in done.stdout
    noisy = [line for line in done.stdout.splitlines() if "rdkafka" in line or "FAIL" in line]
    assert noisy == []
    for name in ("worker", "shim", "devservices"):
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert lines, name
        for line in lines:
            assert isinstance(json.loads(line), dict), (name, line)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return not state.stdout.strip().startswith("Z")


@pytest.mark.parametrize(
    ("variable", "hint"),
    [("PAYMENT_DATABASE_URL", "pg_ctlcluster"), ("PAYMENT_REDIS_URL", "redis-server")],
)
def test_demo_says_in_one_line_how_to_start_a_missing_service(worker_env, tmp_path, variable, hint):
    """PostgreSQL or Redis unreachable: exit 1 and one line saying how to start it."""
    from payment_worker.devstack.broker import free_port

    scheme = "postgresql://postgres@" if variable == "PAYMENT_DATABASE_URL" else "redis://"
    env = {**os.environ, **worker_env, variable: f"{scheme}127.0.0.1:{free_port()}/0"}
    result = subprocess.run(
        [sys.executable, "-m", "payment_worker", "demo", "--once", "--workdir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert hint in lines[0]
