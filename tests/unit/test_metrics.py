"""Dependency calls are counted under the outcome their caller names (metrics.dependency_call)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from payment_worker import metrics


def _count(dependency: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "payment_worker_dependency_request_duration_seconds_count",
        {"dependency": dependency, "outcome": outcome},
    )
    return value or 0.0


def test_a_call_is_observed_once_under_the_outcome_its_caller_set() -> None:
    """Two calls: one not_found, one ok; each series moves by exactly one."""
    before = (_count("unit", "not_found"), _count("unit", "ok"))
    with metrics.dependency_call("unit", "GET /orders/{orderId}") as call:
        call.outcome = "not_found"
    with metrics.dependency_call("unit", "GET /orders/{orderId}") as call:
        call.outcome = "ok"
    assert (_count("unit", "not_found"), _count("unit", "ok")) == (before[0] + 1, before[1] + 1)


def test_a_call_that_raises_before_naming_its_outcome_counts_as_an_error() -> None:
    """An exception leaves the call an error, and is not swallowed."""
    before = _count("unit-raise", "error")
    with pytest.raises(RuntimeError), metrics.dependency_call("unit-raise", "gateway charge"):
        raise RuntimeError("boom")
    assert _count("unit-raise", "error") == before + 1


def test_commands_are_counted_by_outcome_and_duplicate() -> None:
    """count_command moves the series of its outcome and duplicate flag (as `true`/`false`)
    by one each time, and no other."""

    def count(outcome: str, duplicate: str) -> float:
        value = REGISTRY.get_sample_value(
            "payment_worker_commands_total", {"outcome": outcome, "duplicate": duplicate}
        )
        return value or 0.0

    before = (count("UNIT_OK", "false"), count("UNIT_OK", "true"))
    metrics.count_command("UNIT_OK", False)
    metrics.count_command("UNIT_OK", False)
    metrics.count_command("UNIT_OK", True)
    assert (count("UNIT_OK", "false"), count("UNIT_OK", "true")) == (before[0] + 2, before[1] + 1)
