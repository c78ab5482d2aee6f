"""GET /api/v1/orders and GET /api/v1/orders/{id}: a buyer sees their own orders only."""

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from catalog.models import Sku
from orders.models import Order, OrderStatus
from tests.catalog.factories import TEST_ACTOR
from tests.orders.factories import order_checked_out, sku_for_sale

pytestmark = pytest.mark.django_db

LIST_URL = "/api/v1/orders"

ORDER_FIELDS = {
    "id",
    "status",
    "sku",
    "sku_title",
    "sku_version",
    "amount",
    "currency",
    "amount_refunded",
    "delivery",
    "checkout_url",
    "created_at",
    "paid_at",
    "updated_at",
    "proof",
}


@pytest.fixture
def sku(db: None) -> Sku:
    return sku_for_sale(price=2500, currency="GBP", title="Asset Pack", version="1.4")


def orders_of(buyer: Any, sku: Sku, count: int) -> list[Order]:
    """`count` orders, each a minute older than the one before: newest first."""
    now = timezone.now()
    orders = []
    for index in range(count):
        order = order_checked_out(buyer, sku, key=f"{buyer.pk}-{index}")
        Order.objects.filter(pk=order.pk).update(created_at=now - timedelta(minutes=count - index))
        orders.append(order)
    return list(reversed(orders))


def client_for(user: Any) -> APIClient:
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def ids(response: Any) -> list[str]:
    return [order["id"] for order in response.json()["results"]]


# --- The list ----------------------------------------------------------------------------------


def test_the_list_has_only_the_buyers_own_orders_newest_first(
    buyer_client: APIClient, buyer: Any, other_buyer: Any, sku: Sku
):
    mine = orders_of(buyer, sku, 3)
    orders_of(other_buyer, sku, 2)

    response = buyer_client.get(LIST_URL)

    assert response.status_code == 200
    assert ids(response) == [str(order.id) for order in mine]
    assert response.json()["next"] is None
    first = response.json()["results"][0]
    assert set(first) == ORDER_FIELDS
    assert (first["sku"], first["amount"], first["currency"], first["status"]) == (
        sku.slug,
        2500,
        "GBP",
        "pending",
    )


def test_the_list_filters_by_status(buyer_client: APIClient, buyer: Any, sku: Sku):
    orders = orders_of(buyer, sku, 4)
    Order.objects.filter(pk__in=[orders[1].pk, orders[3].pk]).update(status=OrderStatus.PAID)

    paid = buyer_client.get(LIST_URL, {"status": "paid"})
    pending = buyer_client.get(LIST_URL, {"status": "pending"})
    refunded = buyer_client.get(LIST_URL, {"status": "refunded"})

    assert ids(paid) == [str(orders[1].id), str(orders[3].id)]
    assert ids(pending) == [str(orders[0].id), str(orders[2].id)]
    assert ids(refunded) == []


def test_an_unknown_status_is_400_naming_the_parameter(buyer_client: APIClient, db: None):
    response = buyer_client.get(LIST_URL, {"status": "shipped"})

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == ["status"]


def test_cursor_pagination_follows_next_through_every_order_once(
    buyer_client: APIClient, buyer: Any, sku: Sku
):
    orders = orders_of(buyer, sku, 7)
    Order.objects.filter(pk=orders[6].pk).update(status=OrderStatus.CANCELLED)

    seen: list[str] = []
    pages = 0
    url: str | None = f"{LIST_URL}?page_size=3&status=pending"
    while url:
        response = buyer_client.get(url)
        assert response.status_code == 200
        page = ids(response)
        assert len(page) <= 3
        seen += page
        pages += 1
        url = response.json()["next"]

    assert pages == 2
    assert seen == [str(order.id) for order in orders[:6]]


def test_orders_created_in_the_same_instant_page_without_loss(
    buyer_client: APIClient, buyer: Any, sku: Sku
):
    orders = orders_of(buyer, sku, 5)
    Order.objects.update(created_at=timezone.now())  # the cursor must break ties by id

    seen: list[str] = []
    url: str | None = f"{LIST_URL}?page_size=2"
    while url:
        response = buyer_client.get(url)
        seen += ids(response)
        url = response.json()["next"]

    assert sorted(seen) == sorted(str(order.id) for order in orders)
    assert len(seen) == 5


@pytest.mark.parametrize("page_size", ["0", "101", "ten"])
def test_a_bad_page_size_is_400_naming_it(buyer_client: APIClient, db: None, page_size: str):
    response = buyer_client.get(LIST_URL, {"page_size": page_size})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["page_size"]


def test_a_forged_cursor_is_400_naming_it(buyer_client: APIClient, db: None):
    response = buyer_client.get(LIST_URL, {"cursor": "bm90IGEgY3Vyc29y"})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["cursor"]


def test_the_lists_query_count_does_not_grow_with_the_page(
    buyer_client: APIClient,
    buyer: Any,
    sku: Sku,
    django_assert_max_num_queries: Any,
):
    orders_of(buyer, sku, 12)

    with CaptureQueriesContext(connection) as small:
        assert len(ids(buyer_client.get(LIST_URL, {"page_size": 2}))) == 2
    with django_assert_max_num_queries(len(small)):
        assert len(ids(buyer_client.get(LIST_URL, {"page_size": 12}))) == 12


@pytest.mark.parametrize("url", [LIST_URL, f"{LIST_URL}/00000000-0000-4000-8000-000000000001"])
def test_unauthenticated_is_401(api_client: APIClient, db: None, url: str):
    response = api_client.get(url)

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"


# --- One order ---------------------------------------------------------------------------------


def test_the_buyers_own_order(buyer_client: APIClient, buyer: Any, sku: Sku):
    order = order_checked_out(buyer, sku)

    response = buyer_client.get(f"{LIST_URL}/{order.id}")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == ORDER_FIELDS
    assert body == {
        "id": str(order.id),
        "status": "pending",
        "sku": sku.slug,
        "sku_title": "Asset Pack",
        "sku_version": "1.4",
        "amount": 2500,
        "currency": "GBP",
        "amount_refunded": 0,
        "delivery": "not_paid",
        "checkout_url": order.checkout_url,
        "created_at": body["created_at"],
        "paid_at": None,
        "updated_at": body["updated_at"],
        "proof": None,
    }
    assert body["created_at"] == order.created_at.isoformat().replace("+00:00", "Z")


def test_another_buyers_order_is_404(buyer_client: APIClient, other_buyer: Any, sku: Sku):
    theirs = order_checked_out(other_buyer, sku)

    response = buyer_client.get(f"{LIST_URL}/{theirs.id}")

    assert response.status_code == 404
    assert response.json()["code"] == "order-not-found"
    # The owner does see it: the 404 is about who asks, not about the order.
    assert client_for(other_buyer).get(f"{LIST_URL}/{theirs.id}").status_code == 200


@pytest.mark.parametrize("order_id", ["00000000-0000-4000-8000-000000000001", "not-a-uuid"])
def test_an_unknown_order_is_404(buyer_client: APIClient, db: None, order_id: str):
    response = buyer_client.get(f"{LIST_URL}/{order_id}")

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
