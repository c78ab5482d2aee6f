"""The payment pipeline in one process: checkout, a signed event through the webhook
endpoint, processing, the Finance posting, and what each step leaves behind."""

import pytest

from audit.models import AuditEvent
from marketplace.models import LedgerEntry
from orders.gateways.local import intent_id_of
from orders.models import (
    FinancePosting,
    OrderStatus,
    PostingStatus,
    RoyaltyLine,
    WebhookEvent,
    WebhookStatus,
)
from orders.services import finance_posting_send, webhook_event_process, webhook_secrets
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import (
    charge_refunded_event,
    dispute_created_event,
    session_event,
    signed,
)

pytestmark = pytest.mark.django_db


def deliver(client, event):
    body, header = signed(event, webhook_secrets()[0])
    return client.post(
        "/marketplace/stripe/webhook",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )


def process_all():
    """Processes stored events in the order they arrived, then sends the postings."""
    for pk in (
        WebhookEvent.objects.filter(status__in=[WebhookStatus.RECEIVED, WebhookStatus.FAILED])
        .order_by("received_at", "pk")
        .values_list("pk", flat=True)
    ):
        webhook_event_process(event_pk=pk)
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)


def test_paid_order_gets_royalties_ledger_entry_and_is_released(client, buyer):
    sku = sku_for_sale(price=1000)
    order = order_checked_out(buyer, sku)
    assert order.status == OrderStatus.PENDING

    response = deliver(client, session_event("checkout.session.completed", order))
    assert response.status_code == 200, response.content
    assert response.json()["duplicate"] is False
    process_all()

    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.delivery_state == "released"
    assert [
        (line.amount, line.receives_remainder) for line in RoyaltyLine.objects.filter(order=order)
    ] == [(1000, False)]
    entry = LedgerEntry.objects.get(order_id=order.id)
    assert (entry.kind, entry.amount, entry.currency) == ("sale", 1000, "USD")
    actions = list(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order.id))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["order.created", "order.paid", "finance.posted"]


def test_refund_before_payment_books_sale_and_refund(client, buyer):
    order = order_checked_out(buyer, sku_for_sale(price=500))
    # The payment intent the local gateway can place, as Stripe would be asked for it.
    order.payment_intent_id = intent_id_of(str(order.id))
    refund = charge_refunded_event(order, amount_refunded=500, refund_ids=[("re_1", 500)])
    dispute = dispute_created_event(order)
    order.payment_intent_id = ""

    deliver(client, refund)
    process_all()
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED  # before any checkout event arrived
    deliver(client, session_event("checkout.session.completed", order))
    deliver(client, dispute)
    process_all()

    assert not WebhookEvent.objects.exclude(status=WebhookStatus.PROCESSED).exists()
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    assert order.amount_refunded == 500
    assert sorted(
        LedgerEntry.objects.filter(order_id=order.id).values_list("amount", flat=True)
    ) == [-500, 500]
