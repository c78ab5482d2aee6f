"""Finance down, then up, across the real processes: checkout and the signed webhook over HTTP
(live_server), a real Celery worker on Redis processing the event and sending the ledger entry
to the Finance stand-in, PostgreSQL underneath. While Finance is unreachable the order is paid
and its delivery held; once it answers, the beat task's replay books the sale and releases it."""

from datetime import timedelta
from typing import Any

import pytest
import requests
from django.utils import timezone

from audit.models import AuditEvent
from orders.models import (
    FinancePosting,
    Order,
    OrderStatus,
    PostingKind,
    PostingStatus,
    RoyaltyLine,
    WebhookEvent,
    WebhookStatus,
)
from orders.services import webhook_secrets
from orders.tasks import finance_replay_due
from tests.orders.factories import sku_for_sale
from tests.orders.stripe_events import session_event, signed
from tests.support.finance_api import FinanceServer
from tests.support.worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def sale_posting(order_id: Any) -> FinancePosting | None:
    return FinancePosting.objects.filter(order_id=order_id, kind=PostingKind.SALE).first()


def make_due(order_id: Any) -> None:
    """Skips the rest of the backoff (15 s, then 30 s) rather than sleeping through it."""
    FinancePosting.objects.filter(order_id=order_id).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def test_finance_down_holds_the_delivery_and_the_replay_releases_it(
    finance_api: FinanceServer,
    celery_worker: WorkerProcess,
    live_server: Any,
    buyer_token: str,
):
    sku = sku_for_sale(price=2500, currency="EUR")
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {buyer_token}"
    finance_api.refuse_connections()

    response = http.post(
        f"{live_server.url}/api/v1/checkout",
        json={"sku": sku.slug},
        headers={"Idempotency-Key": "finance-outage-1"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    order = Order.objects.get(pk=response.json()["order"]["id"])
    assert order.status == OrderStatus.PENDING

    body, header = signed(session_event("checkout.session.completed", order), webhook_secrets()[0])
    delivered = requests.post(
        f"{live_server.url}/marketplace/stripe/webhook",
        data=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
        timeout=30,
    )
    assert delivered.status_code == 200, delivered.text

    # The worker processes the event, then fails to reach Finance.
    def first_attempt_failed() -> bool:
        posting = sale_posting(order.pk)
        return posting is not None and posting.attempts >= 1

    wait_until(first_attempt_failed, worker=celery_worker)
    event = WebhookEvent.objects.get(order=order)
    assert event.status == WebhookStatus.PROCESSED
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.delivery_state == "finance_pending"
    assert RoyaltyLine.objects.filter(order=order).count() == 1
    posting = sale_posting(order.pk)
    assert (posting.status, posting.attempts) == (PostingStatus.PENDING, 1)
    assert "unreachable" in posting.last_error
    assert posting.next_attempt_at > timezone.now()
    assert finance_api.requests == []

    # Finance listens again but answers 503: the beat task's replay leaves the order held.
    finance_api.restore()
    finance_api.down = True
    make_due(order.pk)
    finance_replay_due.delay()
    wait_until(lambda: sale_posting(order.pk).attempts >= 2, worker=celery_worker)
    posting = sale_posting(order.pk)
    assert posting.status == PostingStatus.PENDING
    assert "503" in posting.last_error
    order.refresh_from_db()
    assert order.delivery_state == "finance_pending"
    assert finance_api.entries == []

    # Finance is back: the next replay books the sale and releases the delivery.
    finance_api.down = False
    make_due(order.pk)
    finance_replay_due.delay()

    def released() -> bool:
        order.refresh_from_db()
        return order.delivery_state == "released"

    wait_until(released, worker=celery_worker)
    posting = sale_posting(order.pk)
    assert (posting.status, posting.attempts) == (PostingStatus.POSTED, 3)
    entries = finance_api.entries
    assert [(e["order_id"], e["kind"], e["amount"], e["currency"]) for e in entries] == [
        (str(order.id), "sale", 2500, "EUR")
    ]
    assert posting.ledger_reference == entries[0]["id"]
    assert entries[0]["body"]["royalties"] == [{"partner": sku.partner.slug, "amount": 2500}]
    post = finance_api.posts[-1]
    assert post.headers["authorization"] == f"Bearer {finance_api.token}"
    assert post.headers["idempotency-key"] == str(order.id)
    actions = list(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order.id))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["order.created", "order.paid", "finance.posted"]
    posted = AuditEvent.objects.get(action="finance.posted", subject_id=str(order.id))
    assert posted.actor_id == "finance-worker"
    assert posted.data["delivery"] == "released"
