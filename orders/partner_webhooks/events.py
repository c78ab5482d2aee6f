"""The events orders emits to partners, built from the order: one function per source.

Called by the order's handlers (orders.services.webhook_handlers) inside the transaction of
the change, holding the order's lock. Every partner with a share of the order (its splits, and
the seller) is told.
"""

from catalog.models import Partner
from orders.models import Order, OrderStatus
from orders.partner_webhooks.models import PartnerEvent, PartnerWebhookMessage
from orders.partner_webhooks.services import event_emit

ORDER_EVENTS = {
    OrderStatus.PAID: PartnerEvent.ORDER_PAID,
    OrderStatus.REFUNDED: PartnerEvent.ORDER_REFUNDED,
    OrderStatus.DISPUTED: PartnerEvent.ORDER_DISPUTED,
}


def order_data(order: Order) -> dict[str, object]:
    """What a partner is told of an order: no buyer, nothing personal."""
    return {
        "order_id": str(order.id),
        "status": order.status,
        "sku": order.sku_slug,
        "sku_version": order.sku_version,
        "seller": order.seller_slug,
        "amount": order.amount,
        "amount_refunded": order.amount_refunded,
        "currency": order.currency,
        "splits": [
            {"partner": split["partner"], "basis_points": split["basis_points"]}
            for split in order.splits
        ],
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "status_changed_at": order.status_changed_at.isoformat(),
    }


def order_status_emit(order: Order) -> list[PartnerWebhookMessage]:
    """Emits the event of the order's (new) status, if partners are told of it: once per order
    and status, however often the change is reported."""
    event_type = ORDER_EVENTS.get(order.status)
    if event_type is None:
        return []
    slugs = {split["partner"] for split in order.splits} | {order.seller_slug}
    partners = Partner.objects.filter(slug__in=slugs)
    return event_emit(
        event_type=event_type,
        partners=partners,
        dedupe_key=f"order:{order.id}:{order.status}",
        data=order_data(order),
    )
