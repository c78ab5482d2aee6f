"""Staff actions on an order (orders.services.support): refunds through the local gateway, whose
charge.refunded event comes back through the webhook pipeline, and delivery holds."""

from typing import Any

import pytest

from audit.models import AuditEvent
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput
from marketplace.models import LedgerEntry, User
from orders.exceptions import (
    OrderStateConflict,
    PaymentProviderUnavailable,
    RefundNotAllowed,
)
from orders.gateways import local
from orders.models import (
    DeliveryHold,
    FinancePosting,
    Order,
    OrderStatus,
    PostingStatus,
    Refund,
    WebhookEvent,
    WebhookStatus,
)
from orders.services import (
    finance_posting_send,
    order_delivery_hold,
    order_delivery_release,
    order_refund,
    webhook_event_process,
)
from orders.services import support as support_services
from tests.conftest import _staff
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.support.net import free_port

pytestmark = pytest.mark.django_db


def process_events() -> list[str]:
    """Processes every stored event still to do, as the worker would; answers their types."""
    done = []
    for event in WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).order_by("pk"):
        assert webhook_event_process(event_pk=event.pk) == WebhookStatus.PROCESSED
        done.append(event.type)
    return done


def send_postings() -> None:
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)


def pay(order: Order, *, finance: bool = True) -> Order:
    """Pays through the local gateway's own event, processed; Finance acknowledges the sale
    unless `finance` is False (the order then waits as finance_pending)."""
    local.event_send(
        local.event_envelope(
            "checkout.session.completed",
            local.session_object(order, status="complete", payment_status="paid"),
        )
    )
    assert process_events() == ["checkout.session.completed"]
    if finance:
        send_postings()
    order.refresh_from_db()
    return order


@pytest.fixture
def staff(db: None) -> User:
    return _staff("finance@example.com", "Finance")


@pytest.fixture
def actor(staff: User) -> Actor:
    return Actor.of_user(staff)


@pytest.fixture
def paid(buyer: User) -> Order:
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)))
    assert (order.status, order.delivery_state) == (OrderStatus.PAID, "released")
    return order


def written(order: Order) -> dict[str, Any]:
    """Everything a refund request could write, to compare before and after."""
    return {
        "refunds": list(Refund.objects.filter(order=order).values_list("gateway_refund_id")),
        "events": WebhookEvent.objects.count(),
        "audit": list(
            AuditEvent.objects.filter(subject_id=str(order.pk)).values_list("action", flat=True)
        ),
        "order": Order.objects.filter(pk=order.pk).values().get(),
    }


def releases(callbacks: list[Any]) -> list[Any]:
    """The after-commit calls that hand the order to delivery (audit appends add their own)."""
    return [c for c in callbacks if c.__module__ == "orders.services.support"]


def order_actions(order: Order) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


# --- Refunds -------------------------------------------------------------------------------------


def test_full_refund_goes_through_the_webhook_and_refunds_the_order(paid, actor, staff):
    refund = order_refund(order_id=paid.pk, amount=None, reason="Buyer asked", actor=actor)

    assert (refund.amount, refund.currency, refund.reason) == (1000, "USD", "Buyer asked")
    assert refund.gateway_refund_id.startswith("re_local_")
    requested = AuditEvent.objects.get(subject_id=str(paid.pk), action="order.refund_requested")
    assert (requested.actor_type, requested.actor_id) == ("staff", str(staff.uuid))
    assert requested.data == {
        "refund": refund.gateway_refund_id,
        "amount": 1000,
        "reason": "Buyer asked",
    }
    # The order changes only when the provider's event is processed.
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.PAID, 0)

    assert process_events() == ["charge.refunded"]
    send_postings()
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.REFUNDED, 1000)
    assert sorted(
        LedgerEntry.objects.filter(order_id=paid.pk).values_list("amount", flat=True)
    ) == [-1000, 1000]
    assert order_actions(paid)[-3:] == [
        "order.refund_requested",
        "order.refunded",
        "finance.posted",
    ]


