"""Refunds above MARKETPLACE_APPROVAL_REFUND_MINOR wait for a second person of Finance: the
admin's refund files an `order.refund` request and says so; at or under it the refund is made
at once, as before. Once approved, the refund goes to the provider once."""

from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from accounts.approval_services import approval_approve
from accounts.approvals import ApprovalClosed, ApprovalOwnRequest, ApprovalRoleMissing
from accounts.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent
from marketplace.models import User
from marketplace.roles import FINANCE, SECURITY
from orders.approvals import order_refund_or_request
from orders.models import Order, OrderStatus, Refund
from tests.conftest import _staff
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.test_admin import messages_of, order_url, refund_form
from tests.orders.test_support_services import pay, process_events
from tests.support.audit import sealed_events
from tests.support.stripe_api import StripeApiServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _threshold(settings: Any) -> None:
    settings.APPROVAL_REFUND_MINOR = 500  # 5.00 USD


@pytest.fixture
def finance(client: Any, finance_staff: User) -> Any:
    client.force_login(finance_staff)
    return client


@pytest.fixture
def paid(buyer: User) -> Order:
    return pay(order_checked_out(buyer, sku_for_sale(price=1000)))


def refund(client: Any, order: Order, **fields: str) -> Any:
    data = {**refund_form(client, order), "reason": "Buyer asked", **fields}
    return client.post(order_url(order, "refund/"), data, follow=True)


def test_a_refund_at_or_under_the_threshold_is_made_at_once(finance, paid):
    response = refund(finance, paid, scope="partial", amount="500")

    assert Refund.objects.get(order=paid).amount == 500
    assert not ApprovalRequest.objects.exists()
    assert messages_of(response)[0].startswith("Refund of 5.00 USD requested")


def test_a_refund_above_the_threshold_waits_for_a_second_person(finance, paid, finance_staff):
    response = refund(finance, paid, scope="full")

    assert not Refund.objects.exists()
    request = ApprovalRequest.objects.get()
    assert (request.kind, request.requested_by, request.params["amount"]) == (
        "order.refund",
        finance_staff,
        1000,
    )
    assert request.summary.startswith(f"Refund 10.00 USD of order {paid.pk} (paid 10.00 USD")
    [message] = messages_of(response)
    assert message.startswith("Refunds above 5.00 USD need a second person of Finance")
    assert not AuditEvent.objects.filter(action="order.refund_requested").exists()

    with pytest.raises(ApprovalOwnRequest):
        approval_approve(request.pk, by=finance_staff)
    with pytest.raises(ApprovalRoleMissing):
        approval_approve(request.pk, by=_staff("security@example.com", SECURITY))
    assert not Refund.objects.exists()

    approver = _staff("finance2@example.com", FINANCE)
    approval_approve(request.pk, by=approver)

    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPLIED
    refund_row = Refund.objects.get(order=paid)
    assert (refund_row.amount, request.outcome["refund"]) == (1000, refund_row.gateway_refund_id)
    event = AuditEvent.objects.get(action="order.refund_requested")
    assert (event.actor_type, event.actor_id) == ("staff", str(approver.uuid))
    process_events()
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.REFUNDED, 1000)


def test_a_refund_the_service_would_refuse_is_refused_before_anyone_is_asked(finance, paid):
    page = refund(finance, paid, scope="partial", amount="5000")

    assert page.context["form"].errors["amount"] == [
        "At most 1000 (10.00 USD) can still be refunded."
    ]
    assert not ApprovalRequest.objects.exists()
    assert not Refund.objects.exists()


def test_refunds_split_under_the_threshold_still_wait_once_their_total_crosses_it(
    settings, buyer, finance_staff
):
    settings.APPROVAL_REFUND_MINOR = 50000  # 500.00 USD
    order = pay(order_checked_out(buyer, sku_for_sale(price=200000)))

    outcomes = [
        order_refund_or_request(
            order_id=order.pk,
            amount=50000,
            reason="Buyer asked",
            requested_by=finance_staff,
            request_key=f"split-{n}",
        )
        for n in range(4)
    ]

    assert [type(outcome) for outcome in outcomes] == [
        Refund,
        ApprovalRequest,
        ApprovalRequest,
        ApprovalRequest,
    ]
    assert list(Refund.objects.filter(order=order).values_list("amount", flat=True)) == [50000]
    assert [request.params["amount"] for request in outcomes[1:]] == [50000] * 3
    assert ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).count() == 3


