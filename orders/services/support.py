"""What finance and support staff do to an order: refund it, hold and release its delivery."""

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.db.models import Sum

from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput
from marketplace.money import format_amount
from orders import handover
from orders.exceptions import (
    OrderStateConflict,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    RefundNotAllowed,
)
from orders.gateways import GatewayRejected, GatewayUnavailable, get_gateway
from orders.locks import order_lock
from orders.models import DeliveryHold, Order, OrderStatus, Refund

# Longer than a gateway call with its retries may take; a crashed holder frees it by expiry.
REFUND_LOCK_SECONDS = 120


@contextmanager
def _refund_lock(order_id: Any) -> Iterator[None]:
    """One refund request per order at a time, across processes.

    The provider is called outside the database transaction, so the order's row lock cannot
    cover the time between checking what is refundable and the provider's answer; two requests
    for different amounts could otherwise both pass the check and together refund more than
    was paid.
    """
    key = f"orders:refund-lock:{order_id}"
    token = secrets.token_hex(8)
    if not cache.add(key, token, timeout=REFUND_LOCK_SECONDS):
        raise OrderStateConflict(
            f"Another refund of order {order_id} is being requested right now; "
            "reload the order and try again."
        )
    try:
        yield
    finally:
        if cache.get(key) == token:
            cache.delete(key)


def order_refundable_amount(order: Order) -> int:
    """What may still be refunded: the amount less every refund known, including those the
    provider has accepted but not yet reported back through a webhook."""
    requested = order.refunds.aggregate(total=Sum("amount"))["total"] or 0
    return max(order.amount - max(order.amount_refunded, requested), 0) if order.paid_at else 0


