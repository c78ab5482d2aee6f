"""Row locks of the order aggregate, and the one order every service takes them in.

    webhook event → order → the order's own rows (finance postings, licenses, deliveries)
    → the audit chain head (audit_append, always last)

A service that starts from one of the order's own rows (a posting Finance acknowledged, a
delivery to regenerate) reads it without a lock, takes the order's lock, then locks that row
and reads its state again. Two services working on one order therefore queue on the order
row instead of each holding what the other waits for.
"""

from collections.abc import Iterable
from typing import Any

from orders.exceptions import OrderNotFound
from orders.models import Order


def order_lock(order_id: Any) -> Order:
    """Locks the order's row for the caller's transaction and answers it as it is now.
    OrderNotFound when there is no such order."""
    order = order_lock_if_exists(order_id)
    if order is None:
        raise OrderNotFound(f"There is no order {order_id}.")
    return order


def order_lock_if_exists(order_id: Any) -> Order | None:
    """As order_lock; None when there is no such order."""
    return Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()


def orders_lock(order_ids: Iterable[Any]) -> dict[Any, Order]:
    """Locks several orders, in primary-key order (two callers locking overlapping sets then
    cannot each hold what the other waits for). Answers them by id."""
    orders = Order.objects.select_for_update(of=("self",)).filter(pk__in=list(order_ids))
    return {order.pk: order for order in orders.order_by("pk")}
