"""Sending ledger entries to Finance from the outbox (FinancePosting), and reconciling.

A posting is sent outside any transaction (Finance is idempotent on the posting's key, so two
senders racing do no harm) and its acknowledgement recorded after. While Finance is down the
posting waits and is replayed with backoff; the order stays paid with its delivery held as
`finance_pending` until the sale is acknowledged, then it is released.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.backoff import Backoff
from marketplace.finance import FinanceRejected, FinanceUnavailable, get_finance
from orders import handover
from orders.locks import order_lock, orders_lock
from orders.models import FinancePosting, Order, PostingKind, PostingStatus

FINANCE_WORKER = Actor.service("finance-worker")


# 15 s, 30 s, 1 min, ... capped at 15 minutes: Finance outages are waited out.
FINANCE_BACKOFF = Backoff(base=15, cap=900)


def finance_posting_send(*, posting_pk: int, actor: Actor = FINANCE_WORKER) -> str:
    """Sends one pending posting. Answers its status afterwards."""
    posting = FinancePosting.objects.filter(pk=posting_pk).first()
    if posting is None or posting.status != PostingStatus.PENDING:
        return posting.status if posting else "missing"
    try:
        reference = get_finance().entry_post(
            idempotency_key=posting.idempotency_key, entry=posting.payload
        )
    except FinanceUnavailable as exc:
        # F() so that two senders failing at once both count; the backoff is from this one's
        # view, which is close enough for a wait.
        FinancePosting.objects.filter(pk=posting.pk, status=PostingStatus.PENDING).update(
            attempts=F("attempts") + 1,
            last_error=str(exc)[:2000],
            next_attempt_at=timezone.now() + FINANCE_BACKOFF.delay(posting.attempts + 1),
        )
        return PostingStatus.PENDING
    except FinanceRejected as exc:
        with transaction.atomic(durable=True):
            order_lock(posting.order_id)  # orders.locks: the order before its postings
            locked = FinancePosting.objects.select_for_update().get(pk=posting.pk)
            if locked.status != PostingStatus.PENDING:
                return locked.status
            locked.status = PostingStatus.REJECTED
            locked.attempts += 1
            locked.last_error = str(exc)[:2000]
            locked.save(update_fields=["status", "attempts", "last_error"])
            audit_append(
                actor=actor,
                action="finance.posting_rejected",
                subject=locked.order,
                data={"posting": locked.idempotency_key, "error": str(exc)[:300]},
            )
        return PostingStatus.REJECTED

    released = False
    with transaction.atomic(durable=True):
        order = order_lock(posting.order_id)  # orders.locks: the order before its postings
        locked = FinancePosting.objects.select_for_update().get(pk=posting.pk)
        if locked.status != PostingStatus.PENDING:
            return locked.status
        locked.status = PostingStatus.POSTED
        locked.attempts += 1
        locked.ledger_reference = reference
        locked.posted_at = timezone.now()
        locked.last_error = ""
        locked.save()
        data: dict[str, Any] = {
            "posting": locked.idempotency_key,
            "kind": locked.kind,
            "amount": locked.amount,
            "ledger_reference": reference,
        }
        if locked.kind == PostingKind.SALE and order.finance_pending:
            order.finance_pending = False
            order.save(update_fields=["finance_pending", "updated_at"])
            data["delivery"] = order.delivery_state
            released = order.is_deliverable()
        audit_append(actor=actor, action="finance.posted", subject=order, data=data)
        if released:
            transaction.on_commit(lambda: handover.order_released(str(order.id)), robust=True)
    return PostingStatus.POSTED


def finance_postings_due(*, now: Any = None) -> list[int]:
    return list(
        FinancePosting.objects.due(now or timezone.now())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:500]
    )


def finance_replay(*, actor: Actor, include_rejected: bool = False) -> dict[str, int]:
    """Sends every pending posting now, whatever its backoff (replay_finance, the admin).
    With `include_rejected`, rejected postings are put back to pending first."""
    if include_rejected:
        with transaction.atomic():
            rejected = FinancePosting.objects.filter(status=PostingStatus.REJECTED)
            orders = orders_lock(rejected.values_list("order_id", flat=True))
            for posting in (
                FinancePosting.objects.select_for_update()
                .filter(status=PostingStatus.REJECTED, order_id__in=list(orders))
                .order_by("pk")
            ):
                posting.order = orders[posting.order_id]
                posting.status = PostingStatus.PENDING
                posting.next_attempt_at = timezone.now()
                posting.save(update_fields=["status", "next_attempt_at"])
                audit_append(
                    actor=actor,
                    action="finance.posting_requeued",
                    subject=posting.order,
                    data={"posting": posting.idempotency_key},
                )
    results: dict[str, int] = defaultdict(int)
    pending = FinancePosting.objects.filter(status=PostingStatus.PENDING).order_by("created_at")
    for pk in pending.values_list("pk", flat=True):
        results[finance_posting_send(posting_pk=pk, actor=actor)] += 1
    return dict(results)


@dataclass(frozen=True)
class ReconciliationRow:
    order_id: str
    status: str
    currency: str
    expected: int  # what the platform kept: the amount taken less refunds
    ledger: int  # what Finance's ledger holds for the order
    pending_postings: int  # still on their way to Finance: they explain a difference, for now
    problem: str
    rejected_postings: int = 0  # refused by Finance: they explain it too, but need an operator

    @property
    def awaiting_finance(self) -> bool:
        return self.problem == AWAITING_FINANCE


AWAITING_FINANCE = "awaiting Finance"
REJECTED_BY_FINANCE = "posting rejected by Finance"
AMOUNTS_DIFFER = "amounts differ"
OTHER_CURRENCY = "ledger entry in another currency"


def reconciliation_report(*, since: Any = None) -> list[ReconciliationRow]:
    """Orders whose money (amount taken less refunds) differs from what Finance's ledger holds
    for them, with the postings still on their way (which explain a difference for now) or
    rejected (which an operator must look at). Orders that match are left out.

    Raises FinanceUnavailable when Finance cannot be asked."""
    orders = Order.objects.filter(paid_at__isnull=False)
    if since is not None:
        orders = orders.filter(created_at__gte=since)
    rows: list[ReconciliationRow] = []
    finance = get_finance()
    batch: list[Order] = []

    def check(batch: list[Order]) -> None:
        ledger: dict[str, int] = defaultdict(int)
        foreign_currency: set[str] = set()
        by_id = {str(order.id): order for order in batch}
        for line in finance.entries_for(list(by_id)):
            order = by_id.get(line.order_id)
            if order is None:
                continue  # not asked for: nothing to compare it with here
            ledger[line.order_id] += line.amount
            if line.currency != order.currency:
                foreign_currency.add(line.order_id)
        pending: dict[str, int] = defaultdict(int)
        rejected: dict[str, int] = defaultdict(int)
        for order_id, status in FinancePosting.objects.filter(
            order__in=batch, status__in=(PostingStatus.PENDING, PostingStatus.REJECTED)
        ).values_list("order_id", "status"):
            (pending if status == PostingStatus.PENDING else rejected)[str(order_id)] += 1
        for order_id, order in by_id.items():
            expected = order.amount - order.amount_refunded
            if order_id in foreign_currency:
                problem = OTHER_CURRENCY
            elif ledger[order_id] == expected:
                continue
            elif rejected[order_id]:
                problem = REJECTED_BY_FINANCE
            elif pending[order_id]:
                problem = AWAITING_FINANCE
            else:
                problem = AMOUNTS_DIFFER
            rows.append(
                ReconciliationRow(
                    order_id=order_id,
                    status=order.status,
                    currency=order.currency,
                    expected=expected,
                    ledger=ledger[order_id],
                    pending_postings=pending[order_id],
                    problem=problem,
                    rejected_postings=rejected[order_id],
                )
            )

    for order in orders.order_by("created_at", "id").iterator(chunk_size=500):
        batch.append(order)
        if len(batch) == 100:
            check(batch)
            batch = []
    if batch:
        check(batch)
    return rows
