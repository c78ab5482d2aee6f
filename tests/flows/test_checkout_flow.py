"""A buyer's purchase from checkout to refund, across the real processes: the API and the webhook
endpoint served over HTTP (live_server), Stripe's API answered by its stand-in through the real
`stripe` client, Stripe's events signed with the `stripe` library's scheme, a real Celery worker
on Redis doing the processing, PostgreSQL underneath and the local Finance ledger."""

import uuid
from io import StringIO
from typing import Any

import pytest
import requests
from django.core.management import call_command

from audit.models import AuditEvent
from audit.sealer import seal_all
from audit.verify import chain_verify
from marketplace.actors import Actor
from marketplace.models import LedgerEntry
from orders.models import (
    FinancePosting,
    Order,
    OrderStatus,
    PostingKind,
    PostingStatus,
    Refund,
    RoyaltyLine,
    WebhookAttempt,
    WebhookEvent,
    WebhookStatus,
)
from orders.services import order_refund
from tests.orders.factories import PartnerFactory, sku_for_sale
from tests.orders.stripe_events import charge_refunded_event, envelope, signed
from tests.support.pg import backends_blocked_by, order_row_locked
from tests.support.stripe_api import StripeApiServer
from tests.support.worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

WEBHOOK_PATH = "/marketplace/stripe/webhook"


# --- Helpers shared in spirit with test_payment_faults.py --------------------------------------


def post_event(
    http: requests.Session, base_url: str, event: dict[str, Any], secret: str
) -> requests.Response:
    """Delivers `event` the way Stripe does: the JSON body, signed, over HTTP."""
    body, header = signed(event, secret)
    return http.post(
        base_url + WEBHOOK_PATH,
        data=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
        timeout=30,
    )


def order_actions(order_id: Any) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order_id))
        .order_by("id")
        .values_list("action", flat=True)
    )


