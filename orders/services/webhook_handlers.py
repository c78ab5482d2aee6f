"""What each webhook event type does to its order: one small handler per type (`HANDLERS`).

A handler has two steps. `find_order` answers the id of the event's order from the event's
object; it runs before any transaction is opened, because for a charge or a dispute that arrives
before its checkout it may have to ask the provider, and no row may stay locked while the
provider answers. `apply` then makes the change, in the caller's transaction, with the event's
row and the order's row locked (in that order, orders/locks.py), and answers the outcome.

The status only moves forward (OrderStatus.rank), and the effects of a captured payment (royalty
lines, the sale's ledger entry) are tied to `paid_at`, not to the `paid` status, so a refund that
arrives before the payment it refunds still books the sale first: every arrival order of the
same events ends in the same order, the same lines and the same ledger.
"""

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.models import Partner
from marketplace.actors import Actor
from orders import handover
from orders.gateways import GatewayRejected, GatewayUnavailable, get_gateway
from orders.locks import order_lock_if_exists
from orders.models import (
    DeliveryHold,
    FinancePosting,
    Order,
    OrderStatus,
    PostingKind,
    Refund,
    RoyaltyLine,
    WebhookEvent,
    WebhookStatus,
)
from orders.partner_webhooks.events import order_status_emit
from orders.royalties import royalty_shares

WEBHOOK_WORKER = Actor.service("payments-worker")


class EventDeferred(Exception):
    """The event cannot be applied yet (its order is not known yet, the provider could not be
    asked): it is retried with backoff."""


class EventUnusable(Exception):
    """The event can never be applied as it is (it contradicts the order): dead-lettered at
    once for an operator."""


# --- Order changes (caller holds the order's row lock) ------------------------------------------
#
# They change the order in memory; the handler's wrapper (_saved) writes what changed in one
# UPDATE once the handler is done, however many of them it called.


def _cause(event: WebhookEvent) -> dict[str, Any]:
    return {"event": event.event_id, "event_type": event.type}


def _transition(
    order: Order, status: str, *, actor: Actor, cause: dict[str, Any], data: dict[str, Any]
) -> bool:
    if not order.can_become(status):
        return False
    previous = order.status
    order.status = status
    order.status_changed_at = timezone.now()
    audit_append(
        actor=actor,
        action=f"order.{status}",
        subject=order,
        data={"from": previous, "to": status, **cause, **data},
    )
    # Partners with a share of the order are told (paid, refunded, disputed), in this
    # transaction: the messages are an outbox sent after the commit.
    order_status_emit(order)
    return True


def _payment_capture(
    order: Order, *, amount: int, currency: str, payment_intent: str, part_of: bool = False
) -> bool:
    """Books a captured payment once: royalty lines, the sale's ledger entry (delivery waits
    for it). Answers whether it was new. Raises EventUnusable when the provider charged
    something other than the order's amount. `part_of`: `amount` is a part of the payment
    (a dispute may contest less than was charged), so it only has to fit in the order's."""
    if order.paid_at is not None:
        return False
    fits = 0 < amount <= order.amount if part_of else amount == order.amount
    if not fits or currency.upper() != order.currency:
        raise EventUnusable(
            f"the provider reports {amount} {currency.upper()} for an order of "
            f"{order.amount} {order.currency}"
        )
    order.paid_at = timezone.now()
    if payment_intent:
        order.payment_intent_id = payment_intent
    order.finance_pending = True

    splits = [(split["partner"], split["basis_points"]) for split in order.splits]
    shares = royalty_shares(order.amount, splits, order.seller_slug)
    partners = Partner.objects.in_bulk([share.partner for share in shares], field_name="slug")
    RoyaltyLine.objects.bulk_create(
        RoyaltyLine(
            order=order,
            partner=partners[share.partner],
            basis_points=share.basis_points,
            amount=share.amount,
            currency=order.currency,
            receives_remainder=share.receives_remainder,
        )
        for share in shares
    )
    _posting_queue(
        order,
        kind=PostingKind.SALE,
        key=str(order.id),
        amount=order.amount,
        royalties=[{"partner": s.partner, "amount": s.amount} for s in shares],
    )
    return True