def test_partial_refunds_add_up_and_the_last_one_refunds_the_order(paid, actor):
    order_refund(order_id=paid.pk, amount=300, reason="Late delivery", actor=actor)
    process_events()
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.PAID, 300)
    assert "order.partially_refunded" in order_actions(paid)

    rest = order_refund(order_id=paid.pk, amount=700, reason="Gave up", actor=actor)
    assert rest.amount == 700
    process_events()
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.REFUNDED, 1000)
    assert sorted(Refund.objects.filter(order=paid).values_list("amount", flat=True)) == [300, 700]


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (1001, "At most 1000 USD (minor units) can still be refunded."),
        (0, "The refund amount must be greater than zero."),
        (-5, "The refund amount must be greater than zero."),
        ("100", "The refund amount must be a whole number of minor units."),
        (2.5, "The refund amount must be a whole number of minor units."),
        (True, "The refund amount must be a whole number of minor units."),
    ],
)
def test_refund_amounts_that_are_not_allowed_are_refused_and_nothing_is_written(
    paid, actor, amount, message
):
    before = written(paid)

    with pytest.raises(RefundNotAllowed) as refused:
        order_refund(order_id=paid.pk, amount=amount, reason="x", actor=actor)

    assert refused.value.detail == message
    assert "amount" in refused.value.errors
    assert written(paid) == before


def test_an_over_refund_counts_refunds_the_provider_has_not_reported_yet(paid, actor):
    order_refund(order_id=paid.pk, amount=600, reason="first", actor=actor)  # not processed
    before = written(paid)

    with pytest.raises(RefundNotAllowed, match="At most 400 USD"):
        order_refund(order_id=paid.pk, amount=401, reason="second", actor=actor)

    assert written(paid) == before


def test_a_double_submitted_refund_request_refunds_once(paid, actor):
    first = order_refund(
        order_id=paid.pk, amount=300, reason="Buyer asked", actor=actor, request_key="form-1"
    )
    again = order_refund(
        order_id=paid.pk, amount=300, reason="Buyer asked", actor=actor, request_key="form-1"
    )

    assert again.pk == first.pk
    assert Refund.objects.filter(order=paid).count() == 1
    assert order_actions(paid).count("order.refund_requested") == 1
    process_events()
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.PAID, 300)


def test_a_second_full_refund_finds_nothing_left(paid, actor):
    order_refund(order_id=paid.pk, amount=None, reason="Buyer asked", actor=actor)
    before = written(paid)

    with pytest.raises(RefundNotAllowed, match="nothing is left to refund"):
        order_refund(order_id=paid.pk, amount=None, reason="Buyer asked", actor=actor)

    assert written(paid) == before


def test_a_refund_is_refused_while_another_refund_of_the_order_is_in_flight(paid, actor):
    before = written(paid)
    with (
        support_services._refund_lock(paid.pk),  # another request is at the provider
        pytest.raises(OrderStateConflict, match="Another refund of order"),
    ):
        order_refund(order_id=paid.pk, amount=100, reason="x", actor=actor)
    assert written(paid) == before
    # The lock is gone with the request that held it.
    assert order_refund(order_id=paid.pk, amount=100, reason="x", actor=actor).amount == 100


def test_an_unpaid_order_cannot_be_refunded(buyer, actor):
    order = order_checked_out(buyer, sku_for_sale(price=1000))
    before = written(order)

    with pytest.raises(OrderStateConflict, match="no captured payment"):
        order_refund(order_id=order.pk, amount=None, reason="x", actor=actor)

    assert written(order) == before


def test_a_disputed_order_is_not_refunded(paid, actor):
    Order.objects.filter(pk=paid.pk).update(
        status=OrderStatus.DISPUTED, delivery_hold=DeliveryHold.DISPUTED
    )
    before = written(paid)

    with pytest.raises(OrderStateConflict, match="is disputed"):
        order_refund(order_id=paid.pk, amount=100, reason="x", actor=actor)

    assert written(paid) == before