# --- The journey -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_buyer_checks_out_pays_through_the_worker_and_is_refunded(
    stripe_api: StripeApiServer,
    live_server: Any,
    celery_worker: WorkerProcess,
    buyer_http: requests.Session,
    publisher: Any,
    finance_staff: Any,
) -> None:
    base = live_server.url
    secret = stripe_api.webhook_secret
    co_author = PartnerFactory(slug="pixel-forge")
    sku = sku_for_sale(
        publisher, price=2999, currency="EUR", splits=[(publisher.partner, 7000), (co_author, 3000)]
    )

    # Checkout over HTTP: an order and a Stripe Checkout Session, once per Idempotency-Key.
    key = f"buy-{uuid.uuid4()}"
    created = buyer_http.post(
        f"{base}/api/v1/checkout", json={"sku": sku.slug}, headers={"Idempotency-Key": key}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    order_id = body["order"]["id"]
    assert body["order"]["status"] == "pending"
    assert (body["order"]["amount"], body["order"]["currency"]) == (2999, "EUR")
    [session] = stripe_api.sessions.values()
    assert body["checkout_url"] == session["url"]
    assert session["metadata"] == {"order_id": order_id, "sku": sku.slug}
    assert session["amount_total"] == 2999

    retried = buyer_http.post(
        f"{base}/api/v1/checkout", json={"sku": sku.slug}, headers={"Idempotency-Key": key}
    )
    assert (retried.status_code, retried.json()) == (201, body)
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert len(stripe_api.sessions) == 1

    # The buyer pays on Stripe's page; Stripe reports it with checkout.session.completed.
    paid_session = stripe_api.pay(session["id"])
    completed = envelope("checkout.session.completed", paid_session)
    with requests.Session() as stripe_http:
        # The worker's processing waits on this lock, so what the endpoint answers is what it
        # answers before any processing.
        with order_row_locked(order_id) as holder:
            answer = post_event(stripe_http, base, completed, secret)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"received": True, "id": completed["id"], "duplicate": False}
            wait_until(lambda: backends_blocked_by(holder), worker=celery_worker)
            event = WebhookEvent.objects.get(event_id=completed["id"])
            assert (event.status, event.attempts) == (WebhookStatus.RECEIVED, 0)
            assert Order.objects.get(pk=order_id).status == OrderStatus.PENDING
            assert "orders.tasks.webhook_event_process" in celery_worker.log()

        wait_until(
            lambda: Order.objects.get(pk=order_id).delivery_state == "released",
            worker=celery_worker,
        )
        shown = buyer_http.get(f"{base}/api/v1/orders/{order_id}").json()
        assert (shown["status"], shown["delivery"]) == ("paid", "released")

        order = Order.objects.get(pk=order_id)
        assert order.payment_intent_id == paid_session["payment_intent"]
        event.refresh_from_db()
        assert (event.status, event.attempts, event.order_id) == (
            WebhookStatus.PROCESSED,
            1,
            order.id,
        )
        assert list(WebhookAttempt.objects.values_list("number", "succeeded")) == [(1, True)]
        # 2999 at 70 % is 2099.3, at 30 % 899.7: the unit left by rounding goes to the seller.
        assert sorted(
            RoyaltyLine.objects.filter(order=order).values_list(
                "partner__slug", "amount", "receives_remainder"
            )
        ) == [("acme", 2100, True), ("pixel-forge", 899, False)]
        sale = LedgerEntry.objects.get(order_id=order.id)
        assert (sale.kind, sale.amount, sale.currency, sale.idempotency_key) == (
            "sale",
            2999,
            "EUR",
            order_id,
        )
        assert sorted((r["partner"], r["amount"]) for r in sale.payload["royalties"]) == [
            ("acme", 2100),
            ("pixel-forge", 899),
        ]
        assert order_actions(order_id) == ["order.created", "order.paid", "finance.posted"]

        # Stripe delivers again (it does, at least once): a no-op.
        again = post_event(stripe_http, base, completed, secret)
        assert again.json() == {"received": True, "id": completed["id"], "duplicate": True}

        # Finance refunds it through Stripe; Stripe reports it with charge.refunded.
        refund = order_refund(
            order_id=order_id,
            amount=None,
            reason="buyer changed their mind",
            actor=Actor.of_user(finance_staff),
        )
        assert stripe_api.refunds[refund.gateway_refund_id]["amount"] == 2999
        assert Order.objects.get(pk=order_id).status == OrderStatus.PAID  # until Stripe says so
        refunded = charge_refunded_event(
            order, amount_refunded=2999, refund_ids=[(refund.gateway_refund_id, 2999)]
        )
        answer = post_event(stripe_http, base, refunded, secret)
        assert answer.status_code == 200, answer.text

    wait_until(
        lambda: FinancePosting.objects.filter(
            order_id=order_id, kind=PostingKind.REFUND, status=PostingStatus.POSTED
        ).exists(),
        worker=celery_worker,
    )
    shown = buyer_http.get(f"{base}/api/v1/orders/{order_id}").json()
    assert (shown["status"], shown["amount_refunded"], shown["delivery"]) == (
        "refunded",
        2999,
        "refunded",
    )
    assert sorted(LedgerEntry.objects.filter(order_id=order_id).values_list("kind", "amount")) == [
        ("refund", -2999),
        ("sale", 2999),
    ]
    assert list(Refund.objects.values_list("gateway_refund_id", "amount")) == [
        (refund.gateway_refund_id, 2999)
    ]
    assert order_actions(order_id) == [
        "order.created",
        "order.paid",
        "finance.posted",
        "order.refund_requested",
        "order.refunded",
        "finance.posted",
    ]
    assert WebhookEvent.objects.filter(status=WebhookStatus.PROCESSED).count() == 2

    # The whole chain, with every event the journey appended, verifies.
    seal_all()
    report = chain_verify()
    assert report.ok, report.summary()
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert "OK" in out.getvalue()
