"""Payment gateways behind one interface.

`stripe` is the real client (MARKETPLACE_STRIPE_SECRET_KEY set; MARKETPLACE_STRIPE_API_BASE
points it at another server, such as the tests' stand-in). `local` is the embedded default,
refused in production: its checkout page is served by the platform, and its Pay and Decline
buttons send a signed event through the same webhook endpoint as Stripe's.

Every event a gateway reports, it reports as a Stripe event through the webhook, so there is
one pipeline to get right.
"""

from dataclasses import dataclass
from typing import Protocol

from django.conf import settings


class GatewayUnavailable(Exception):
    """The provider could not be reached or failed (timeout, 5xx, 429): try again later."""


class GatewayRejected(Exception):
    """The provider refused the request itself (a 4xx): sending it again will not help."""


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True)
class RefundResult:
    id: str
    amount: int
    status: str


@dataclass(frozen=True)
class CheckoutRequest:
    order_id: str
    amount: int
    currency: str
    title: str
    sku_slug: str
    buyer_email: str
    success_url: str
    cancel_url: str


class Gateway(Protocol):
    name: str

    def checkout_session_create(
        self, request: CheckoutRequest, *, idempotency_key: str
    ) -> CheckoutSession:
        """Creates (or, for the same idempotency key, returns again) a Checkout Session."""
        ...

    def payment_intent_order_id(self, payment_intent_id: str) -> str | None:
        """The order id a PaymentIntent was created for (its metadata), read from the
        provider: how a charge or dispute event that arrives first finds its order."""
        ...

    def refund_create(
        self, *, payment_intent_id: str, amount: int, reason: str, idempotency_key: str
    ) -> RefundResult: ...


def get_gateway() -> Gateway:
    if settings.STRIPE_SECRET_KEY:
        from orders.gateways.stripe import StripeGateway

        return StripeGateway()
    from orders.gateways.local import LocalGateway

    return LocalGateway()