def _posting_queue(
    order: Order, *, kind: str, key: str, amount: int, royalties: list[dict[str, Any]]
) -> None:
    from orders import tasks  # the task module imports this one

    # Every posting of an order is made here, under the order's lock: no other transaction
    # can insert this key meanwhile, so a plain lookup then insert needs no savepoint.
    if FinancePosting.objects.filter(idempotency_key=key).exists():
        return
    posting = FinancePosting.objects.create(
        idempotency_key=key,
        order=order,
        kind=kind,
        amount=amount,
        currency=order.currency,
        payload={
            "order_id": str(order.id),
            "kind": kind,
            "amount": amount,
            "currency": order.currency,
            "occurred_at": timezone.now().isoformat(),
            "sku": order.sku_slug,
            "royalties": royalties,
        },
    )
    transaction.on_commit(lambda: tasks.finance_posting_send.delay(posting.pk), robust=True)


def _refunds_record(order: Order, charge: dict[str, Any]) -> int:
    """Records the refunds a charge lists and books what was refunded beyond what the ledger
    already has. Answers the new refunded total."""
    for item in (charge.get("refunds") or {}).get("data") or []:
        if isinstance(item, dict) and item.get("id") and int(item.get("amount") or 0) > 0:
            Refund.objects.update_or_create(
                gateway_refund_id=item["id"],
                defaults={
                    "order": order,
                    "amount": int(item["amount"]),
                    "currency": order.currency,
                    "status": str(item.get("status") or ""),
                },
            )
    total = min(max(order.amount_refunded, int(charge.get("amount_refunded") or 0)), order.amount)
    if total > order.amount_refunded:
        delta = total - order.amount_refunded
        order.amount_refunded = total
        # Keyed by the running total, so however refund events interleave the ledger's refunds
        # add up to what the provider says was refunded.
        _posting_queue(
            order,
            kind=PostingKind.REFUND,
            key=f"{order.id}:refund:{total}",
            amount=-delta,
            royalties=[],
        )
    return total


def _outcome(order: Order, moved: bool) -> str:
    return f"order {order.id} is {order.status}" + ("" if moved else " (unchanged)")


# --- Finding the order (before any transaction; no locks) --------------------------------------


def _order_id_of(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError):
        return None


def session_order_id(session: dict[str, Any]) -> str | None:
    """The order a Checkout Session names (`client_reference_id`, else `metadata[order_id]`);
    None when it names none."""
    return _order_id_of(
        session.get("client_reference_id") or (session.get("metadata") or {}).get("order_id")
    )


def payment_order_id(obj: dict[str, Any]) -> str:
    """The order of a charge or dispute: the one its metadata names, else the one that knows its
    PaymentIntent already, else the one the provider says the PaymentIntent was made for (a
    charge may arrive before its checkout). Call it outside any transaction: it may wait on the
    provider. Raises EventDeferred when the provider cannot be asked or no order is known for
    the payment yet, EventUnusable when the provider does not know the PaymentIntent."""
    payment_intent = obj.get("payment_intent") or ""
    order_id = _order_id_of((obj.get("metadata") or {}).get("order_id"))
    if order_id is None and payment_intent:
        known = Order.objects.filter(payment_intent_id=payment_intent).values_list("pk", flat=True)
        order_id = str(known[0]) if known else None
    if order_id is None and payment_intent:
        try:
            order_id = _order_id_of(get_gateway().payment_intent_order_id(payment_intent))
        except GatewayUnavailable as exc:
            raise EventDeferred(str(exc)) from exc
        except GatewayRejected as exc:
            raise EventUnusable(f"the provider does not know {payment_intent}: {exc}") from exc
    if order_id is None:
        raise EventDeferred(f"no order is known for payment {payment_intent or '(none)'} yet")
    return order_id


