"""Processing stored webhook events into order state, exactly once.

An event is processed in one transaction that locks its row, then its order's row, applies the
change (status, royalties, Finance posting, audit event) and marks the event processed. A worker
that dies half-way leaves nothing behind, and the redelivered task or the beat sweep runs it
again; a second run finds the event processed and stops.

The status only moves forward (OrderStatus.rank), and the effects of a captured payment (royalty
lines, the sale's ledger entry) are tied to `paid_at`, not to the `paid` status, so a refund that
arrives before the payment it refunds still books the sale first: every arrival order of the
same events ends in the same order, the same lines and the same ledger.
"""

import logging
import traceback
import uuid
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.models import Partner
from marketplace.actors import Actor
from marketplace.backoff import Backoff
from orders import handover
from orders.gateways import GatewayRejected, GatewayUnavailable, get_gateway
from orders.metrics import webhook_failures
from orders.models import (
    DeliveryHold,
    FinancePosting,
    Order,
    OrderStatus,
    PostingKind,
    Refund,
    RoyaltyLine,
    WebhookAttempt,
    WebhookEvent,
    WebhookStatus,
)
from orders.royalties import royalty_shares

logger = logging.getLogger(__name__)

WEBHOOK_WORKER = Actor.service("payments-worker")

SESSION_EVENTS = {
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
}
CHARGE_EVENTS = {"charge.refunded", "charge.dispute.created"}


class EventDeferred(Exception):
    """The event cannot be applied yet (its order is not known yet, the provider could not be
    asked): it is retried with backoff."""


class EventUnusable(Exception):
    """The event can never be applied as it is (it contradicts the order): dead-lettered at
    once for an operator."""


# 30 s, 1 min, 2 min, ... capped at one hour.
WEBHOOK_BACKOFF = Backoff(base=30, cap=3600)


# --- Order changes (caller holds the order's row lock) ------------------------------------------


def _transition(
    order: Order, status: str, *, actor: Actor, cause: dict[str, Any], data: dict[str, Any]
) -> bool:
    if not order.can_become(status):
        return False
    previous = order.status
    order.status = status
    order.status_changed_at = timezone.now()
    order.save(update_fields=["status", "status_changed_at", "updated_at"])
    audit_append(
        actor=actor,
        action=f"order.{status}",
        subject=order,
        data={"from": previous, "to": status, **cause, **data},
    )
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
    order.save(update_fields=["paid_at", "payment_intent_id", "finance_pending", "updated_at"])

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
    from orders.tasks import finance_post  # the task module imports this one

    posting, created = FinancePosting.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "order": order,
            "kind": kind,
            "amount": amount,
            "currency": order.currency,
            "payload": {
                "order_id": str(order.id),
                "kind": kind,
                "amount": amount,
                "currency": order.currency,
                "occurred_at": timezone.now().isoformat(),
                "sku": order.sku_slug,
                "royalties": royalties,
            },
        },
    )
    if created:
        transaction.on_commit(lambda: finance_post.delay(posting.pk))


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
        order.save(update_fields=["amount_refunded", "updated_at"])
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


# --- Finding the order ------------------------------------------------------------------------


def _order_id_of(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError):
        return None


def _order_for_session(session: dict[str, Any]) -> Order | None:
    order_id = _order_id_of(
        session.get("client_reference_id") or (session.get("metadata") or {}).get("order_id")
    )
    if order_id is None:
        return None
    return Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()


def _order_for_payment(obj: dict[str, Any]) -> Order | None:
    """The order of a charge or dispute: by its PaymentIntent when the order knows it already,
    otherwise by asking the provider whose order the PaymentIntent is (it may arrive first).
    None when the payment names an order this platform does not have (another platform's on a
    shared Stripe account): such events are ignored, as session events for unknown orders are."""
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
    return Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()


# --- Applying one event -----------------------------------------------------------------------