def order_refund(
    *,
    order_id: Any,
    amount: int | None,
    reason: str,
    actor: Actor,
    request_key: str = "",
    check: Callable[[Order, int], None] | None = None,
) -> Refund:
    """Refunds `amount` minor units (all that is left when None) through the order's gateway.

    The order's status changes when the provider's `charge.refunded` event comes back through
    the webhook, as for a refund made in Stripe's dashboard; the request itself is recorded
    here (a Refund row and an audit event).

    `request_key` names one staff request (the admin puts a fresh one in each refund form): the
    same request sent twice reaches the provider with the same idempotency key and refunds once.
    Without it, a request is pinned to the refunded total so far and the amount.

    Raises RefundNotAllowed for an amount that is not a positive whole number or is more than
    is left, OrderStateConflict when the order has no captured payment, is disputed, or another
    refund of it is in flight; nothing is written then.

    `check(order, amount)`, when given, runs under the order's row lock and the refund lock,
    before the provider is asked: what it raises refuses the refund, with nothing written
    (orders.approvals sends refunds that together cross the approval threshold there).
    """
    if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)):
        raise RefundNotAllowed(
            "The refund amount must be a whole number of minor units.",
            errors={"amount": ["Must be a whole number."]},
        )
    if amount is not None and amount <= 0:
        raise RefundNotAllowed(
            "The refund amount must be greater than zero.",
            errors={"amount": ["The amount must be greater than zero."]},
        )
    reason = reason.strip()[:300]
    with _refund_lock(order_id):
        with transaction.atomic():
            order = order_lock(order_id)
            if order.paid_at is None or not order.payment_intent_id:
                raise OrderStateConflict(f"Order {order.id} has no captured payment to refund.")
            if order.status == OrderStatus.DISPUTED:
                # The provider refuses refunds of a disputed charge: the dispute decides.
                raise OrderStateConflict(
                    f"Order {order.id} is disputed: the money goes back through the dispute, "
                    "not a refund."
                )
            refundable = order_refundable_amount(order)
            if refundable == 0:
                raise RefundNotAllowed(
                    f"Order {order.id} is already refunded in full: nothing is left to refund.",
                    errors={"amount": ["Nothing is left to refund."]},
                )
            amount = refundable if amount is None else amount
            if amount > refundable:
                left = format_amount(refundable, order.currency)
                raise RefundNotAllowed(
                    f"At most {refundable} {order.currency} (minor units) can still be refunded.",
                    errors={"amount": [f"At most {refundable} ({left}) can still be refunded."]},
                )
            if check is not None:
                check(order, amount)
            already = order.amount - refundable
            known_refunds = set(order.refunds.values_list("gateway_refund_id", flat=True))
        # The provider is called outside the transaction (the refund lock keeps other requests
        # for this order out meanwhile).
        idempotency_key = (
            f"refund-{order.id}-{request_key}"
            if request_key
            else f"refund-{order.id}-{already}-{amount}"
        )
        try:
            result = get_gateway().refund_create(
                payment_intent_id=order.payment_intent_id,
                amount=amount,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        except GatewayUnavailable as exc:
            raise PaymentProviderUnavailable(f"{exc} Nothing was refunded; try again.") from exc
        except GatewayRejected as exc:
            raise PaymentProviderRejected(str(exc)) from exc
        with transaction.atomic():
            order = order_lock(order.id)
            refund, created = Refund.objects.get_or_create(
                gateway_refund_id=result.id,
                defaults={
                    "order": order,
                    "amount": result.amount,
                    "currency": order.currency,
                    "status": result.status,
                    "reason": reason,
                },
            )
            if result.id not in known_refunds:
                # New with this request, even when the provider's webhook was processed first
                # and recorded the refund (without the reason) before this transaction.
                if not created and refund.reason != reason:
                    refund.reason = reason
                    refund.save(update_fields=["reason"])
                audit_append(
                    actor=actor,
                    action="order.refund_requested",
                    subject=order,
                    data={"refund": result.id, "amount": result.amount, "reason": reason},
                )
    return refund


def order_delivery_hold(*, order_id: Any, reason: str, actor: Actor) -> Order:
    """Holds the order's delivery (no license or delivery is issued while it is on). Holding an
    order already held by staff changes nothing and records nothing."""
    reason = reason.strip()[:300]
    if not reason:
        raise InvalidInput("Say why the delivery is held.", errors={"reason": ["Required."]})
    with transaction.atomic():
        order = order_lock(order_id)
        if order.delivery_hold == DeliveryHold.MANUAL:
            return order
        previous = order.delivery_hold
        order.delivery_hold = DeliveryHold.MANUAL
        order.hold_reason = reason
        order.save(update_fields=["delivery_hold", "hold_reason", "updated_at"])
        audit_append(
            actor=actor,
            action="order.delivery_held",
            subject=order,
            data={"reason": reason, "previous_hold": previous},
        )
    return order


def order_delivery_release(*, order_id: Any, actor: Actor) -> Order:
    """Lifts a staff hold (or the dispute hold of an order no longer disputed). An order that
    is not held is left as it is, and nothing is recorded.

    A `finance_pending` order stays undeliverable: Finance's acknowledgement (replay Finance)
    releases it, not staff. Raises OrderStateConflict for the hold of an order still disputed.
    """
    with transaction.atomic():
        order = order_lock(order_id)
        if not order.delivery_hold:
            return order
        if order.delivery_hold == DeliveryHold.DISPUTED and order.status == OrderStatus.DISPUTED:
            raise OrderStateConflict(
                f"Order {order.id} is disputed: its delivery stays held while the dispute is on."
            )
        previous = order.delivery_hold
        order.delivery_hold = DeliveryHold.NONE
        order.hold_reason = ""
        order.save(update_fields=["delivery_hold", "hold_reason", "updated_at"])
        audit_append(
            actor=actor,
            action="order.delivery_released",
            subject=order,
            data={"previous_hold": previous, "delivery": order.delivery_state},
        )
        if order.is_deliverable():
            transaction.on_commit(lambda: handover.order_released(str(order.id)), robust=True)
    return order