# --- One handler per event type (caller holds the event's and the order's row locks) -----------


def session_completed(event: WebhookEvent, order: Order) -> str:
    """checkout.session.completed. Paid (or nothing to pay): books the payment and moves the
    order to `paid`. A delayed payment method (a bank debit): the order waits for the async
    event, but learns its PaymentIntent now, so a charge event arriving first finds it."""
    session = event.data_object
    if session.get("payment_status") in ("paid", "no_payment_required"):
        return _session_paid(event, order)
    if session.get("payment_intent") and not order.payment_intent_id:
        order.payment_intent_id = str(session["payment_intent"])
        audit_append(
            actor=WEBHOOK_WORKER,
            action="order.payment_processing",
            subject=order,
            data={**_cause(event), "payment_intent": order.payment_intent_id},
        )
    return "checkout completed; the payment is still processing"


def session_async_payment_succeeded(event: WebhookEvent, order: Order) -> str:
    """checkout.session.async_payment_succeeded: the delayed payment arrived; books it and moves
    the order to `paid`."""
    return _session_paid(event, order)


def _session_paid(event: WebhookEvent, order: Order) -> str:
    """Books the session's payment (once) and moves the order to `paid`. When the order is past
    `paid` already (a refund or dispute came first), the booking is audited on its own."""
    session = event.data_object
    captured = _payment_capture(
        order,
        amount=int(session.get("amount_total") or 0),
        currency=str(session.get("currency") or ""),
        payment_intent=str(session.get("payment_intent") or ""),
    )
    moved = _transition(
        order,
        OrderStatus.PAID,
        actor=WEBHOOK_WORKER,
        cause=_cause(event),
        data={"payment_intent": order.payment_intent_id, "amount": order.amount},
    )
    if captured and not moved:
        audit_append(
            actor=WEBHOOK_WORKER,
            action="order.payment_recorded",
            subject=order,
            data={**_cause(event), "status": order.status, "amount": order.amount},
        )
    return _outcome(order, moved)


def session_async_payment_failed(event: WebhookEvent, order: Order) -> str:
    """checkout.session.async_payment_failed: the delayed payment failed; the order becomes
    `payment_failed` (unless it is already further on)."""
    moved = _transition(
        order, OrderStatus.PAYMENT_FAILED, actor=WEBHOOK_WORKER, cause=_cause(event), data={}
    )
    return _outcome(order, moved)


def session_expired(event: WebhookEvent, order: Order) -> str:
    """checkout.session.expired: the buyer never paid; the order becomes `cancelled` (unless it
    is already further on)."""
    moved = _transition(
        order, OrderStatus.CANCELLED, actor=WEBHOOK_WORKER, cause=_cause(event), data={}
    )
    return _outcome(order, moved)


def _charge_capture(obj: dict[str, Any], order: Order, *, part_of: bool) -> bool:
    """A charge or dispute is proof of payment too: books it if no event did yet."""
    return _payment_capture(
        order,
        amount=int(obj.get("amount") or 0),
        currency=str(obj.get("currency") or ""),
        payment_intent=str(obj.get("payment_intent") or ""),
        part_of=part_of,
    )


def charge_refunded(event: WebhookEvent, order: Order) -> str:
    """charge.refunded: records the charge's refunds and books what is newly refunded. Refunded
    in full, the order becomes `refunded` and is handed to licensing to revoke after the commit;
    in part, the order keeps its status (`order.partially_refunded`)."""
    charge = event.data_object
    captured = _charge_capture(charge, order, part_of=False)
    before = order.amount_refunded
    total = _refunds_record(order, charge)
    if charge.get("refunded") or total >= order.amount:
        moved = _transition(
            order,
            OrderStatus.REFUNDED,
            actor=WEBHOOK_WORKER,
            cause=_cause(event),
            data={"amount_refunded": total, "payment_recorded": captured},
        )
        if moved:
            transaction.on_commit(
                lambda: handover.order_revoked(str(order.id), "refunded"), robust=True
            )
        return _outcome(order, moved)
    if total > before:
        audit_append(
            actor=WEBHOOK_WORKER,
            action="order.partially_refunded",
            subject=order,
            data={**_cause(event), "amount_refunded": total, "payment_recorded": captured},
        )
    return _outcome(order, False)


