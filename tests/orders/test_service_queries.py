"""What checkout, the webhook's ingest and the processing of a payment send to the database,
statement by statement and commit by commit (tests/orders/statements.py), so that neither can
grow back unnoticed. These run with real transactions (transactional tests): BEGIN and COMMIT
are what production sends.
"""

from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from orders.models import Order, OrderStatus, WebhookEvent
from orders.services import webhook_event_process, webhook_receive, webhook_secrets
from tests.catalog.factories import TEST_ACTOR, PartnerFactory, make_publisher
from tests.orders.factories import sku_for_sale
from tests.orders.statements import locked, statements
from tests.orders.stripe_events import session_event, signed
from tests.support.stripe_api import StripeApiServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def buyer_api(db: None) -> APIClient:
    _, token = api_token_issue(email="counted@example.com", actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def sku(db: None) -> Any:
    publisher = make_publisher()
    return sku_for_sale(publisher, splits=[(publisher.partner, 7000), (PartnerFactory(), 3000)])


def checkout(client: APIClient, sku: Any, key: str) -> Any:
    return client.post(
        "/api/v1/checkout", data={"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


def test_checkout_is_eight_statements_in_two_commits(
    buyer_api: APIClient, sku: Any, stripe_api: StripeApiServer
):
    assert checkout(buyer_api, sku, "warm").status_code == 201  # the token's last use is noted

    with statements() as created:
        response = checkout(buyer_api, sku, "counted")

    assert response.status_code == 201, response.content
    assert created.shape == [
        "SELECT marketplace_apitoken",  # the bearer token, with its buyer
        # The claim, committed on its own before Stripe is asked, so that a concurrent retry
        # with the same key sees it:
        "INSERT orders_idempotencykey",
        "SELECT catalog_sku",  # the SKU's columns of the snapshot and its splits, in one query
        # Stripe's Checkout Session is created here, outside any transaction.
        "BEGIN",
        "INSERT orders_order",  # no lookup before it, no proof looked up for a new order
        "UPDATE orders_idempotencykey",  # the stored answer
        "COMMIT",
    ]
    assert created.audit_events == 1  # order.created, in the same transaction
    assert created.commits == 2
    assert len(stripe_api.sessions) == 2


def test_a_replayed_checkout_reads_the_stored_answer(
    buyer_api: APIClient, sku: Any, stripe_api: StripeApiServer
):
    first = checkout(buyer_api, sku, "again")

    with statements() as replayed:
        again = checkout(buyer_api, sku, "again")

    assert again.json() == first.json()
    assert replayed.shape == [
        "SELECT marketplace_apitoken",
        "INSERT orders_idempotencykey",  # refused by the (buyer, key) constraint
        "SELECT orders_idempotencykey",
    ]
    assert (replayed.audit_events, replayed.commits) == (0, 0)
    assert Order.objects.count() == 1


@pytest.fixture
def order(buyer_api: APIClient, sku: Any) -> Order:
    response = checkout(buyer_api, sku, "to-pay")
    return Order.objects.get(pk=response.json()["order"]["id"])


def test_a_webhook_event_is_stored_in_one_statement_committed_before_the_answer(order: Order):
    body, header = signed(session_event("checkout.session.completed", order), webhook_secrets()[0])

    with statements() as received:
        stored, created = webhook_receive(payload=body, signature=header)

    assert created
    assert received.shape == ["INSERT orders_webhookevent"]
    assert received.commits == 1  # durable before the view answers 200

    with statements() as duplicate:
        again, created = webhook_receive(payload=body, signature=header)
    assert (again.pk, created) == (stored.pk, False)
    assert duplicate.shape == ["INSERT orders_webhookevent", "SELECT orders_webhookevent"]
    assert duplicate.commits == 0
    assert WebhookEvent.objects.count() == 1


def test_marking_an_order_paid_updates_it_once(order: Order):
    body, header = signed(session_event("checkout.session.completed", order), webhook_secrets()[0])
    stored, _ = webhook_receive(payload=body, signature=header)

    with statements() as paid:
        assert webhook_event_process(event_pk=stored.pk) == "processed"

    assert paid.shape == [
        "SELECT orders_webhookevent",  # what it is, before any lock (finding its order may ask
        "BEGIN",  # the provider)
        locked("orders_webhookevent"),
        locked("orders_order"),
        "SELECT catalog_partner",  # the royalty lines' partners, by slug
        "INSERT orders_royaltyline",  # every line in one statement
        "SELECT orders_financeposting",  # the sale's ledger entry, once
        "INSERT orders_financeposting",
        "SELECT orders_partnerwebhookendpoint",  # who is told of it (order.paid): none here
        "UPDATE orders_order",  # paid, its intent, finance pending: one UPDATE
        "UPDATE orders_webhookevent",
        "INSERT orders_webhookattempt",
        "COMMIT",
    ]
    assert (paid.audit_events, paid.commits) == (1, 1)
    order.refresh_from_db()
    assert (order.status, order.finance_pending) == (OrderStatus.PAID, True)
