"""The local test gateway's checkout page: what it shows, the signed events its buttons send
through the webhook, and that it does not exist once Stripe is configured."""

import json
from urllib.parse import urlsplit

import pytest
import stripe
from django.test import Client
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer
from rest_framework.test import APIClient

from orders.models import Order, OrderStatus, WebhookEvent, WebhookStatus
from orders.services import webhook_event_process, webhook_secrets
from orders.services.webhooks import signature_verify
from tests.orders.factories import sku_for_sale


def checkout_path(buyer_client: APIClient, *, price: int = 1999, title: str = "Ray Tracer") -> str:
    """Checks out through the API and answers the path of the checkout URL it gives."""
    sku = sku_for_sale(price=price, title=title)
    answer = buyer_client.post(
        "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY=f"k-{sku.slug}"
    )
    assert answer.status_code == 201, answer.content
    return urlsplit(answer.json()["checkout_url"]).path


def order_of(path: str) -> Order:
    return Order.objects.get(checkout_session_id=path.rsplit("/", 1)[1])


@pytest.mark.django_db
def test_the_page_shows_title_and_amount(client: Client, buyer_client: APIClient) -> None:
    path = checkout_path(buyer_client, price=1999, title="Ray Tracer")
    assert path.startswith("/marketplace/local-checkout/cs_local_")

    page = client.get(path)

    assert page.status_code == 200
    html = page.content.decode()
    assert "<title>Test checkout · Ray Tracer</title>" in html
    assert '<strong data-testid="amount">19.99 USD</strong>' in html
    assert str(order_of(path).pk) in html
    for button in ("Pay", "Decline", "Let it expire"):
        assert f">{button}</button>" in html


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("outcome", "event_type", "payment_status", "goes_to"),
    [
        ("pay", "checkout.session.completed", "paid", "/checkout/success"),
        ("decline", "checkout.session.async_payment_failed", "unpaid", "/checkout/cancelled"),
        ("expire", "checkout.session.expired", "unpaid", "/checkout/cancelled"),
    ],
)
def test_the_event_endpoint_answers_a_signed_event_that_verifies(
    client: Client, buyer_client: APIClient, outcome, event_type, payment_status, goes_to
) -> None:
    path = checkout_path(buyer_client)
    order = order_of(path)

    answer = client.post(f"{path}/event", {"outcome": outcome}, content_type="application/json")

    assert answer.status_code == 200
    signed = answer.json()
    payload = signed["payload"].encode()
    signature_verify(payload, signed["signature"])  # the webhook's own check
    # And Stripe's library agrees, with the secret the webhook uses.
    event = stripe.Webhook.construct_event(payload, signed["signature"], webhook_secrets()[0])
    assert event["type"] == event_type
    session = event["data"]["object"]
    assert session["client_reference_id"] == str(order.pk)
    assert (session["amount_total"], session["currency"]) == (1999, "usd")
    assert session["payment_status"] == payment_status
    assert urlsplit(signed["redirect"]).path == goes_to
    assert not WebhookEvent.objects.exists()  # built, not sent: the page sends it


@pytest.mark.django_db
def test_the_event_endpoint_refuses_an_unknown_outcome(client, buyer_client) -> None:
    path = checkout_path(buyer_client)
    for body in ({"outcome": "steal"}, ["pay"], "not json"):
        data = body if isinstance(body, str) else json.dumps(body)
        answer = client.post(f"{path}/event", data, content_type="application/json")
        assert answer.status_code == 400
        assert answer["Content-Type"] == "application/problem+json"
        assert answer.json()["detail"] == "outcome must be pay, decline or expire."


@pytest.mark.django_db
def test_an_unknown_session_is_404(client: Client, buyer_client: APIClient) -> None:
    checkout_path(buyer_client)
    unknown = "/marketplace/local-checkout/cs_local_" + "0" * 32
    assert client.get(unknown).status_code == 404
    assert client.get("/marketplace/local-checkout/cs_test_a1b2").status_code == 404
    answer = client.post(f"{unknown}/event", {"outcome": "pay"}, content_type="application/json")
    assert answer.status_code == 404


@pytest.mark.django_db
def test_with_a_stripe_key_configured_the_local_page_is_404(client, buyer_client, settings):
    path = checkout_path(buyer_client)  # made by the local gateway
    settings.STRIPE_SECRET_KEY = "sk_test_configured"

    assert client.get(path).status_code == 404
    answer = client.post(f"{path}/event", {"outcome": "pay"}, content_type="application/json")
    assert answer.status_code == 404


# --- In a browser --------------------------------------------------------------------------------


@pytest.fixture
def shop_urls(settings, live_server: LiveServer) -> None:
    # The buyer comes back to the shop: here, the platform's own default pages on the live server.
    settings.CHECKOUT_SUCCESS_URL = f"{live_server.url}/checkout/success"
    settings.CHECKOUT_CANCEL_URL = f"{live_server.url}/checkout/cancelled"


def stored_event_processed(order: Order, event_type: str) -> Order:
    event = WebhookEvent.objects.get(order__isnull=True, type=event_type)
    assert event.status == WebhookStatus.RECEIVED
    assert webhook_event_process(event_pk=event.pk) == WebhookStatus.PROCESSED
    order.refresh_from_db()
    return order


@pytest.mark.browser
def test_pay_in_the_browser_sends_the_event_and_the_order_is_paid(
    page: Page, buyer_client: APIClient, shop_urls: None
) -> None:
    path = checkout_path(buyer_client, price=1999)
    order = order_of(path)

    page.goto(path)
    expect(page.get_by_test_id("amount")).to_have_text("19.99 USD")
    page.get_by_role("button", name="Pay").click()

    page.wait_for_url("**/checkout/success")
    expect(page.locator("h1")).to_have_text("Thank you")
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PENDING  # until processed
    order = stored_event_processed(order, "checkout.session.completed")
    assert order.status == OrderStatus.PAID
    assert order.payment_intent_id.startswith("pi_local_")


@pytest.mark.browser
def test_decline_in_the_browser_fails_the_payment(
    page: Page, buyer_client: APIClient, shop_urls: None
) -> None:
    path = checkout_path(buyer_client)
    order = order_of(path)

    page.goto(path)
    page.get_by_role("button", name="Decline").click()

    page.wait_for_url("**/checkout/cancelled")
    expect(page.locator("h1")).to_have_text("Checkout cancelled")
    order = stored_event_processed(order, "checkout.session.async_payment_failed")
    assert order.status == OrderStatus.PAYMENT_FAILED