def charge_dispute_created(event: WebhookEvent, order: Order) -> str:
    """charge.dispute.created: the order becomes `disputed`, its delivery is held, and it is
    handed to licensing to revoke after the commit. A dispute may contest part of the payment;
    arriving first, it still books the whole payment."""
    dispute = event.data_object
    captured = _charge_capture(dispute, order, part_of=True)
    moved = _transition(
        order,
        OrderStatus.DISPUTED,
        actor=WEBHOOK_WORKER,
        cause=_cause(event),
        data={
            "dispute": dispute.get("id"),
            "reason": dispute.get("reason"),
            "payment_recorded": captured,
        },
    )
    if moved:
        order.delivery_hold = DeliveryHold.DISPUTED
        order.hold_reason = f"dispute {dispute.get('id')}: {dispute.get('reason') or ''}"[:300]
        transaction.on_commit(
            lambda: handover.order_revoked(str(order.id), "disputed"), robust=True
        )
    return _outcome(order, moved)


# --- The dispatch table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Handler:
    """How one event type is applied. `find_order(event object)` runs before any transaction
    and answers the order's id (None: the event names none); `apply(event, order)` runs with the
    event's and the order's rows locked and answers the outcome; `no_order` is the outcome when
    this platform has no such order (the event is then ignored)."""

    find_order: Callable[[dict[str, Any]], str | None]
    apply: Callable[[WebhookEvent, Order], str]
    no_order: str


def _saved(apply: Callable[[WebhookEvent, Order], str]) -> Callable[[WebhookEvent, Order], str]:
    """`apply`, then one UPDATE of the order's fields it changed (none when it changed none)."""

    @functools.wraps(apply)
    def applied(event: WebhookEvent, order: Order) -> str:
        fields = [field.attname for field in Order._meta.concrete_fields if not field.primary_key]
        before = [getattr(order, name) for name in fields]
        outcome = apply(event, order)
        changed = [
            name
            for name, value in zip(fields, before, strict=True)
            if getattr(order, name) != value
        ]
        if changed:
            order.save(update_fields=[*changed, "updated_at"])
        return outcome

    return applied


def _on_session(apply: Callable[[WebhookEvent, Order], str]) -> Handler:
    return Handler(session_order_id, _saved(apply), no_order="no such order on this platform")


def _on_payment(apply: Callable[[WebhookEvent, Order], str]) -> Handler:
    # A payment naming an order this platform does not have is another platform's on a shared
    # Stripe account: ignored, as session events for unknown orders are.
    return Handler(
        payment_order_id, _saved(apply), no_order="the payment names no order on this platform"
    )


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _on_session(session_completed),
    "checkout.session.async_payment_succeeded": _on_session(session_async_payment_succeeded),
    "checkout.session.async_payment_failed": _on_session(session_async_payment_failed),
    "checkout.session.expired": _on_session(session_expired),
    "charge.refunded": _on_payment(charge_refunded),
    "charge.dispute.created": _on_payment(charge_dispute_created),
}


def event_apply(
    event: WebhookEvent, handler: Handler | None, order_id: str | None
) -> tuple[str, str]:
    """Applies the event with `handler` to the order `order_id` (what handler.find_order found).
    The caller holds the event's row lock in its transaction; this takes the order's. Answers
    (status, outcome). Types without a handler are recorded and ignored."""
    if handler is None:
        return WebhookStatus.IGNORED, f"{event.type} is recorded; the platform does not act on it"
    order = order_lock_if_exists(order_id) if order_id else None
    if order is None:
        return WebhookStatus.IGNORED, handler.no_order
    event.order = order
    return WebhookStatus.PROCESSED, handler.apply(event, order)