def test_a_pending_refund_request_counts_towards_the_threshold(settings, buyer, finance_staff):
    settings.APPROVAL_REFUND_MINOR = 50000
    order = pay(order_checked_out(buyer, sku_for_sale(price=200000)))
    filed = order_refund_or_request(
        order_id=order.pk,
        amount=60000,
        reason="Buyer asked",
        requested_by=finance_staff,
        request_key="large",
    )
    assert isinstance(filed, ApprovalRequest)

    small = order_refund_or_request(
        order_id=order.pk,
        amount=100,
        reason="Buyer asked",
        requested_by=finance_staff,
        request_key="small",
    )

    assert isinstance(small, ApprovalRequest)
    assert not Refund.objects.exists()


# --- Applied after the approval commits, with Stripe (the stand-in) ---------------------------


@pytest.fixture
def stripe_paid(buyer: User, stripe_api: StripeApiServer) -> Order:
    """An order paid with a PaymentIntent the Stripe stand-in knows."""
    order = order_checked_out(buyer, sku_for_sale(price=1000))
    intent = stripe_api.payment_intent_add(amount=order.amount)
    Order.objects.filter(pk=order.pk).update(
        status=OrderStatus.PAID, paid_at=timezone.now(), payment_intent_id=intent["id"]
    )
    order.refresh_from_db()
    return order


def file_full_refund(order: Order, by: User) -> ApprovalRequest:
    request = order_refund_or_request(
        order_id=order.pk, amount=None, reason="Buyer asked", requested_by=by, request_key="k1"
    )
    assert isinstance(request, ApprovalRequest)
    return request


@pytest.mark.django_db(transaction=True)
def test_an_approved_refund_reaches_stripe_once_after_the_approval_committed(
    monkeypatch, stripe_api, stripe_paid, finance_staff
):
    request = file_full_refund(stripe_paid, finance_staff)
    approvers = [_staff(f"finance{n}@example.com", FINANCE) for n in (2, 3)]
    seen: list[tuple[bool, str]] = []
    main_connection = connections["default"]  # this thread's (`connection` is per thread)
    refund_create = stripe_api._refund_create

    def observed(params: dict[str, Any]) -> dict[str, Any]:
        try:  # what another process sees meanwhile
            status = ApprovalRequest.objects.values_list("status", flat=True).get(pk=request.pk)
        finally:
            connections.close_all()  # this thread's
        seen.append((main_connection.in_atomic_block, status))
        return refund_create(params)

    monkeypatch.setattr(stripe_api, "_refund_create", observed)

    done = approval_approve(request.pk, by=approvers[0])

    # Stripe was asked with no transaction open, the approval already committed as applying.
    assert seen == [(False, ApprovalStatus.APPLYING)]
    assert (done.status, done.applied_at is not None) == (ApprovalStatus.APPLIED, True)
    [sent] = stripe_api.refunds.values()
    assert (sent["amount"], sent["payment_intent"]) == (1000, stripe_paid.payment_intent_id)
    assert Refund.objects.get(order=stripe_paid).gateway_refund_id == sent["id"]
    assert done.outcome == {"refund": sent["id"], "amount": 1000}

    with pytest.raises(ApprovalClosed):
        approval_approve(request.pk, by=approvers[1])
    assert len(stripe_api.refunds) == 1
    assert sealed_events(action="approval.applied").count() == 1


def test_an_approved_refund_stripe_refuses_fails_and_nothing_is_marked_refunded(
    stripe_api, stripe_paid, finance_staff
):
    request = file_full_refund(stripe_paid, finance_staff)
    stripe_api.down = True

    done = approval_approve(request.pk, by=_staff("finance2@example.com", FINANCE))

    done.refresh_from_db()
    assert done.status == ApprovalStatus.FAILED
    assert done.applied_at is None
    assert "Nothing was refunded" in done.error
    assert not Refund.objects.exists()
    assert not sealed_events(action="order.refund_requested").exists()
    [failed] = sealed_events(action="approval.failed")
    assert failed.data["error"] == done.error[:500]
    stripe_paid.refresh_from_db()
    assert (stripe_paid.status, stripe_paid.amount_refunded) == (OrderStatus.PAID, 0)