def _apply(event: WebhookEvent) -> tuple[str, str]:
    """Applies the event under the caller's transaction. Answers (status, outcome)."""
    obj = event.data_object
    cause = {"event": event.event_id, "event_type": event.type}
    after_commit: list[Any] = []

    if event.type in SESSION_EVENTS:
        order = _order_for_session(obj)
        if order is None:
            return WebhookStatus.IGNORED, "no such order on this platform"
        event.order = order
        if event.type == "checkout.session.expired":
            moved = _transition(
                order, OrderStatus.CANCELLED, actor=WEBHOOK_WORKER, cause=cause, data={}
            )
        elif event.type == "checkout.session.async_payment_failed":
            moved = _transition(
                order, OrderStatus.PAYMENT_FAILED, actor=WEBHOOK_WORKER, cause=cause, data={}
            )
        elif event.type == "checkout.session.completed" and obj.get("payment_status") not in (
            "paid",
            "no_payment_required",
        ):
            # A delayed payment method (a bank debit): the order waits for the async event,
            # but learns its PaymentIntent now, so a charge event arriving first finds it.
            if obj.get("payment_intent") and not order.payment_intent_id:
                order.payment_intent_id = str(obj["payment_intent"])
                order.save(update_fields=["payment_intent_id", "updated_at"])
                audit_append(
                    actor=WEBHOOK_WORKER,
                    action="order.payment_processing",
                    subject=order,
                    data={**cause, "payment_intent": order.payment_intent_id},
                )
            return WebhookStatus.PROCESSED, "checkout completed; the payment is still processing"
        else:
            captured = _payment_capture(
                order,
                amount=int(obj.get("amount_total") or 0),
                currency=str(obj.get("currency") or ""),
                payment_intent=str(obj.get("payment_intent") or ""),
            )
            moved = _transition(
                order,
                OrderStatus.PAID,
                actor=WEBHOOK_WORKER,
                cause=cause,
                data={"payment_intent": order.payment_intent_id, "amount": order.amount},
            )
            if captured and not moved:
                audit_append(
                    actor=WEBHOOK_WORKER,
                    action="order.payment_recorded",
                    subject=order,
                    data={**cause, "status": order.status, "amount": order.amount},
                )
        return WebhookStatus.PROCESSED, _outcome(order, moved)

    if event.type in CHARGE_EVENTS:
        order = _order_for_payment(obj)
        if order is None:
            return WebhookStatus.IGNORED, "the payment names no order on this platform"
        event.order = order
        amount = int(obj.get("amount") or 0)
        currency = str(obj.get("currency") or "")
        payment_intent = str(obj.get("payment_intent") or "")
        captured = _payment_capture(
            order,
            amount=amount,
            currency=currency,
            payment_intent=payment_intent,
            part_of=event.type == "charge.dispute.created",
        )
        if event.type == "charge.refunded":
            before = order.amount_refunded
            total = _refunds_record(order, obj)
            if obj.get("refunded") or total >= order.amount:
                moved = _transition(
                    order,
                    OrderStatus.REFUNDED,
                    actor=WEBHOOK_WORKER,
                    cause=cause,
                    data={"amount_refunded": total, "payment_recorded": captured},
                )
                if moved:
                    after_commit.append(lambda: handover.order_revoked(str(order.id), "refunded"))
            else:
                moved = False
                if total > before:
                    audit_append(
                        actor=WEBHOOK_WORKER,
                        action="order.partially_refunded",
                        subject=order,
                        data={**cause, "amount_refunded": total, "payment_recorded": captured},
                    )
        else:  # charge.dispute.created
            moved = _transition(
                order,
                OrderStatus.DISPUTED,
                actor=WEBHOOK_WORKER,
                cause=cause,
                data={
                    "dispute": obj.get("id"),
                    "reason": obj.get("reason"),
                    "payment_recorded": captured,
                },
            )
            if moved:
                order.delivery_hold = DeliveryHold.DISPUTED
                order.hold_reason = f"dispute {obj.get('id')}: {obj.get('reason') or ''}"[:300]
                order.save(update_fields=["delivery_hold", "hold_reason", "updated_at"])
                after_commit.append(lambda: handover.order_revoked(str(order.id), "disputed"))
        for callback in after_commit:
            transaction.on_commit(callback)
        return WebhookStatus.PROCESSED, _outcome(order, moved)

    return WebhookStatus.IGNORED, f"{event.type} is recorded; the platform does not act on it"