def test_a_provider_that_cannot_be_reached_refunds_nothing(paid, actor, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_unreachable"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"
    settings.STRIPE_TIMEOUT_SECONDS = 2
    before = written(paid)

    with pytest.raises(PaymentProviderUnavailable, match="Nothing was refunded"):
        order_refund(order_id=paid.pk, amount=100, reason="x", actor=actor)

    assert written(paid) == before


# --- Holds ---------------------------------------------------------------------------------------


def test_hold_needs_a_reason_and_writes_nothing_without_one(paid, actor):
    with pytest.raises(InvalidInput, match="Say why"):
        order_delivery_hold(order_id=paid.pk, reason="   ", actor=actor)

    paid.refresh_from_db()
    assert paid.delivery_hold == DeliveryHold.NONE
    assert "order.delivery_held" not in order_actions(paid)


def test_hold_and_release_are_audited_and_move_the_delivery(
    paid, actor, staff, django_capture_on_commit_callbacks
):
    held = order_delivery_hold(order_id=paid.pk, reason="Fraud check", actor=actor)
    assert (held.delivery_state, held.hold_reason) == ("manual", "Fraud check")
    order_delivery_hold(order_id=paid.pk, reason="Again", actor=actor)  # already held: no-op

    with django_capture_on_commit_callbacks() as callbacks:
        released = order_delivery_release(order_id=paid.pk, actor=actor)
    assert released.delivery_state == "released"
    assert len(releases(callbacks)) == 1  # licensing is told the order may be delivered

    events = AuditEvent.objects.filter(
        subject_id=str(paid.pk), action__startswith="order.delivery_"
    ).order_by("id")
    assert [(e.action, e.actor_id, e.data) for e in events] == [
        ("order.delivery_held", str(staff.uuid), {"reason": "Fraud check", "previous_hold": ""}),
        (
            "order.delivery_released",
            str(staff.uuid),
            {"previous_hold": "manual", "delivery": "released"},
        ),
    ]


def test_releasing_an_order_that_is_not_held_changes_and_records_nothing(paid, actor):
    before = order_actions(paid)
    assert order_delivery_release(order_id=paid.pk, actor=actor).delivery_state == "released"
    assert order_actions(paid) == before


def test_release_of_a_finance_pending_order_does_not_release_it(
    buyer, actor, django_capture_on_commit_callbacks
):
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)), finance=False)
    assert order.delivery_state == "finance_pending"
    order_delivery_hold(order_id=order.pk, reason="Check", actor=actor)

    with django_capture_on_commit_callbacks() as callbacks:
        released = order_delivery_release(order_id=order.pk, actor=actor)

    assert released.delivery_hold == DeliveryHold.NONE
    assert released.finance_pending is True
    assert released.delivery_state == "finance_pending"
    assert releases(callbacks) == []  # nothing is delivered
    event = AuditEvent.objects.get(subject_id=str(order.pk), action="order.delivery_released")
    assert event.data == {"previous_hold": "manual", "delivery": "finance_pending"}

    # Releasing again does nothing: only Finance's acknowledgement releases it.
    order_delivery_release(order_id=order.pk, actor=actor)
    assert Order.objects.get(pk=order.pk).delivery_state == "finance_pending"
    send_postings()
    assert Order.objects.get(pk=order.pk).delivery_state == "released"


def test_the_dispute_hold_of_a_disputed_order_is_not_released(paid, actor):
    Order.objects.filter(pk=paid.pk).update(
        status=OrderStatus.DISPUTED, delivery_hold=DeliveryHold.DISPUTED
    )
    with pytest.raises(OrderStateConflict, match="is disputed"):
        order_delivery_release(order_id=paid.pk, actor=actor)
    assert Order.objects.get(pk=paid.pk).delivery_hold == DeliveryHold.DISPUTED
    assert "order.delivery_released" not in order_actions(paid)
