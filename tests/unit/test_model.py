"""The payment model (domain/model.py): outcomes and their statuses, reply messages, and the
payment's one transition from pending to succeeded or failed."""

from __future__ import annotations

import uuid
from dataclasses import fields, replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from payment_worker.domain.model import (
    GatewayResult,
    Outcome,
    Payment,
    PaymentStatus,
    Reply,
    reply,
)

CONTRACT_STATUS = {
    Outcome.SUCCEEDED: 200,
    Outcome.DECLINED: 422,
    Outcome.INVALID_REQUEST: 400,
    Outcome.ORDER_NOT_FOUND: 404,
    Outcome.ORDER_INVALID: 400,
    Outcome.RESERVATION_INVALID: 400,
    Outcome.UNAUTHORIZED: 401,
    Outcome.CONFLICT: 409,
    Outcome.ERROR: 500,
}
PREFIXES = {
    Outcome.DECLINED: "Payment failed: ",
    Outcome.ORDER_NOT_FOUND: "Order not found",
    Outcome.ORDER_INVALID: "Order validation failed: ",
    Outcome.RESERVATION_INVALID: "Reservation validation failed: ",
    Outcome.UNAUTHORIZED: "Unauthorized: ",
    Outcome.CONFLICT: "Conflict: ",
    Outcome.ERROR: "Payment processing error: ",
}
CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PROCESSED = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)
SUCCESS = GatewayResult(
    True, "txn_0123456789abcdef", None, None, None, "Success - TransactionId: txn_0123456789abcdef"
)
DECLINE = GatewayResult(
    False,
    None,
    "CARD_DECLINED",
    "Your card was declined",
    "card_declined",
    "Failed - CARD_DECLINED: Your card was declined",
)


def pending_payment(**overrides: object) -> Payment:
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "order_id": uuid.uuid4(),
        "customer_id": uuid.uuid4(),
        "reservation_id": None,
        "amount": Decimal("10.50"),
        "currency": "USD",
        "payment_method": "credit_card",
        "status": PaymentStatus.PENDING,
        "created_at": CREATED,
        "command_id": uuid.uuid4(),
    }
    fields.update(overrides)
    return Payment(**fields)  # type: ignore[arg-type]


def test_outcomes_are_exactly_the_contract_nine() -> None:
    """The Outcome enum holds the nine outcomes of contract section 4 and no other."""
    assert set(Outcome) == set(CONTRACT_STATUS)


@pytest.mark.parametrize(("outcome", "status"), list(CONTRACT_STATUS.items()))
def test_outcome_http_status_follows_the_contract(outcome: Outcome, status: int) -> None:
    """Each outcome maps to the httpStatus of contract section 4."""
    assert outcome.http_status == status


@pytest.mark.parametrize("outcome", list(Outcome))
def test_only_error_is_not_final(outcome: Outcome) -> None:
    """Every outcome is final except ERROR, which a redelivery may change (rule I1)."""
    assert outcome.is_final is (outcome is not Outcome.ERROR)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_only_succeeded_is_a_success(outcome: Outcome) -> None:
    """`success` is true for SUCCEEDED alone."""
    assert outcome.success is (outcome is Outcome.SUCCEEDED)


@pytest.mark.parametrize(("outcome", "prefix"), list(PREFIXES.items()))
def test_reply_message_starts_with_the_outcome_prefix(outcome: Outcome, prefix: str) -> None:
    """reply() prefixes the detail with the outcome's contract prefix."""
    assert reply(outcome, "detail").error_message == prefix + "detail"


def test_order_not_found_reply_without_detail_is_the_bare_message() -> None:
    """ORDER_NOT_FOUND with no detail reads exactly `Order not found`."""
    assert reply(Outcome.ORDER_NOT_FOUND).error_message == "Order not found"


def test_succeeded_reply_has_no_error_message() -> None:
    """A SUCCEEDED reply's errorMessage is null, whatever detail is passed."""
    assert reply(Outcome.SUCCEEDED, "ignored").error_message is None


def test_invalid_request_reply_is_the_validation_message() -> None:
    """INVALID_REQUEST's errorMessage is the validation message itself, with no prefix."""
    assert reply(Outcome.INVALID_REQUEST, "Valid OrderId is required").error_message == (
        "Valid OrderId is required"
    )


def test_reply_reports_status_and_success_of_its_outcome() -> None:
    """A Reply exposes its outcome's httpStatus and success flag."""
    answer = Reply(Outcome.DECLINED, "Payment failed: x")
    assert (answer.http_status, answer.success) == (422, False)


def test_finalized_with_success_is_succeeded_with_the_transaction() -> None:
    """A pending payment finalized by a success becomes succeeded with the gateway's details."""
    payment = pending_payment()
    final = payment.finalized(SUCCESS, PROCESSED)
    assert final.status is PaymentStatus.SUCCEEDED
    assert (final.id, final.transaction_id, final.processed_at, final.simulated_response) == (
        payment.id,
        "txn_0123456789abcdef",
        PROCESSED,
        SUCCESS.simulated_response,
    )
    assert (final.error_code, final.error_message, final.failure_reason) == (None, None, None)


def test_finalized_with_failure_is_failed_with_the_error() -> None:
    """A pending payment finalized by a decline becomes failed with code, message and reason."""
    final = pending_payment().finalized(DECLINE, PROCESSED)
    assert final.status is PaymentStatus.FAILED
    assert (final.error_code, final.error_message, final.failure_reason, final.transaction_id) == (
        "CARD_DECLINED",
        "Your card was declined",
        "card_declined",
        None,
    )
    assert final.simulated_response == DECLINE.simulated_response


@pytest.mark.parametrize("simulated", [True, False])
def test_finalized_payment_is_simulated_as_its_gateway_answered(simulated: bool) -> None:
    """is_simulated is the answer's: true for the simulator's, false for a real gateway's."""
    answer = replace(SUCCESS, simulated=simulated)
    assert pending_payment().finalized(answer, PROCESSED).is_simulated is simulated


def test_finalized_keeps_every_field_the_gateway_does_not_decide() -> None:
    """Every field of the payment other than the outcome's is carried over as it was, a field
    added to Payment later included (each field set to a value of its own first)."""
    decided = {
        "status",
        "error_code",
        "error_message",
        "failure_reason",
        "transaction_id",
        "processed_at",
        "is_simulated",
        "simulated_response",
    }
    kept = {f.name for f in fields(Payment)} - decided
    payment = replace(pending_payment(), **{name: object() for name in kept})
    final = payment.finalized(SUCCESS, PROCESSED)
    assert {name: getattr(final, name) for name in kept} == {
        name: getattr(payment, name) for name in kept
    }


def test_finalized_leaves_the_original_pending() -> None:
    """Payment is immutable: finalizing returns a new payment and keeps the pending one."""
    payment = pending_payment()
    payment.finalized(SUCCESS, PROCESSED)
    assert payment.status is PaymentStatus.PENDING


@pytest.mark.parametrize("status", [PaymentStatus.SUCCEEDED, PaymentStatus.FAILED])
def test_finalizing_a_final_payment_raises(status: PaymentStatus) -> None:
    """Only a pending payment can be finalized; a succeeded or failed one raises ValueError."""
    with pytest.raises(ValueError, match="not pending"):
        pending_payment(status=status).finalized(SUCCESS, PROCESSED)
