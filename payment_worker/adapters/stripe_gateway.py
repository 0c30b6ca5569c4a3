"""The Stripe gateway: one PaymentIntent per payment, on Stripe's official async client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import stripe
import structlog

from payment_worker.adapters.gateway import charge_call
from payment_worker.domain.gateway_rules import unknown_result
from payment_worker.domain.model import GatewayResult, Payment, ValidCommand
from payment_worker.domain.stripe_inputs import minor_units, stripe_refusal
from payment_worker.exceptions import GatewayMisconfigured, GatewayRefusedCredentials
from payment_worker.retrying import retrying
from payment_worker.service.ports import GatewayReferences

if TYPE_CHECKING:
    from stripe import PaymentIntent

__all__ = ["StripeGateway", "minor_units"]

T = TypeVar("T")

log = structlog.get_logger("payment_worker.gateway")

DEFAULT_API_BASE = "https://api.stripe.com"
GATEWAY = "stripe"  # the gateway column of the references it records

# Stripe could not say whether it acted: a timeout or lost connection (APIConnectionError),
# a 5xx or a 409 "request in progress with this key" (APIError), a 429 (RateLimitError).
# Tried again with the same idempotency key within a short budget, then "unknown".
_TRANSIENT: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.RateLimitError,
)
# The reason this worker gives when it cancels a PaymentIntent that asked for authentication,
# by which a PaymentIntent read again is known to be that decline.
_AUTHENTICATION_CANCEL = "abandoned"
# What Stripe refuses a create for that is the customer's to fix, not ours: no such
# PaymentMethod (or one that cannot be used), an amount Stripe will not charge.
_CUSTOMERS_INPUT = frozenset(
    {
        "amount_too_small",
        "amount_too_large",
        "payment_method_unactivated",
        "payment_method_unexpected_state",
        "payment_method_not_available",
    }
)


class StripeGateway:
    """GatewayPort on Stripe. The payment id is the PaymentIntent's idempotency key, so asking
    again (a redelivered command, the reconciler) meets the same PaymentIntent, never a
    second one that could be charged (within Stripe's 24-hour idempotency window).

    No request body is ever logged; set neither `stripe.log` nor STRIPE_LOG=debug, which
    would make the library log them."""

    def __init__(
        self,
        api_key: str,
        references: GatewayReferences,
        *,
        api_base: str = DEFAULT_API_BASE,
        timeout_s: float = 30.0,
        retry_budget_s: float = 5.0,
    ) -> None:
        self._api_key = api_key
        self.references = references
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self._http: stripe.AIOHTTPClient | None = None
        self._client: stripe.StripeClient | None = None

    async def open(self) -> None:
        """Build the client (no request is made here: see check_key)."""
        if self._client is not None:
            return
        # aiohttp under Stripe's client, not its default HTTPX: the worker's CPU per charge on
        # localstripe was 22.3 and 20.9 ms with HTTPX, 10.8 and 11.7 ms with aiohttp, alternately
        # (python -m bench.stripe_phase --n 400).
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
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

    async def check_key(self) -> str | None:
        """Whether Stripe takes our key and our API base, asked once at start-up with a request
        that changes nothing: GatewayRefusedCredentials when it refuses the key,
        GatewayMisconfigured when it answers anything else but a transient failure (a 404
        from a wrong PAYMENT_STRIPE_API_BASE...), a short reason when Stripe could not be asked
        (then the first charge asks again), None when it takes both."""
        client = self._opened()
        try:
            await client.v1.payment_intents.list_async({"limit": 1})
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise _refused(exc) from exc
        except stripe.StripeError as exc:
            status = exc.http_status
            if isinstance(exc, _TRANSIENT) and (
                status is None or status >= 500 or status in (409, 429)
            ):
                return f"Stripe did not answer ({_why(exc)})"
            # Any other 4xx, JSON or not (a wrong path answers a plain 404): not Stripe's API.
            raise GatewayMisconfigured(
                f"Stripe refused the start-up check at {self.api_base} ({_why(exc)}: "
                f"{exc.user_message}): check PAYMENT_STRIPE_API_BASE and PAYMENT_STRIPE_API_KEY"
            ) from exc
        return None

    async def __aenter__(self) -> StripeGateway:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def refusal(self, valid: ValidCommand) -> str | None:
        return stripe_refusal(valid.payment_method, valid.amount, valid.currency)

    async def charge(self, payment: Payment) -> GatewayResult:
        with charge_call(payment) as answered:
            try:
                return answered(await self._charge(payment))
            except GatewayRefusedCredentials:
                raise
            except Exception as exc:
                # An answer nobody planned for (an error on a recorded PaymentIntent, a
                # malformed body, a connection lost while the answer was read): the money may
                # have moved, so never final. The payment stays pending and is asked again;
                # someone has to look (an error line).
                log.error(
                    "gateway_unexpected_answer",
                    payment_id=str(payment.id),
                    error=f"{type(exc).__name__}: {_why(exc)}",
                    exc_info=not isinstance(exc, stripe.StripeError | aiohttp.ClientError),
                )
                return answered(unknown_result(f"Stripe's answer could not be read ({_why(exc)})"))

    async def _charge(self, payment: Payment) -> GatewayResult:
        """Continue the payment's PaymentIntent when one is recorded, else create it (not yet
        confirmed) and record its id before confirming it: whoever asks again for this payment
        (a redelivery, the reconciler, a restarted worker) meets that PaymentIntent, never a
        second one that could be charged. Every PaymentIntent answered is checked to be this
        payment's before it is confirmed or believed."""
        try:
            amount = minor_units(payment.amount, payment.currency)
        except ValueError as exc:
            # Nothing is sent, so nothing is charged: a final answer, never a guess.
            # (Such a command is refused before it is begun; this guards one begun before.)
            return _declined("INVALID_AMOUNT", str(exc), "invalid_request", None)
        try:
            known = await self.references.recall_reference(payment.id, GATEWAY)
        except Exception as exc:  # the database: nothing sent yet, so asked again later
            return unknown_result(f"the PaymentIntent id could not be read ({_why(exc)})")
        try:
            if known is None:
                created = await self._create(payment, amount)
                if isinstance(created, GatewayResult):
                    return created
                kept = await self._remember(payment, created.id)
                if kept is None:
                    return unknown_result(f"PaymentIntent {created.id} could not be recorded")
                intent = created if kept == created.id else await self._retrieve(payment, kept)
                known = kept
            else:
                intent = await self._retrieve(payment, known)
            foreign = _foreign(intent, known, payment, amount)
            if foreign is not None:
                return foreign
            if intent.status == "requires_confirmation":
                confirmed = await self._confirm(payment, intent.id)
                if isinstance(confirmed, GatewayResult):
                    return confirmed
                foreign = _foreign(confirmed, known, payment, amount)
                if foreign is not None:
                    return foreign
                intent = confirmed
            return await self._settle(payment, intent)
        except _TRANSIENT as exc:
            return unknown_result(f"Stripe did not answer ({_why(exc)})")

    async def _create(self, payment: Payment, amount: int) -> PaymentIntent | GatewayResult:
        """The payment's PaymentIntent, created unconfirmed (the payment id as idempotency key:
        Stripe answers a second create with the first's PaymentIntent); or why none was."""
        client = self._opened()
        params: Any = {
            "amount": amount,
            "currency": payment.currency.lower(),
            "payment_method": payment.payment_method,
            # Cards only: a server-side confirm needs no return_url for redirect methods.
            "payment_method_types": ["card"],
            "metadata": {
                "payment_id": str(payment.id),
                "order_id": str(payment.order_id),
                "customer_id": str(payment.customer_id),
                "command_id": str(payment.command_id or ""),
            },
        }
        options: Any = {"idempotency_key": str(payment.id)}
        try:
            return await self._call(
                payment, "create", lambda: client.v1.payment_intents.create_async(params, options)
            )
        except stripe.IdempotencyError as exc:
            # The key was used with other parameters: what the first request did is not
            # known from here. Never declined; someone has to look (logged as an error).
            log.error("gateway_idempotency_conflict", payment_id=str(payment.id), error=str(exc))
            return unknown_result(f"Stripe refused the idempotency key: {exc.user_message}")
        except stripe.InvalidRequestError as exc:
            if not _customers_input(exc):
                # Our request, our key's mode or our API base is wrong, not the customer's
                # payment: nothing was charged, but nobody is declined for our fault either.
                log.error(
                    "gateway_request_refused",
                    payment_id=str(payment.id),
                    code=exc.code,
                    param=exc.param,
                    error=_why(exc),
                )
                return unknown_result(f"Stripe refused our request ({_why(exc)}, {exc.code})")
            # Refused for what the customer gave (no such PaymentMethod, an amount Stripe
            # will not charge): nothing was charged, a final answer, and they may pay again.
            log.warning("gateway_payment_refused", payment_id=str(payment.id), code=exc.code)
            code = str(exc.code or "invalid_request").upper()
            return _declined(code, exc.user_message or "request refused", "invalid_request", None)

    async def _remember(self, payment: Payment, intent_id: str) -> str | None:
        """Record the PaymentIntent id before it is confirmed; the id kept (a PaymentIntent
        recorded first by another try of this payment wins, and ours is cancelled), or None
        when it could not be recorded (then nothing is confirmed)."""
        try:
            kept = await self.references.remember_reference(payment.id, GATEWAY, intent_id)
        except Exception as exc:
            log.warning(
                "gateway_reference_not_recorded", payment_id=str(payment.id), error=_why(exc)
            )
            return None
        if kept != intent_id:
            # Only a stand-in that ignores idempotency keys gets here (Stripe answers the same
            # PaymentIntent for the same key): ours was never confirmed, so it is cancelled.
            log.warning(
                "gateway_second_intent_cancelled", payment_id=str(payment.id), intent=intent_id
            )
            try:
                await self._cancel(payment, intent_id, "duplicate")
            except stripe.StripeError as exc:
                log.error(
                    "gateway_second_intent_not_cancelled",
                    payment_id=str(payment.id),
                    intent=intent_id,
                    error=_why(exc),
                )
        return kept

    async def _retrieve(self, payment: Payment, intent_id: str) -> PaymentIntent:
        client = self._opened()
        return await self._call(
            payment, "retrieve", lambda: client.v1.payment_intents.retrieve_async(intent_id)
        )

    async def _cancel(self, payment: Payment, intent_id: str, reason: str) -> PaymentIntent:
        client = self._opened()
        params: Any = {"cancellation_reason": reason}
        return await self._call(
            payment,
            "cancel",
            lambda: client.v1.payment_intents.cancel_async(intent_id, params),
        )

    async def _confirm(self, payment: Payment, intent_id: str) -> PaymentIntent | GatewayResult:
        """Confirm the recorded PaymentIntent (its own idempotency key: a second confirm of the
        same payment is answered as the first); a card error is the decline."""
        client = self._opened()
        options: Any = {"idempotency_key": f"{payment.id}:confirm"}
        try:
            return await self._call(
                payment,
                "confirm",
                lambda: client.v1.payment_intents.confirm_async(intent_id, {}, options),
            )
        except stripe.CardError as exc:
            return _card_declined(exc, intent_id)
        except stripe.InvalidRequestError as exc:
            # Its state moved on (confirmed by an earlier try whose answer was lost, or
            # cancelled): what it is now says the outcome.
            log.info("gateway_confirm_refused", payment_id=str(payment.id), code=exc.code)
            intent = await self._retrieve(payment, intent_id)
            if intent.status != "requires_confirmation":
                return intent
            # Refused and still unconfirmed: nothing was charged, and the same confirm would
            # be refused again (Stripe keeps the answer for the key). Cancelled, then declined.
            await self._cancel(payment, intent_id, "abandoned")
            code = str(exc.code or "confirm_refused").upper()
            message = exc.user_message or "Stripe refused to confirm the payment"
            return _declined(code, message, "invalid_request", intent_id)

    async def _settle(self, payment: Payment, intent: PaymentIntent) -> GatewayResult:
        """The result its PaymentIntent's status says (as just created, confirmed or read)."""
        status = intent.status
        if status == "requires_action":
            return await self._authentication_required(payment, intent)
        if status == "succeeded":
            return GatewayResult(
                True,
                intent.id,
                None,
                None,
                None,
                f"Stripe PaymentIntent {intent.id}: succeeded",
                simulated=False,
            )
        if status == "requires_payment_method":  # the last attempt failed
            error = _field(intent, "last_payment_error")
            code = _text(error, "decline_code") or _text(error, "code") or "payment_failed"
            message = _text(error, "message") or "The payment failed"
            return _declined(code.upper(), message, "card_declined", intent.id)
        if status == "canceled":
            reason = _text(intent, "cancellation_reason")
            if reason == _AUTHENTICATION_CANCEL:
                return _authentication_declined(intent.id)
            why = f"PaymentIntent canceled ({reason or 'no reason given'})"
            return _declined("PAYMENT_CANCELED", why, "canceled", intent.id)
        # processing (Stripe is still waiting for the network), or a status our calls cannot
        # lead to (requires_capture): asked again later, with the same PaymentIntent.
        if status != "processing":
            log.warning("gateway_unexpected_status", payment_id=str(payment.id), status=status)
        return unknown_result(f"Stripe PaymentIntent {intent.id} is {status}")

    async def _authentication_required(
        self, payment: Payment, intent: PaymentIntent
    ) -> GatewayResult:
        """3-D Secure was asked for: there is no customer here to answer it, so the
        PaymentIntent is cancelled, and the payment declined only once it is."""
        intent_id = intent.id
        try:
            intent = await self._cancel(payment, intent_id, _AUTHENTICATION_CANCEL)
        except stripe.InvalidRequestError:
            # Cancelled (or finished) meanwhile, by an earlier try of this payment: read it.
            intent = await self._retrieve(payment, intent_id)
            if intent.status not in ("canceled", "requires_action"):
                return await self._settle(payment, intent)
        if intent.status != "canceled":
            return unknown_result(f"Stripe PaymentIntent {intent_id} is {intent.status}")
        log.info("gateway_intent_cancelled", payment_id=str(payment.id), intent=intent_id)
        return _authentication_declined(intent_id)

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
            raise _refused(exc) from exc

    def _opened(self) -> stripe.StripeClient:
        if self._client is None:
            raise RuntimeError("StripeGateway.open() was not called")
        return self._client


