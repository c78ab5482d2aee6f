"""Orders for tests: an active SKU to buy, and checkout through the real service."""

from typing import Any

from catalog.models import Partner, Sku
from orders.api.serializers import OrderSerializer
from orders.models import Order
from orders.services import checkout_create
from tests.catalog.factories import PartnerFactory, Publisher, make_publisher, publish_sku


def sku_for_sale(
    publisher: Publisher | None = None,
    *,
    price: int = 1999,
    currency: str = "USD",
    splits: list[tuple[Partner, int]] | None = None,
    **fields: Any,
) -> Sku:
    publisher = publisher or make_publisher()
    return publish_sku(publisher, price_amount=price, currency=currency, splits=splits, **fields)


def order_checked_out(buyer: Any, sku: Sku, *, key: str | None = None) -> Order:
    answer = checkout_create(
        buyer=buyer,
        sku_slug=sku.slug,
        idempotency_key=key or f"key-{Order.objects.count()}-{sku.slug}",
        render=lambda order: OrderSerializer(order).data,
    )
    return Order.objects.get(pk=answer.body["order"]["id"])


__all__ = ["PartnerFactory", "order_checked_out", "sku_for_sale"]
