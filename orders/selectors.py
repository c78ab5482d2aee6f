"""Reads for orders."""

from typing import Any

from django.db.models import Q

from orders.exceptions import OrderNotFound
from orders.models import Order, OrderQuerySet


def order_list_for_buyer(*, buyer: Any) -> OrderQuerySet:
    return Order.objects.for_buyer(buyer)


def order_get_for_buyer(*, buyer: Any, order_id: Any) -> Order:
    """The buyer's order; another buyer's order is as unknown as one that does not exist."""
    order = Order.objects.for_buyer(buyer).filter(pk=order_id).first()
    if order is None:
        raise OrderNotFound(f"You have no order {order_id}.")
    return order


def order_timeline(order: Order) -> Any:
    """The order's audit events, and those of its webhook events (replays, dead letters),
    oldest first."""
    from audit.models import AuditEvent

    event_ids = [str(pk) for pk in order.webhook_events.values_list("pk", flat=True)]
    return AuditEvent.objects.filter(
        Q(subject_type="order", subject_id=str(order.pk))
        | Q(subject_type="webhookevent", subject_id__in=event_ids)
    ).order_by("sequence")
