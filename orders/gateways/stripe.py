"""The Stripe gateway: Checkout Sessions, PaymentIntents and Refunds through the `stripe`
library, whose own retries are off so that our outbox and idempotency keys stay in charge."""

import threading
from collections.abc import Callable
from typing import Any

import requests
import stripe
from django.conf import settings

from orders.gateways import (
    CheckoutRequest,
    CheckoutSession,
    GatewayRejected,
    GatewayUnavailable,
    RefundResult,
)

_threads = threading.local()


def _client(api_key: str, api_base: str, timeout: float) -> stripe.StripeClient:
    """The calling thread's client for this configuration, kept for the thread's later calls:
    its `requests` session holds a kept-alive connection, which a client built per checkout
    would throw away. Rebuilt when the settings change.

    The session does not consult the environment on each request (requests' `trust_env` looks
    up the proxy variables, NO_PROXY and ~/.netrc per call: about 7% of a checkout's CPU).
    The proxies the environment names for the API's address are read once, here, and handed
    to the client, so HTTPS_PROXY and NO_PROXY work as before; certificates are the `stripe`
    library's own bundle either way.
    """
    configuration = (api_key, api_base, timeout)
    held = getattr(_threads, "client", None)
    if held is not None and held[0] == configuration:
        return held[1]
    session = requests.Session()
    session.trust_env = False
    proxies = requests.utils.get_environ_proxies(api_base or stripe.DEFAULT_API_BASE)
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(
            timeout=timeout, session=session, proxy=dict(proxies) or None
        ),
    )
    _threads.client = (configuration, client)
    return client


class StripeGateway:
    name = "stripe"

    def __init__(self) -> None:
        self.client = _client(
            settings.STRIPE_SECRET_KEY,
            settings.STRIPE_API_BASE,
            float(settings.STRIPE_TIMEOUT_SECONDS),
        )

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise GatewayUnavailable(f"Stripe unreachable: {exc.user_message or exc}") from exc
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            message = exc.user_message or str(exc)
            # 409 is Stripe's "idempotency key in use": the same request is still running there.
            if status >= 500 or status in (0, 409, 429):
                raise GatewayUnavailable(f"Stripe answered {status}: {message}") from exc
            raise GatewayRejected(f"Stripe refused ({status}): {message}") from exc

    def checkout_session_create(
        self, request: CheckoutRequest, *, idempotency_key: str
    ) -> CheckoutSession:
        metadata = {"order_id": request.order_id, "sku": request.sku_slug}
        params = {
            "mode": "payment",
            "client_reference_id": request.order_id,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "customer_email": request.buyer_email,
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": request.amount,
                        "product_data": {"name": request.title},
                    },
                }
            ],
        }
        # raw_request (stripe-python's documented call for custom requests) sends the same
        # request as client.v1.checkout.sessions.create and raises the same errors, but
        # answers the parsed JSON: the Session's StripeObject tree, of which two strings
        # are read, is never built.
        response = self._call(
            self.client.raw_request,
            "post",
            "/v1/checkout/sessions",
            idempotency_key=idempotency_key,
            **params,
        )
        session = response.data
        return CheckoutSession(id=session["id"], url=session["url"])

    def payment_intent_order_id(self, payment_intent_id: str) -> str | None:
        intent = self._call(self.client.v1.payment_intents.retrieve, payment_intent_id)
        # A StripeObject is not a dict (16.x refuses .get()): read it through to_dict().
        metadata = intent.metadata.to_dict() if intent.metadata else {}
        order_id = metadata.get("order_id")
        return order_id if isinstance(order_id, str) and order_id else None

    def refund_create(
        self, *, payment_intent_id: str, amount: int, reason: str, idempotency_key: str
    ) -> RefundResult:
        refund = self._call(
            self.client.v1.refunds.create,
            params={
                "payment_intent": payment_intent_id,
                "amount": amount,
                "reason": "requested_by_customer",
                "metadata": {"note": reason[:500]},
            },
            options={"idempotency_key": idempotency_key},
        )
        return RefundResult(id=refund.id, amount=refund.amount, status=refund.status or "")
