"""The alert rules and the dashboard shipped in deploy/: valid for Prometheus, and over exactly
the metrics the worker and the shim export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import payment_worker.entrypoints.shim.metrics
import payment_worker.metrics  # noqa: F401  (registers the worker's metrics)

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "payment-worker.json"
NAME = re.compile(r"\b(payment_(?:worker|shim)_[a-z0-9_]+)\b")
# What the issue asks to page on; the dashboard shows each of them.
PAGING = {
    "payment_worker_consumer_lag_records",
    "payment_worker_outbox_backlog",
    "payment_worker_outbox_oldest_unsent_age_seconds",
    "payment_worker_outbox_parked_records",
    "payment_worker_pending_payments",
    "payment_worker_pending_oldest_age_seconds",
    "payment_worker_reconciler_runs_total",
    "payment_worker_reconciled_total",
    "payment_worker_dead_letters_total",
    "payment_worker_dependency_request_duration_seconds_bucket",
    "payment_worker_commands_total",
}


def exported() -> set[str]:
    """Every sample name the worker's and the shim's registries can expose."""
    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):
        names.update(REGISTRY._collector_to_names[collector])
    return {n for n in names if n.startswith(("payment_worker_", "payment_shim_"))}


def promtool() -> str:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "promtool.sh")], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        pytest.fail(f"no promtool: {done.stderr}")
    return done.stdout.strip()


RUNBOOK = {
    rule["alert"]: rule["annotations"].get("runbook")
    for group in yaml.safe_load(ALERTS.read_text())["groups"]
    for rule in group["rules"]
}


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules deploy/prometheus/alerts.yml` passes."""
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alerts_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """promtool's rule tests: commands consumed with no reply pages after 5 minutes; the outbox's
    oldest row at 2 minutes pages; a calm series pages nothing."""
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": "payment_worker_records_consumed_total", "values": "0+60x20"},
                    {
                        "series": "payment_worker_outbox_oldest_unsent_age_seconds{instance='a'}",
                        "values": "120x20",
                    },
                    {
                        "series": "payment_worker_outbox_oldest_unsent_age_seconds{instance='b'}",
                        "values": "0x20",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "PaymentNoRepliesWhileCommandsArrive",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "page"},
                                "exp_annotations": {
                                    "summary": "Commands are consumed but no reply is written"
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "PaymentOutboxBackingUp",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "page"},
                                "exp_annotations": {
                                    "summary": "Oldest unsent outbox row is 2m 0s old",
                                    "runbook": RUNBOOK["PaymentOutboxBackingUp"],
                                },
                            }
                        ],
                    },
                    {"eval_time": "15m", "alertname": "PaymentsStuckPending", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_expression_names_a_metric_the_services_export(source: str) -> None:
    """No rule or panel watches a metric that does not exist (fails on a renamed metric)."""
    expressions = alert_expressions() if source == "alerts" else dashboard_expressions()
    named = {name for expr in expressions for name in NAME.findall(expr)}
    assert named, "no metric named at all"
    assert named - exported() == set()


def test_the_dashboard_shows_every_metric_that_pages() -> None:
    """Lag, outbox, pending, reconciler, dead letters, dependencies, replies: each a panel."""
    named = {name for expr in dashboard_expressions() for name in NAME.findall(expr)}
    assert PAGING - named == set()
    assert PAGING <= exported()
