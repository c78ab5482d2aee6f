"""The webhook handlers one at a time (orders/services/webhook_handlers.py): finding an event's
order, and each event type's change applied under the locks a processing run would hold. The
whole run (status, attempts, retries) is in test_webhook_processing.py."""

import uuid
from typing import Any

import pytest
from django.db import transaction

from audit.models import AuditEvent
from catalog.models import Sku
from orders import handover
from orders.gateways.local import intent_id_of
from orders.locks import order_lock
from orders.models import (
    FinancePosting,
    Order,
    OrderStatus,
    PostingKind,
    WebhookEvent,
    WebhookStatus,
)
from orders.services import webhook_event_process, webhook_receive, webhook_secrets
from orders.services.webhook_handlers import (
    HANDLERS,
    EventDeferred,
    payment_order_id,
    session_order_id,
)
from tests.catalog.factories import make_publisher
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import (
    charge_refunded_event,
    dispute_created_event,
    session_event,
    signed,
)

pytestmark = pytest.mark.django_db

ACTED_ON = {
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "charge.refunded",
    "charge.dispute.created",
}


@pytest.fixture
def sku(db: None) -> Sku:
    return sku_for_sale(make_publisher(), price=1999)


def stored(event: dict[str, Any]) -> WebhookEvent:
    body, header = signed(event, webhook_secrets()[0])
    return webhook_receive(payload=body, signature=header)[0]


def apply_alone(event: dict[str, Any], order: Order) -> str:
    """Runs the event type's handler by itself, under the order's lock as processing takes it."""
    row = stored(event)
    with transaction.atomic():
        return HANDLERS[row.type].apply(row, order_lock(order.pk))


def order_actions(order: Order) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_there_is_one_documented_handler_for_each_type_the_platform_acts_on():
    assert set(HANDLERS) == ACTED_ON
    for event_type, handler in HANDLERS.items():
        assert handler.apply.__doc__, event_type


# --- Finding the order -------------------------------------------------------------------------


def test_a_session_names_its_order_by_reference_or_metadata():
    order_id = str(uuid.uuid4())
    assert session_order_id({"client_reference_id": order_id}) == order_id
    assert session_order_id({"metadata": {"order_id": order_id.upper()}}) == order_id
    assert session_order_id({"client_reference_id": "not-a-uuid"}) is None
    assert session_order_id({}) is None


def test_a_payment_names_its_order_by_metadata_then_by_a_known_intent_then_by_the_gateway(
    buyer, sku
):
    order = order_checked_out(buyer, sku)
    named = str(uuid.uuid4())
    assert payment_order_id({"metadata": {"order_id": named}, "payment_intent": "pi_x"}) == named

    Order.objects.filter(pk=order.pk).update(payment_intent_id="pi_known")
    assert payment_order_id({"payment_intent": "pi_known"}) == str(order.pk)

    # Not known here: the local gateway says whose PaymentIntent it made.
    other = order_checked_out(buyer, sku, key="other")
    assert payment_order_id({"payment_intent": intent_id_of(str(other.pk))}) == str(other.pk)


@pytest.mark.parametrize(
    "obj", [{"payment_intent": "pi_nobody_made"}, {}], ids=["unplaced-intent", "no-intent"]
)
def test_a_payment_no_one_can_place_yet_is_deferred(obj):
    with pytest.raises(EventDeferred, match="no order is known for payment"):
        payment_order_id(obj)


# --- Each handler alone ------------------------------------------------------------------------


def test_an_expired_session_cancels_the_order(buyer, sku):
    order = order_checked_out(buyer, sku)
    event = session_event("checkout.session.expired", order, payment_status="unpaid")

    assert apply_alone(event, order) == f"order {order.pk} is cancelled"

    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert order_actions(order)[-1] == "order.cancelled"


def test_an_unpaid_completed_session_records_the_intent_and_books_nothing(buyer, sku):
    order = order_checked_out(buyer, sku)
    event = session_event("checkout.session.completed", order, payment_status="unpaid")

    assert apply_alone(event, order) == "checkout completed; the payment is still processing"

    order.refresh_from_db()
    assert (order.status, order.paid_at) == (OrderStatus.PENDING, None)
    assert order.payment_intent_id == event["data"]["object"]["payment_intent"]
    assert order_actions(order)[-1] == "order.payment_processing"
    assert not FinancePosting.objects.filter(order=order).exists()


class RevocationsSeen:
    """Licensing's side of orders.handover, recording what it is handed."""

    def __init__(self) -> None:
        self.revoked: list[tuple[str, str]] = []

    def order_revoked(self, order_id: str, reason: str) -> None:
        self.revoked.append((order_id, reason))


def test_a_dispute_first_books_the_payment_holds_delivery_and_hands_over_after_commit(
    buyer, sku, django_capture_on_commit_callbacks, monkeypatch
):
    order = order_checked_out(buyer, sku)
    row = stored(dispute_created_event(order))
    licensing = RevocationsSeen()
    monkeypatch.setattr(handover, "_receiver", licensing)

    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        outcome = HANDLERS[row.type].apply(row, order_lock(order.pk))

    assert outcome == f"order {order.pk} is disputed"
    order.refresh_from_db()
    assert order.delivery_state == "disputed"
    assert order.paid_at is not None
    assert FinancePosting.objects.get(order=order, kind=PostingKind.SALE).amount == 1999
    # Licensing hears of it only once the change has committed.
    assert licensing.revoked == []
    for callback in callbacks:
        callback()
    assert licensing.revoked == [(str(order.pk), "disputed")]


def test_a_partial_refund_books_the_refund_and_keeps_the_status(buyer, sku):
    order = order_checked_out(buyer, sku)
    apply_alone(session_event("checkout.session.completed", order), order)

    outcome = apply_alone(
        charge_refunded_event(order, amount_refunded=500, refund_ids=[("re_part", 500)]), order
    )

    assert outcome == f"order {order.pk} is paid (unchanged)"
    order.refresh_from_db()
    assert order.amount_refunded == 500
    assert order_actions(order)[-1] == "order.partially_refunded"
    assert FinancePosting.objects.get(order=order, kind=PostingKind.REFUND).amount == -500


# --- Orders this platform does not have --------------------------------------------------------


def test_a_session_for_an_order_this_platform_does_not_have_is_ignored(buyer, sku):
    order = order_checked_out(buyer, sku)
    event = session_event("checkout.session.completed", order)
    foreign = str(uuid.uuid4())
    event["data"]["object"].update(client_reference_id=foreign, metadata={"order_id": foreign})

    row = stored(event)
    assert webhook_event_process(event_pk=row.pk) == WebhookStatus.IGNORED

    row.refresh_from_db()
    assert (row.outcome, row.order_id, row.attempts) == ("no such order on this platform", None, 1)
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING


def test_a_payment_naming_an_order_this_platform_does_not_have_is_ignored(buyer, sku):
    order = order_checked_out(buyer, sku)
    event = dispute_created_event(order)
    event["data"]["object"]["metadata"] = {"order_id": str(uuid.uuid4())}

    row = stored(event)
    assert webhook_event_process(event_pk=row.pk) == WebhookStatus.IGNORED

    row.refresh_from_db()
    assert row.outcome == "the payment names no order on this platform"
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING
