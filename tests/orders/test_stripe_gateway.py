"""The Stripe gateway: the real `stripe` client against the Stripe stand-in
(tests/support/stripe_api.py), checking what goes over the wire and how answers map to
GatewayUnavailable (try again) and GatewayRejected (do not)."""

import uuid
from typing import Any

import pytest

from orders.gateways import (
    CheckoutRequest,
    GatewayRejected,
    GatewayUnavailable,
    get_gateway,
)
from orders.gateways.stripe import StripeGateway
from tests.support.net import free_port
from tests.support.stripe_api import StripeApiServer


def checkout_request(**fields: Any) -> CheckoutRequest:
    defaults: dict[str, Any] = {
        "order_id": str(uuid.uuid4()),
        "amount": 1999,
        "currency": "USD",
        "title": "Mesh Tools 2.1",
        "sku_slug": "mesh-tools",
        "buyer_email": "buyer@example.com",
        "success_url": "https://shop.example.com/checkout/success",
        "cancel_url": "https://shop.example.com/checkout/cancelled",
    }
    return CheckoutRequest(**{**defaults, **fields})


def paid_intent(stripe_api: StripeApiServer, *, amount: int = 1999) -> str:
    """A session created through the gateway and paid by the buyer: its PaymentIntent id."""
    session = StripeGateway().checkout_session_create(
        checkout_request(amount=amount), idempotency_key=f"checkout-{uuid.uuid4()}"
    )
    return stripe_api.pay(session.id)["payment_intent"]


def test_settings_with_a_secret_key_choose_the_stripe_gateway(stripe_api: StripeApiServer):
    assert isinstance(get_gateway(), StripeGateway)


def test_checkout_session_request_carries_the_snapshot(stripe_api: StripeApiServer):
    request = checkout_request()

    session = StripeGateway().checkout_session_create(request, idempotency_key="checkout-abc")

    [sent] = stripe_api.requests
    assert (sent.method, sent.path, sent.status) == ("POST", "/v1/checkout/sessions", 200)
    assert sent.headers["authorization"] == f"Bearer {stripe_api.secret_key}"
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.idempotency_key == "checkout-abc"
    metadata = {"order_id": request.order_id, "sku": "mesh-tools"}
    assert sent.params == {
        "mode": "payment",
        "client_reference_id": request.order_id,
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "customer_email": "buyer@example.com",
        "success_url": "https://shop.example.com/checkout/success",
        "cancel_url": "https://shop.example.com/checkout/cancelled",
        "line_items": [
            {
                "quantity": "1",
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "1999",
                    "product_data": {"name": "Mesh Tools 2.1"},
                },
            }
        ],
    }
    stored = stripe_api.sessions[session.id]
    assert session.id.startswith("cs_test_")
    assert session.url == stored["url"]
    assert (stored["amount_total"], stored["currency"]) == (1999, "usd")
    assert (stored["status"], stored["payment_status"]) == ("open", "unpaid")
    intent = stripe_api.payment_intents[stored["payment_intent"]]
    assert intent["metadata"] == metadata
    assert intent["amount"] == 1999


def test_the_same_idempotency_key_gets_the_same_session_once(stripe_api: StripeApiServer):
    request = checkout_request()
    first = StripeGateway().checkout_session_create(request, idempotency_key="checkout-1")
    again = StripeGateway().checkout_session_create(request, idempotency_key="checkout-1")

    assert again == first
    assert len(stripe_api.sessions) == 1
    assert [sent.replayed for sent in stripe_api.requests] == [False, True]


def test_an_idempotency_key_reused_with_other_parameters_is_rejected(
    stripe_api: StripeApiServer,
):
    order_id = str(uuid.uuid4())
    gateway = StripeGateway()
    gateway.checkout_session_create(checkout_request(order_id=order_id), idempotency_key="k")

    with pytest.raises(GatewayRejected, match="same parameters"):
        gateway.checkout_session_create(
            checkout_request(order_id=order_id, amount=2999), idempotency_key="k"
        )
    assert len(stripe_api.sessions) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 429, 409])
def test_server_errors_rate_limits_and_keys_in_use_are_unavailable(
    stripe_api: StripeApiServer, status: int
):
    stripe_api.fail_next(1, status=status)

    with pytest.raises(GatewayUnavailable, match=str(status) if status != 429 else "unreachable"):
        StripeGateway().checkout_session_create(checkout_request(), idempotency_key="k")
    assert stripe_api.sessions == {}


def test_stripe_down_is_unavailable_and_a_retry_with_the_key_creates_one_session(
    stripe_api: StripeApiServer,
):
    request = checkout_request()
    stripe_api.down = True
    with pytest.raises(GatewayUnavailable):
        StripeGateway().checkout_session_create(request, idempotency_key="checkout-x")

    stripe_api.down = False
    session = StripeGateway().checkout_session_create(request, idempotency_key="checkout-x")

    assert list(stripe_api.sessions) == [session.id]
    assert [sent.status for sent in stripe_api.requests] == [503, 200]