def _refused(exc: stripe.StripeError) -> GatewayRefusedCredentials:
    return GatewayRefusedCredentials(
        f"Stripe refused the API key (HTTP {exc.http_status}): check PAYMENT_STRIPE_API_KEY"
    )


def _card_declined(exc: stripe.CardError, intent_id: str) -> GatewayResult:
    error = exc.error
    code = _text(error, "decline_code") or exc.code or "card_declined"
    return _declined(
        code.upper(),
        exc.user_message or "Your card was declined",
        exc.code or "card_declined",
        intent_id,
    )


def _authentication_declined(intent_id: str) -> GatewayResult:
    return _declined(
        "AUTHENTICATION_REQUIRED",
        "The card requires authentication",
        "authentication_required",
        intent_id,
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
        simulated=False,
    )


def _customers_input(exc: stripe.InvalidRequestError) -> bool:
    """Whether Stripe refused the create for what the customer gave (their PaymentMethod, the
    amount), rather than for our request, our key or where we sent it."""
    if exc.code == "resource_missing":
        return bool(exc.param == "payment_method")
    return exc.code in _CUSTOMERS_INPUT


def _foreign(
    intent: PaymentIntent, expected_id: str, payment: Payment, amount: int
) -> GatewayResult | None:
    """Unknown (and an error line) when the PaymentIntent answered is not this payment's:
    another id than the recorded one, another amount, currency or payment id. Such an answer
    is never believed; None when it is this payment's."""
    if intent.id != expected_id:
        why = f"{intent.id}, not the recorded {expected_id}"
    elif (
        _field(intent, "amount") != amount or _text(intent, "currency") != payment.currency.lower()
    ):
        why = f"{intent.id} for {_field(intent, 'amount')} {_text(intent, 'currency')}"
    elif _text(_field(intent, "metadata"), "payment_id") != str(payment.id):
        why = f"{intent.id} of another payment"
    else:
        return None
    log.error("gateway_foreign_intent", payment_id=str(payment.id), detail=why)
    return unknown_result(f"Stripe answered a PaymentIntent that is {why}")


def _text(obj: Any, name: str) -> str | None:
    """A text field of a Stripe object; None when absent or not text."""
    value = _field(obj, name)
    return value if isinstance(value, str) else None


def _field(obj: Any, name: str) -> Any:
    """A field of a Stripe object, None when the answer left it out (stand-ins often do)."""
    return getattr(obj, name, None) if obj is not None else None


def _why(exc: BaseException) -> str:
    """A short reason without the library's paragraph: the HTTP status or the network error."""
    status = getattr(exc, "http_status", None)
    if status is not None:
        return f"HTTP {status}"
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__name__
