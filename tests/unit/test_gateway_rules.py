"""The simulated gateway's rules (domain/gateway_rules.py `decide`), as the C# simulator had
them."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest

from payment_worker.domain.gateway_rules import simulated_answer

TXN = re.compile(r"^txn_[0-9a-f]{16}$")
PAYMENT_ID = uuid.UUID("6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f")


@pytest.mark.parametrize(
    ("amount", "code", "message", "reason"),
    [
        (
            Decimal("999999.99"),
            "AMOUNT_TOO_LARGE",
            "Amount exceeds maximum limit",
            "processor_error",
        ),
        (
            Decimal("1000000.00"),
            "AMOUNT_TOO_LARGE",
            "Amount exceeds maximum limit",
            "processor_error",
        ),
        (
            Decimal("1000000.13"),
            "AMOUNT_TOO_LARGE",
            "Amount exceeds maximum limit",
            "processor_error",
        ),
        (Decimal("10.13"), "CARD_DECLINED", "Your card was declined", "card_declined"),
        (Decimal("0.13"), "CARD_DECLINED", "Your card was declined", "card_declined"),
        (
            Decimal("25.66"),
            "INSUFFICIENT_FUNDS",
            "Insufficient funds on card",
            "insufficient_funds",
        ),
        (Decimal("42.99"), "PROCESSOR_TIMEOUT", "Payment processor timeout", "timeout"),
    ],
)
def test_rule_amounts_fail_with_the_simulator_code(
    amount: Decimal, code: str, message: str, reason: str
) -> None:
    """The limit (checked first) and the cents .13/.66/.99 fail with the C# code/message/reason."""
    result = simulated_answer(PAYMENT_ID, amount)
    assert (result.success, result.error_code, result.error_message, result.failure_reason) == (
        False,
        code,
        message,
        reason,
    )
    assert result.transaction_id is None


def test_failure_simulated_response_names_code_and_message() -> None:
    """A failure's simulatedResponse is exactly `Failed - CODE: message`."""
    result = simulated_answer(PAYMENT_ID, Decimal("10.13"))
    assert result.simulated_response == "Failed - CARD_DECLINED: Your card was declined"


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("10.50"),
        Decimal("0.01"),
        Decimal("13.00"),
        Decimal("66.10"),
        Decimal("999999.98"),
        Decimal("1500"),
    ],
)
def test_other_amounts_succeed_with_a_transaction_id(amount: Decimal) -> None:
    """Amounts below the limit with other cents succeed with a `txn_` + 16 hex transaction id."""
    result = simulated_answer(PAYMENT_ID, amount)
    assert result.success is True
    assert result.transaction_id is not None and TXN.match(result.transaction_id)
    assert (result.error_code, result.error_message, result.failure_reason) == (None, None, None)


def test_success_simulated_response_names_the_transaction_id() -> None:
    """A success's simulatedResponse is exactly `Success - TransactionId: txn_...`."""
    result = simulated_answer(PAYMENT_ID, Decimal("10.50"))
    assert result.simulated_response == f"Success - TransactionId: {result.transaction_id}"


def test_same_payment_id_gets_the_same_answer() -> None:
    """A function of payment id and amount: a retried charge answers the same."""
    assert simulated_answer(PAYMENT_ID, Decimal("10.50"), 0.5) == simulated_answer(
        PAYMENT_ID, Decimal("10.50"), 0.5
    )


def test_different_payment_ids_get_different_transaction_ids() -> None:
    """The transaction id is derived from the payment id, so two payments do not share one."""
    first = simulated_answer(uuid.uuid4(), Decimal("10.50"))
    second = simulated_answer(uuid.uuid4(), Decimal("10.50"))
    assert first.transaction_id != second.transaction_id


def test_failure_rate_one_fails_every_payment() -> None:
    """With failure_rate 1.0 every otherwise successful charge fails."""
    results = [simulated_answer(uuid.uuid4(), Decimal("10.50"), 1.0) for _ in range(200)]
    assert not any(r.success for r in results)
    assert all(r.simulated_response.startswith("Failed - ") for r in results)


def test_failure_rate_zero_fails_nothing() -> None:
    """With failure_rate 0.0 every ordinary charge succeeds."""
    assert all(simulated_answer(uuid.uuid4(), Decimal("10.50"), 0.0).success for _ in range(500))


def test_failure_rate_fails_roughly_that_share_of_payments() -> None:
    """failure_rate 0.3 fails roughly 30% of 2000 random payment ids (wide bounds)."""
    failed = sum(
        not simulated_answer(uuid.uuid4(), Decimal("10.50"), 0.3).success for _ in range(2000)
    )
    assert 450 <= failed <= 750


def test_injected_failure_is_deterministic_per_payment_id() -> None:
    """Under a failure rate, each payment id gets the same answer every time it is asked."""
    ids = [uuid.uuid4() for _ in range(300)]
    first = [simulated_answer(i, Decimal("10.50"), 0.3).success for i in ids]
    again = [simulated_answer(i, Decimal("10.50"), 0.3).success for i in ids]
    assert first == again
    assert 0 < sum(first) < len(first)