def _outcome(order: Order, moved: bool) -> str:
    return f"order {order.id} is {order.status}" + ("" if moved else " (unchanged)")


def webhook_event_process(*, event_pk: int, force: bool = False) -> str:
    """Processes one stored event if it still needs it. Answers its status afterwards.

    `force` also takes a dead-lettered event (an operator's replay). Failures are recorded on
    the event (attempts, the error, when to try next) and dead-letter it after
    MARKETPLACE_WEBHOOK_MAX_ATTEMPTS tries.
    """
    started = timezone.now()
    open_statuses = {WebhookStatus.RECEIVED, WebhookStatus.FAILED}
    if force:
        open_statuses.add(WebhookStatus.DEAD)
    try:
        with transaction.atomic(durable=True):
            event = WebhookEvent.objects.select_for_update().filter(pk=event_pk).first()
            if event is None or event.status not in open_statuses:
                return event.status if event else "missing"
            status, outcome = _apply(event)
            event.status = status
            event.outcome = outcome[:300]
            event.attempts += 1
            event.processed_at = timezone.now()
            event.next_attempt_at = None
            event.last_error = ""
            event.save()
            WebhookAttempt.objects.create(
                event=event,
                number=event.attempts,
                started_at=started,
                succeeded=True,
                detail=outcome,
            )
            return status
    except EventDeferred as exc:
        return _failure_record(event_pk, started, str(exc), terminal=False)
    except EventUnusable as exc:
        return _failure_record(event_pk, started, str(exc), terminal=True)
    except DatabaseError as exc:
        # A lock timeout, a lost connection: recorded (if the database lets us) and retried.
        logger.warning("webhook event %s failed on the database: %s", event_pk, exc)
        return _failure_record(event_pk, started, f"database error: {exc}", terminal=False)
    except Exception as exc:
        # A failure nobody foresaw still counts as an attempt, so it dead-letters in the end
        # instead of looping; it is raised again for the worker's log.
        _failure_record(event_pk, started, traceback.format_exc(limit=8), terminal=False)
        raise exc


def _failure_record(event_pk: int, started: Any, error: str, *, terminal: bool) -> str:
    webhook_failures.labels(reason="processing_failed").inc()
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_pk)
        if event.status not in (WebhookStatus.RECEIVED, WebhookStatus.FAILED, WebhookStatus.DEAD):
            return event.status
        event.attempts += 1
        event.last_error = error[:4000]
        dead = terminal or event.attempts >= settings.WEBHOOK_MAX_ATTEMPTS
        event.status = WebhookStatus.DEAD if dead else WebhookStatus.FAILED
        event.next_attempt_at = (
            None if dead else timezone.now() + WEBHOOK_BACKOFF.delay(event.attempts)
        )
        event.save(update_fields=["attempts", "last_error", "status", "next_attempt_at"])
        WebhookAttempt.objects.create(
            event=event, number=event.attempts, started_at=started, succeeded=False, detail=error
        )
        if dead:
            audit_append(
                actor=WEBHOOK_WORKER,
                action="webhook.dead_lettered",
                subject=event,
                data={
                    "event": event.event_id,
                    "event_type": event.type,
                    "attempts": event.attempts,
                    "error": error.splitlines()[-1][:300] if error else "",
                },
            )
        return event.status


def webhook_event_replay(*, event_pk: int, actor: Actor) -> str:
    """An operator sends a failed or dead-lettered event through processing again now."""
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_pk)
        if event.status not in (WebhookStatus.FAILED, WebhookStatus.DEAD, WebhookStatus.RECEIVED):
            return event.status
        audit_append(
            actor=actor,
            action="webhook.replayed",
            subject=event,
            data={"event": event.event_id, "event_type": event.type, "was": event.status},
        )
    return webhook_event_process(event_pk=event_pk, force=True)
