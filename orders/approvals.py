"""Refunds above MARKETPLACE_APPROVAL_REFUND_MINOR wait for a second person of Finance: the
`order.refund` approval kind (accounts.approvals), registered in OrdersConfig.ready().

The amount compared is the order's refunded total with this refund: what was refunded already,
what waits in `order.refund` requests, and this one, in minor units of the order's currency,
whatever the currency (the default 50000 is 500.00 USD or EUR). So one person cannot refund a
large amount as several small ones; once an order's refunds cross the threshold, each further
refund of it waits for a second person. A full refund is pinned, when it is filed, to what could
be refunded then, so the approvers decide on one amount. Applying it is the refund staff make
at once below the threshold (orders.services.order_refund), with the request's own idempotency
key, so the payment provider refunds once however often it is sent.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from accounts import approvals
from accounts.approval_services import approval_request
from accounts.models import ApprovalRequest, ApprovalStatus
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.money import format_amount
from marketplace.roles import FINANCE
from orders import services
from orders.exceptions import OrderStateConflict, RefundNotAllowed
from orders.models import Order, OrderStatus, Refund

KIND = "order.refund"


def refund_needs_approval(total: int) -> bool:
    """Whether an order's refunded total, a refund included, takes a second person."""
    return total > settings.APPROVAL_REFUND_MINOR


def refunds_waiting(order: Order) -> int:
    """What the order's `order.refund` requests not yet decided or being applied would
    refund."""
    waiting = ApprovalRequest.objects.filter(
        kind=KIND,
        params__order=str(order.pk),
        status__in=[ApprovalStatus.PENDING, ApprovalStatus.APPLYING],
    ).values_list("params", flat=True)
    return sum(params["amount"] for params in waiting)


class _NeedsApproval(Exception):
    """Not an error: the refund takes the approval path, for `amount`."""

    def __init__(self, amount: int) -> None:
        self.amount = amount


def _within_threshold(order: Order, amount: int) -> None:
    """order_refund's check, under the order's lock and the refund lock: refunds made one at a
    time see each other's Refund rows, so two small ones cannot both slip under the
    threshold."""
    refunded = order.amount - services.order_refundable_amount(order)
    if refund_needs_approval(refunded + refunds_waiting(order) + amount):
        raise _NeedsApproval(amount)


def _order(params: dict[str, Any]) -> Order:
    try:
        order = Order.objects.filter(pk=params.get("order")).first()
    except (ValueError, TypeError, ValidationError):
        order = None
    if order is None:
        raise RefundNotAllowed(f"There is no order {params.get('order')}.")
    return order


def refund_check(params: dict[str, Any]) -> None:
    """What order_refund would refuse now, refused when the request is filed."""
    order = _order(params)
    amount = params.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise RefundNotAllowed(
            "The refund amount must be a whole number of minor units greater than zero.",
            errors={"amount": ["The amount must be greater than zero."]},
        )
    if order.paid_at is None or not order.payment_intent_id:
        raise OrderStateConflict(f"Order {order.id} has no captured payment to refund.")
    if order.status == OrderStatus.DISPUTED:
        raise OrderStateConflict(f"Order {order.id} is disputed: the dispute decides.")
    refundable = services.order_refundable_amount(order)
    if amount > refundable:
        raise RefundNotAllowed(
            f"At most {refundable} {order.currency} (minor units) can still be refunded.",
            errors={
                "amount": [
                    f"At most {refundable} ({format_amount(refundable, order.currency)}) "
                    "can still be refunded."
                ]
            },
        )


def refund_summary(params: dict[str, Any]) -> str:
    order = _order(params)
    return (
        f"Refund {format_amount(params['amount'], order.currency)} of order {order.pk} "
        f"(paid {format_amount(order.amount, order.currency)}, "
        f"{format_amount(services.order_refundable_amount(order), order.currency)} refundable "
        f"now) through the payment provider. Reason: {params['reason']}"
    )


def refund_apply(params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    refund = services.order_refund(
        order_id=params["order"],
        amount=params["amount"],
        reason=params["reason"],
        actor=actor,
        request_key=params["request_key"],
    )
    return {"refund": refund.gateway_refund_id, "amount": refund.amount}


def order_refund_or_request(
    *, order_id: Any, amount: int | None, reason: str, requested_by: User, request_key: str
) -> Refund | ApprovalRequest:
    """Refunds at once (orders.services.order_refund) while the order's refunded total with
    this refund (refunded already, waiting in requests, this one) is at most
    MARKETPLACE_APPROVAL_REFUND_MINOR; above it, files an `order.refund` request and answers
    it (nothing is refunded until another Finance member approves). `amount` None is all that
    is left. Called outside any transaction (order_refund calls the provider)."""
    order = Order.objects.get(pk=order_id)
    actor = Actor.of_user(requested_by)
    try:
        return services.order_refund(
            order_id=order.pk,
            amount=amount,
            reason=reason,
            actor=actor,
            request_key=request_key,
            check=_within_threshold,
        )
    except _NeedsApproval as needed:
        pinned = needed.amount
    return approval_request(
        kind=KIND,
        params={
            "order": str(order.pk),
            "amount": pinned,
            "reason": reason.strip()[:300],
            "request_key": f"approval-{request_key}",
        },
        reason=reason,
        requested_by=requested_by,
    )


def register_approval_kinds() -> None:
    approvals.register(
        KIND,
        roles=(FINANCE,),
        summary=refund_summary,
        apply=refund_apply,
        check=refund_check,
        # The provider is called outside any transaction (orders.services.order_refund).
        outside=True,
    )
