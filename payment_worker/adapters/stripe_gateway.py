"""The Stripe gateway: one PaymentIntent per payment, on Stripe's official async client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import stripe
import structlog

from payment_worker import metrics
from payment_worker.domain.gateway_rules import unknown_result
from payment_worker.domain.model import GatewayResult, Payment
from payment_worker.domain.stripe_amounts import minor_units
from payment_worker.exceptions import GatewayRefusedCredentials
from payment_worker.retrying import retrying

if TYPE_CHECKING:
    from stripe import PaymentIntent

__all__ = ["StripeGateway", "minor_units"]

T = TypeVar("T")

log = structlog.get_logger("payment_worker.gateway")

DEFAULT_API_BASE = "https://api.stripe.com"

# Stripe could not say whether it acted: a timeout or lost connection (APIConnectionError),
# a 5xx or a 409 "request in progress with this key" (APIError), a 429 (RateLimitError).
# Tried again with the same idempotency key within a short budget, then "unknown".
_TRANSIENT: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.RateLimitError,
)
# Answers that say what Stripe did; a status Stripe may still move away from is read again.
_SETTLED = frozenset({"succeeded", "canceled", "requires_payment_method"})


class StripeGateway:
    """GatewayPort on Stripe. The payment id is the PaymentIntent's idempotency key, so asking
    again (a redelivered command, the reconciler) meets the same PaymentIntent, never a
    second one that could be charged (within Stripe's 24-hour idempotency window).

    No request body is ever logged; set neither `stripe.log` nor STRIPE_LOG=debug, which
    would make the library log them."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        timeout_s: float = 30.0,
        retry_budget_s: float = 5.0,
    ) -> None:
        self._api_key = api_key
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self._http: stripe.HTTPXClient | None = None
        self._client: stripe.StripeClient | None = None

    async def open(self) -> None:
        """Build the client (no request is made: a bad key shows at the first charge)."""
        if self._client is not None:
            return
        self._http = stripe.HTTPXClient(timeout=self.timeout_s)
        self._client = stripe.StripeClient(
            self._api_key,
            base_addresses={"api": self.api_base},
            http_client=self._http,
            # Tries again are ours (retrying(), with a log line per try), not the library's.
            max_network_retries=0,
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
        self._http = self._client = None

    async def __aenter__(self) -> StripeGateway:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def charge(self, payment: Payment) -> GatewayResult:
        with metrics.dependency_call("gateway", "gateway charge", _span_ids(payment)) as call:
            result = await self._charge(payment)
            call.outcome = "unknown" if result.unknown else "ok" if result.success else "declined"
        log.debug(
            "gateway_charge",
            payment_id=str(payment.id),
            success=result.success,
            unknown=result.unknown,
            code=result.error_code,
            transaction_id=result.transaction_id,
        )
        return result

    async def _charge(self, payment: Payment) -> GatewayResult:
        try:
            amount = minor_units(payment.amount, payment.currency)
        except ValueError as exc:
            # Nothing is sent, so nothing is charged: a final answer, never a guess.
            # (Intake validation is meant to refuse such a command before it gets here.)
            return _declined("INVALID_AMOUNT", str(exc), "invalid_request", None)
        client = self._opened()
        params: Any = {
            "amount": amount,
            "currency": payment.currency.lower(),
            "payment_method": payment.payment_method,
            # Cards only: a server-side confirm needs no return_url for redirect methods.
            "payment_method_types": ["card"],
            "confirm": True,
            "metadata": {
                "payment_id": str(payment.id),
                "order_id": str(payment.order_id),
                "customer_id": str(payment.customer_id),
                "command_id": str(payment.command_id or ""),
            },
        }
        options: Any = {"idempotency_key": str(payment.id)}
        try:
            intent = await self._call(
                payment,
                "create",
                lambda: client.v1.payment_intents.create_async(params, options),
            )
        except stripe.CardError as exc:
            return _card_declined(exc)
        except stripe.IdempotencyError as exc:
            # The key was used with other parameters: what the first request did is not
            # known from here. Never declined; someone has to look (logged as an error).
            log.error("gateway_idempotency_conflict", payment_id=str(payment.id), error=str(exc))
            return unknown_result(f"Stripe refused the idempotency key: {exc.user_message}")
        except stripe.InvalidRequestError as exc:
            # Refused before anything was charged (no such PaymentMethod, amount too small,
            # currency not enabled...): final, and the customer may pay again.
            log.warning("gateway_request_refused", payment_id=str(payment.id), code=exc.code)
            code = (exc.code or "invalid_request").upper()
            return _declined(code, exc.user_message or "request refused", "invalid_request", None)
        except _TRANSIENT as exc:
            return unknown_result(f"Stripe did not answer ({_why(exc)})")
        return await self._settle(payment, intent)

    async def _settle(self, payment: Payment, intent: PaymentIntent) -> GatewayResult:
        """The result for the PaymentIntent the create call answered. A replayed answer (same
        idempotency key) is the first one, so an unsettled status is read again by id."""
        client = self._opened()
        first_status = intent.status
        try:
            if first_status not in _SETTLED:
                intent = await self._call(
                    payment, "retrieve", lambda: client.v1.payment_intents.retrieve_async(intent.id)
                )
            if intent.status == "requires_action" or (
                first_status == "requires_action" and intent.status == "canceled"
            ):
                return await self._authentication_required(payment, intent)
        except _TRANSIENT as exc:
            return unknown_result(f"Stripe did not answer ({_why(exc)})")
        status = intent.status
        if status == "succeeded":
            return GatewayResult(
                True, intent.id, None, None, None, f"Stripe PaymentIntent {intent.id}: succeeded"
            )
        if status == "requires_payment_method":  # the last attempt failed
            error = _field(intent, "last_payment_error")
            code = _field(error, "decline_code") or _field(error, "code") or "payment_failed"
            message = _field(error, "message") or "The payment failed"
            return _declined(code.upper(), message, "card_declined", intent.id)
        if status == "canceled":
            reason = _field(intent, "cancellation_reason") or "canceled"
            return _declined("PAYMENT_CANCELED", f"PaymentIntent {reason}", "canceled", intent.id)
        # processing (Stripe is still waiting for the network), or a status our create call
        # cannot lead to (requires_confirmation, requires_capture): asked again later.
        if status != "processing":
            log.warning("gateway_unexpected_status", payment_id=str(payment.id), status=status)
        return unknown_result(f"Stripe PaymentIntent {intent.id} is {status}")

    async def _authentication_required(
        self, payment: Payment, intent: PaymentIntent
    ) -> GatewayResult:
        """3-D Secure was asked for: there is no customer here to answer it, so the
        PaymentIntent is cancelled, and the payment declined only once it is."""
        client = self._opened()
        if intent.status != "canceled":
            try:
                intent = await self._call(
                    payment, "cancel", lambda: client.v1.payment_intents.cancel_async(intent.id)
                )
            except stripe.InvalidRequestError:
                # Cancelled (or finished) meanwhile, by an earlier try of this payment: read it.
                intent = await self._call(
                    payment, "retrieve", lambda: client.v1.payment_intents.retrieve_async(intent.id)
                )
        if intent.status == "succeeded":  # authenticated after all, before the cancel
            return await self._settle(payment, intent)
        if intent.status != "canceled":
            return unknown_result(f"Stripe PaymentIntent {intent.id} is {intent.status}")
        log.info("gateway_intent_cancelled", payment_id=str(payment.id), intent=intent.id)
        return _declined(
            "AUTHENTICATION_REQUIRED",
            "The card requires authentication",
            "authentication_required",
            intent.id,
        )

    async def _call(self, payment: Payment, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One Stripe request, tried again on a transient failure within the retry budget;
        401/403 become GatewayRefusedCredentials (nobody is declined for our key)."""

        async def once() -> T:  # tenacity awaits what a coroutine function returns
            return await call()

        try:
            return await retrying(
                once,
                event="gateway_retry",
                retry_on=_TRANSIENT,
                budget_s=self.retry_budget_s,
                first_wait_s=0.2,
                max_wait_s=2.0,
                payment_id=str(payment.id),
                request=what,
            )
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise GatewayRefusedCredentials(
                f"Stripe refused the API key (HTTP {exc.http_status}): check PAYMENT_STRIPE_API_KEY"
            ) from exc

    def _opened(self) -> stripe.StripeClient:
        if self._client is None:
            raise RuntimeError("StripeGateway.open() was not called")
        return self._client


def _card_declined(exc: stripe.CardError) -> GatewayResult:
    error = exc.error
    code = _field(error, "decline_code") or exc.code or "card_declined"
    intent = _field(error, "payment_intent")
    return _declined(
        code.upper(),
        exc.user_message or "Your card was declined",
        exc.code or "card_declined",
        intent.id if intent is not None else None,
    )


def _declined(code: str, message: str, reason: str, intent_id: str | None) -> GatewayResult:
    where = f"Stripe PaymentIntent {intent_id}" if intent_id else "Stripe"
    return GatewayResult(
        False,
        None,
        code,
        message,  # the reply puts "Payment failed: " before it
        reason,
        f"{where}: declined {code}: {message}",
    )


def _field(obj: Any, name: str) -> Any:
    """A field of a Stripe object, None when the answer left it out (stand-ins often do)."""
    return getattr(obj, name, None) if obj is not None else None


def _why(exc: stripe.StripeError) -> str:
    """A short reason without the library's paragraph: the HTTP status or the network error."""
    if exc.http_status is not None:
        return f"HTTP {exc.http_status}"
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__name__


def _span_ids(payment: Payment) -> dict[str, str]:
    return {"payment.id": str(payment.id), "payment.order_id": str(payment.order_id)}
