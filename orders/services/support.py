"""What finance and support staff do to an order: refund it, hold and release its delivery."""

from typing import Any

from django.db import transaction
from django.db.models import Sum

from audit.services import Actor, audit_append
from marketplace.exceptions import InvalidInput
from orders import fulfilment
from orders.exceptions import (
    OrderNotFound,
    OrderStateConflict,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    RefundNotAllowed,
)
from orders.gateways import GatewayRejected, GatewayUnavailable, get_gateway
from orders.models import DeliveryHold, Order, Refund


def _locked(order_id: Any) -> Order:
    order = Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()
    if order is None:
        raise OrderNotFound(f"There is no order {order_id}.")
    return order


def order_refundable_amount(order: Order) -> int:
    """What may still be refunded: the amount less every refund known, including those the
    provider has accepted but not yet reported back through a webhook."""
    requested = order.refunds.aggregate(total=Sum("amount"))["total"] or 0
    return max(order.amount - max(order.amount_refunded, requested), 0) if order.paid_at else 0


def order_refund(*, order_id: Any, amount: int | None, reason: str, actor: Actor) -> Refund:
    """Refunds `amount` minor units (all that is left when None) through the order's gateway.

    The order's status changes when the provider's `charge.refunded` event comes back through
    the webhook, as for a refund made in Stripe's dashboard; the request itself is recorded
    here (a Refund row and an audit event).
    """
    with transaction.atomic():
        order = _locked(order_id)
        if order.paid_at is None or not order.payment_intent_id:
            raise OrderStateConflict(f"Order {order.id} has no captured payment to refund.")
        refundable = order_refundable_amount(order)
        amount = refundable if amount is None else amount
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise RefundNotAllowed(
                "The refund amount must be a positive whole number of minor units.",
                errors={"amount": ["Must be greater than zero."]},
            )
        if amount > refundable:
            raise RefundNotAllowed(
                f"At most {refundable} {order.currency} (minor units) can still be refunded.",
                errors={"amount": [f"Must not exceed {refundable}."]},
            )
        already = order.amount - refundable
    # The provider is called outside the transaction; its idempotency key pins this request to
    # the refunded total so far, so a double submit cannot refund twice.
    try:
        result = get_gateway().refund_create(
            payment_intent_id=order.payment_intent_id,
            amount=amount,
            reason=reason,
            idempotency_key=f"refund-{order.id}-{already}-{amount}",
        )
    except GatewayUnavailable as exc:
        raise PaymentProviderUnavailable(f"{exc} Nothing was refunded; try again.") from exc
    except GatewayRejected as exc:
        raise PaymentProviderRejected(str(exc)) from exc
    with transaction.atomic():
        order = _locked(order.id)
        refund, created = Refund.objects.get_or_create(
            gateway_refund_id=result.id,
            defaults={
                "order": order,
                "amount": result.amount,
                "currency": order.currency,
                "status": result.status,
                "reason": reason[:300],
            },
        )
        if created:
            audit_append(
                actor=actor,
                action="order.refund_requested",
                subject=order,
                data={"refund": result.id, "amount": result.amount, "reason": reason[:300]},
            )
    return refund


def order_delivery_hold(*, order_id: Any, reason: str, actor: Actor) -> Order:
    if not reason.strip():
        raise InvalidInput("Say why the delivery is held.", errors={"reason": ["Required."]})
    with transaction.atomic():
        order = _locked(order_id)
        if order.delivery_hold == DeliveryHold.MANUAL:
            return order
        previous = order.delivery_hold
        order.delivery_hold = DeliveryHold.MANUAL
        order.hold_reason = reason[:300]
        order.save(update_fields=["delivery_hold", "hold_reason", "updated_at"])
        audit_append(
            actor=actor,
            action="order.delivery_held",
            subject=order,
            data={"reason": reason[:300], "previous_hold": previous},
        )
    return order


def order_delivery_release(*, order_id: Any, actor: Actor) -> Order:
    """Lifts a staff or dispute hold. A `finance_pending` order is released by Finance's
    acknowledgement (replay Finance), not by hand."""
    with transaction.atomic():
        order = _locked(order_id)
        if not order.delivery_hold:
            return order
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
            transaction.on_commit(lambda: fulfilment.order_released(str(order.id)))
    return order