def test_connection_refused_is_unavailable(stripe_api: StripeApiServer, settings: Any):
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(GatewayUnavailable, match="unreachable"):
        StripeGateway().checkout_session_create(checkout_request(), idempotency_key="k")


def test_a_slow_stripe_times_out_as_unavailable(stripe_api: StripeApiServer, settings: Any):
    settings.STRIPE_TIMEOUT_SECONDS = 0.3
    stripe_api.delay_seconds = 1.5

    with pytest.raises(GatewayUnavailable, match="unreachable"):
        StripeGateway().payment_intent_order_id("pi_whatever")


def test_a_wrong_secret_key_is_rejected(stripe_api: StripeApiServer, settings: Any):
    settings.STRIPE_SECRET_KEY = "sk_test_not_the_right_one"

    with pytest.raises(GatewayRejected, match="401"):
        StripeGateway().checkout_session_create(checkout_request(), idempotency_key="k")
    assert stripe_api.sessions == {}
    assert stripe_api.requests[0].headers["authorization"] == "Bearer sk_test_not_the_right_one"


def test_an_invalid_request_is_rejected(stripe_api: StripeApiServer):
    with pytest.raises(GatewayRejected, match="400"):
        StripeGateway().checkout_session_create(
            checkout_request(currency="US Dollars"), idempotency_key="k"
        )


def test_payment_intent_order_id_reads_the_metadata_from_stripe(stripe_api: StripeApiServer):
    request = checkout_request()
    session = StripeGateway().checkout_session_create(request, idempotency_key="k")
    intent_id = stripe_api.sessions[session.id]["payment_intent"]

    assert StripeGateway().payment_intent_order_id(intent_id) == request.order_id
    assert (stripe_api.requests[-1].method, stripe_api.requests[-1].path) == (
        "GET",
        f"/v1/payment_intents/{intent_id}",
    )


def test_payment_intent_without_an_order_answers_none(stripe_api: StripeApiServer):
    intent = stripe_api.payment_intent_add(amount=500, metadata={})

    assert StripeGateway().payment_intent_order_id(intent["id"]) is None


def test_payment_intent_unknown_to_stripe_is_rejected(stripe_api: StripeApiServer):
    with pytest.raises(GatewayRejected, match="404"):
        StripeGateway().payment_intent_order_id("pi_nobody_knows")


def test_refund_create_sends_the_amount_and_key(stripe_api: StripeApiServer):
    intent_id = paid_intent(stripe_api)

    result = StripeGateway().refund_create(
        payment_intent_id=intent_id, amount=500, reason="broken download", idempotency_key="r-1"
    )

    refund = stripe_api.refunds[result.id]
    assert (result.amount, result.status) == (500, "succeeded")
    assert (refund["payment_intent"], refund["amount"]) == (intent_id, 500)
    sent = stripe_api.requests[-1]
    assert (sent.path, sent.idempotency_key) == ("/v1/refunds", "r-1")
    assert sent.params == {
        "payment_intent": intent_id,
        "amount": "500",
        "reason": "requested_by_customer",
        "metadata": {"note": "broken download"},
    }


def test_refund_retried_with_its_key_refunds_once(stripe_api: StripeApiServer):
    intent_id = paid_intent(stripe_api)
    gateway = StripeGateway()
    first = gateway.refund_create(
        payment_intent_id=intent_id, amount=1999, reason="", idempotency_key="r-1"
    )
    again = gateway.refund_create(
        payment_intent_id=intent_id, amount=1999, reason="", idempotency_key="r-1"
    )

    assert again == first
    assert len(stripe_api.refunds) == 1


def test_refund_beyond_what_is_left_is_rejected(stripe_api: StripeApiServer):
    intent_id = paid_intent(stripe_api, amount=1000)
    gateway = StripeGateway()
    gateway.refund_create(payment_intent_id=intent_id, amount=600, reason="", idempotency_key="r-1")

    with pytest.raises(GatewayRejected, match=r"greater than unrefunded amount on charge \(400\)"):
        gateway.refund_create(
            payment_intent_id=intent_id, amount=401, reason="", idempotency_key="r-2"
        )
    assert [refund["amount"] for refund in stripe_api.refunds.values()] == [600]


def test_refund_of_an_unpaid_intent_is_rejected(stripe_api: StripeApiServer):
    session = StripeGateway().checkout_session_create(checkout_request(), idempotency_key="k")
    intent_id = stripe_api.sessions[session.id]["payment_intent"]

    with pytest.raises(GatewayRejected, match="does not have a successful charge"):
        StripeGateway().refund_create(
            payment_intent_id=intent_id, amount=100, reason="", idempotency_key="r-1"
        )
    assert stripe_api.refunds == {}
