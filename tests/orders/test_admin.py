"""The orders admin for Finance and Support: who sees and does what, the timeline, the actions
(each through its service, audited), webhook replay and the reconciliation report."""

import re
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from marketplace.models import LedgerEntry, User
from marketplace.roles import SUPPORT
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
from tests.conftest import _staff
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.test_support_services import pay, process_events
from tests.support.net import free_port

pytestmark = pytest.mark.django_db

ORDERS = "/admin/orders/order/"
POSTINGS = "/admin/orders/financeposting/"
EVENTS = "/admin/orders/webhookevent/"
LEDGER = "/admin/marketplace/ledgerentry/"


def order_url(order: Order, suffix: str = "change/") -> str:
    return f"{ORDERS}{order.pk}/{suffix}"


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def snapshot(order: Order) -> dict[str, Any]:
    """What an action on the order could write."""
    return {
        "order": Order.objects.filter(pk=order.pk).values().get(),
        "refunds": Refund.objects.count(),
        "events": WebhookEvent.objects.count(),
        "postings": list(FinancePosting.objects.values_list("pk", "status", "attempts")),
        "audit": AuditEvent.objects.count(),
    }


@pytest.fixture
def support_staff(db: None) -> User:
    return _staff("support@example.com", SUPPORT)


@pytest.fixture
def finance(client: Any, finance_staff: User) -> Any:
    client.force_login(finance_staff)
    return client


@pytest.fixture
def paid(buyer: User) -> Order:
    return pay(order_checked_out(buyer, sku_for_sale(price=1000)))


def refund_form(client: Any, order: Order) -> dict[str, str]:
    """The refund page's form as shown (its request key included)."""
    page = client.get(order_url(order, "refund/"))
    assert page.status_code == 200
    key = re.search(r'name="request_key" value="([0-9a-f]+)"', page.content.decode())
    assert key, "the form carries a request key"
    return {"request_key": key.group(1)}


# --- The list ------------------------------------------------------------------------------------


def test_changelist_query_count_does_not_grow_with_the_page(finance, buyer, publisher):
    sku = sku_for_sale(publisher, price=1000)
    for _ in range(2):
        order_checked_out(buyer, sku)
    with CaptureQueriesContext(connection) as few:
        assert finance.get(ORDERS).status_code == 200
    for _ in range(8):
        order_checked_out(buyer, sku)
    with CaptureQueriesContext(connection) as many:
        page = finance.get(ORDERS)

    assert page.content.decode().count("buyer@example.com") >= 10
    assert len(many) == len(few)


def test_changelist_shows_amount_status_delivery_and_searches(finance, paid, buyer):
    other = order_checked_out(buyer, sku_for_sale(price=250, currency="EUR"))

    listing = finance.get(ORDERS).content.decode()
    assert "10.00 USD" in listing
    assert "2.50 EUR" in listing
    assert "Released" in listing
    assert "Not paid" in listing

    for term in (str(paid.pk), paid.checkout_session_id, paid.payment_intent_id, paid.sku_slug):
        found = finance.get(ORDERS, {"q": term}).content.decode()
        assert str(paid.pk) in found, term
        assert str(other.pk) not in found, term
    assert str(other.pk) in finance.get(ORDERS, {"q": "buyer@example.com"}).content.decode()
    held = finance.get(ORDERS, {"status__exact": "pending"}).content.decode()
    assert str(other.pk) in held
    assert str(paid.pk) not in held


# --- The order's page ----------------------------------------------------------------------------


def test_order_page_shows_snapshot_lines_postings_events_and_timeline(finance, paid):
    page = finance.get(order_url(paid))
    assert page.status_code == 200
    html = page.content.decode()

    assert paid.sku_title in html
    assert 'id="order-royalty-lines"' in html
    assert "10.00 USD" in html
    event = WebhookEvent.objects.get(order=paid)
    assert f'href="{EVENTS}{event.pk}/change/"' in html
    posting = FinancePosting.objects.get(order=paid)
    assert f'href="{POSTINGS}{posting.pk}/change/"' in html
    timeline = html[html.index('id="order-timeline"') :]
    actions = re.findall(r'<td class="action">([^<]+)</td>', timeline)
    assert actions == ["order.created", "order.paid", "finance.posted"]
    recorded = AuditEvent.objects.filter(subject_type="order", subject_id=str(paid.pk))
    assert re.findall(r'href="/admin/audit/auditevent/(\d+)/change/"', timeline) == [
        str(pk) for pk in recorded.order_by("id").values_list("pk", flat=True)
    ]
    assert "Service payments-worker" in timeline
    assert "Buyer buyer@example.com" in timeline
    assert "&quot;to&quot;: &quot;paid&quot;" in timeline
    # Read-only: nothing to save.
    assert 'name="_save"' not in html
    assert 'id="order-refund"' in html
    assert 'id="order-hold"' in html


def test_order_cannot_be_added_changed_or_deleted(finance, paid):
    assert finance.get(f"{ORDERS}add/").status_code == 403
    assert finance.post(order_url(paid, "delete/"), {"post": "yes"}).status_code == 403
    finance.post(order_url(paid), {"status": "refunded"})
    assert Order.objects.get(pk=paid.pk).status == OrderStatus.PAID


# --- Refund --------------------------------------------------------------------------------------


def test_finance_makes_a_partial_refund_which_is_audited(finance, paid, finance_staff):
    data = refund_form(finance, paid)
    response = finance.post(
        order_url(paid, "refund/"),
        {**data, "scope": "partial", "amount": "300", "reason": "Late delivery"},
        follow=True,
    )

    refund = Refund.objects.get(order=paid)
    assert (refund.amount, refund.reason) == (300, "Late delivery")
    assert messages_of(response) == [
        f"Refund of 3.00 USD requested ({refund.gateway_refund_id}). The order shows it once "
        "the provider's charge.refunded event is processed."
    ]
    audit = AuditEvent.objects.get(subject_id=str(paid.pk), action="order.refund_requested")
    assert (audit.actor_type, audit.actor_id) == ("staff", str(finance_staff.uuid))

    # The same form sent again (a double click) refunds nothing more.
    finance.post(
        order_url(paid, "refund/"),
        {**data, "scope": "partial", "amount": "300", "reason": "Late delivery"},
    )
    assert Refund.objects.filter(order=paid).count() == 1

    process_events()
    page = finance.get(order_url(paid)).content.decode()
    assert "order.partially_refunded" in page
    assert "7.00 USD can still be refunded" in page


def test_full_refund_refunds_everything_left(finance, paid):
    data = refund_form(finance, paid)
    finance.post(order_url(paid, "refund/"), {**data, "scope": "full", "reason": "Buyer asked"})
    process_events()
    paid.refresh_from_db()
    assert (paid.status, paid.amount_refunded) == (OrderStatus.REFUNDED, 1000)
    assert 'id="order-refund"' not in finance.get(order_url(paid)).content.decode()


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("1001", "At most 1000 (10.00 USD) can still be refunded."),
        ("0", "The amount must be greater than zero."),
        ("-5", "The amount must be greater than zero."),
        ("abc", "Enter the amount as a whole number of minor units"),
        ("2.50", "Enter the amount as a whole number of minor units"),
        ("", "Enter the amount to refund, in minor units."),
    ],
)
def test_refund_amounts_that_are_not_allowed_are_refused_with_a_message(
    finance, paid, amount, message
):
    data = refund_form(finance, paid)
    before = snapshot(paid)

    response = finance.post(
        order_url(paid, "refund/"),
        {**data, "scope": "partial", "amount": amount, "reason": "x"},
    )

    assert response.status_code == 200
    assert message in response.content.decode()
    assert snapshot(paid) == before


def test_a_refund_needs_a_reason(finance, paid):
    data = refund_form(finance, paid)
    before = snapshot(paid)
    response = finance.post(order_url(paid, "refund/"), {**data, "scope": "full", "reason": ""})
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert snapshot(paid) == before


def test_a_refund_the_service_refuses_shows_its_reason_and_writes_nothing(finance, paid, settings):
    data = refund_form(finance, paid)
    settings.STRIPE_SECRET_KEY = "sk_test_unreachable"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"
    before = snapshot(paid)

    response = finance.post(order_url(paid, "refund/"), {**data, "scope": "full", "reason": "x"})

    assert response.status_code == 200
    assert "Nothing was refunded; try again." in response.content.decode()
    assert snapshot(paid) == before


@pytest.mark.parametrize("who", ["content_ops", "support_staff"])
def test_only_finance_may_refund(client, paid, who, request):
    client.force_login(request.getfixturevalue(who))
    before = snapshot(paid)

    assert client.get(order_url(paid, "refund/")).status_code == 403
    response = client.post(
        order_url(paid, "refund/"),
        {"scope": "full", "reason": "x", "request_key": "k"},
    )

    assert response.status_code == 403
    assert snapshot(paid) == before


def test_content_ops_cannot_see_orders(client, content_ops, paid):
    client.force_login(content_ops)
    assert client.get(ORDERS).status_code == 403
    assert client.get(order_url(paid)).status_code == 403
    assert client.get(POSTINGS).status_code == 403


# --- Hold and release ----------------------------------------------------------------------------


def test_support_holds_and_releases_delivery_with_audit(client, support_staff, paid):
    client.force_login(support_staff)
    page = client.get(order_url(paid)).content.decode()
    assert 'id="order-hold"' in page
    assert 'id="order-refund"' not in page
    assert 'id="order-replay-finance"' not in page

    refused = client.post(order_url(paid, "hold/"), {"reason": "  "})
    assert refused.status_code == 200
    assert "This field is required." in refused.content.decode()
    assert Order.objects.get(pk=paid.pk).delivery_hold == DeliveryHold.NONE

    held = client.post(order_url(paid, "hold/"), {"reason": "Chargeback risk"}, follow=True)
    assert messages_of(held) == [f"The delivery of order {paid.pk} is held."]
    assert Order.objects.get(pk=paid.pk).delivery_state == "manual"
    assert 'id="order-release"' in held.content.decode()

    released = client.post(order_url(paid, "release/"), follow=True)
    assert messages_of(released) == [f"Order {paid.pk}: the hold is lifted; delivery goes ahead."]
    assert Order.objects.get(pk=paid.pk).delivery_state == "released"
    audit = AuditEvent.objects.filter(
        subject_id=str(paid.pk), action__startswith="order.delivery_"
    ).order_by("id")
    assert [(e.action, e.actor_id) for e in audit] == [
        ("order.delivery_held", str(support_staff.uuid)),
        ("order.delivery_released", str(support_staff.uuid)),
    ]


def test_release_of_a_finance_pending_order_says_it_still_waits(finance, buyer):
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)), finance=False)
    Order.objects.filter(pk=order.pk).update(delivery_hold=DeliveryHold.MANUAL, hold_reason="x")

    response = finance.post(order_url(order, "release/"), follow=True)

    assert messages_of(response) == [
        f"Order {order.pk}: the hold is lifted, but the delivery still waits (waiting for finance)."
    ]
    assert Order.objects.get(pk=order.pk).delivery_state == "finance_pending"


def test_hold_and_release_from_the_changelist(finance, paid, buyer):
    other = pay(order_checked_out(buyer, sku_for_sale(price=500)))
    selected = {"_selected_action": [str(paid.pk), str(other.pk)]}

    confirm = finance.post(ORDERS, {"action": "hold_selected", **selected})
    assert "Reason (kept with the change)" in confirm.content.decode()
    assert not Order.objects.exclude(delivery_hold="").exists()

    done = finance.post(
        ORDERS,
        {"action": "hold_selected", **selected, "reason": "Audit", "apply": "1"},
        follow=True,
    )
    assert messages_of(done) == ["2 order(s) held."]
    assert set(Order.objects.values_list("delivery_hold", flat=True)) == {"manual"}

    finance.post(ORDERS, {"action": "release_selected", **selected})
    assert set(Order.objects.values_list("delivery_hold", flat=True)) == {""}


def test_support_cannot_replay_finance(client, support_staff, buyer):
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)), finance=False)
    client.force_login(support_staff)
    before = snapshot(order)
    assert client.post(order_url(order, "replay-finance/")).status_code == 403
    assert snapshot(order) == before
    assert client.get(POSTINGS).status_code == 403


# --- Replay Finance ------------------------------------------------------------------------------


def test_replay_finance_while_finance_is_down_then_up(finance, buyer, settings, finance_staff):
    settings.FINANCE_URL = f"http://127.0.0.1:{free_port()}"  # nobody listens
    settings.FINANCE_TIMEOUT_SECONDS = 2
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)))
    assert order.delivery_state == "finance_pending"
    assert 'id="order-replay-finance"' in finance.get(order_url(order)).content.decode()

    down = finance.post(order_url(order, "replay-finance/"), follow=True)
    assert messages_of(down) == [
        f"Order {order.pk}: 1 posting(s) could not reach Finance and wait for the next replay "
        "(see their last error)."
    ]
    posting = FinancePosting.objects.get(order=order)
    assert (posting.status, posting.attempts) == (PostingStatus.PENDING, 2)  # pay() tried once
    assert posting.last_error

    settings.FINANCE_URL = ""  # the local ledger
    up = finance.post(order_url(order, "replay-finance/"), follow=True)
    assert messages_of(up) == [f"Order {order.pk}: 1 posting(s) acknowledged by Finance."]
    assert Order.objects.get(pk=order.pk).delivery_state == "released"
    assert LedgerEntry.objects.filter(order_id=order.pk).count() == 1
    posted = AuditEvent.objects.get(subject_id=str(order.pk), action="finance.posted")
    assert posted.actor_id == str(finance_staff.uuid)

    again = finance.post(order_url(order, "replay-finance/"), follow=True)
    assert messages_of(again) == [f"Order {order.pk}: no posting is waiting for Finance."]


def test_postings_list_and_replay_action(finance, buyer, settings):
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)), finance=False)
    posting = FinancePosting.objects.get(order=order)
    listing = finance.get(POSTINGS).content.decode()
    assert "10.00 USD" in listing
    assert "Waiting for Finance" in listing
    assert 'id="finance-reconciliation"' in listing

    response = finance.post(
        POSTINGS, {"action": "replay", "_selected_action": [posting.pk]}, follow=True
    )
    assert messages_of(response) == ["Selected postings: 1 posting(s) acknowledged by Finance."]
    posting.refresh_from_db()
    assert posting.status == PostingStatus.POSTED
    assert posting.ledger_reference in finance.get(POSTINGS).content.decode()


# --- Webhook events ------------------------------------------------------------------------------


def test_finance_replays_a_failed_event_and_sees_its_attempts(finance, buyer, finance_staff):
    from orders.gateways import local

    order = order_checked_out(buyer, sku_for_sale(price=1000))
    local.event_send(
        local.event_envelope(
            "checkout.session.completed",
            local.session_object(order, status="complete", payment_status="paid"),
        )
    )
    event = WebhookEvent.objects.get()
    # A first attempt failed on the database, say, and was recorded.
    WebhookEvent.objects.filter(pk=event.pk).update(
        status=WebhookStatus.FAILED, attempts=1, last_error="database error: lock timeout"
    )
    event.attempt_log.create(
        number=1, started_at=event.received_at, succeeded=False, detail="lock timeout"
    )
    page = finance.get(f"{EVENTS}{event.pk}/change/").content.decode()
    assert 'id="webhook-replay"' in page
    assert "lock timeout" in page

    response = finance.post(f"{EVENTS}{event.pk}/replay/", follow=True)

    assert messages_of(response)[0].startswith(f"{event}: replayed, now processed.")
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PAID
    replayed = AuditEvent.objects.get(action="webhook.replayed")
    assert replayed.actor_id == str(finance_staff.uuid)
    attempts = response.content.decode()
    assert re.search(r"<td>2</td>.*?<td>yes</td>", attempts, re.S)
    assert 'id="webhook-replay"' not in attempts  # processed: nothing left to replay

    again = finance.post(EVENTS, {"action": "replay", "_selected_action": [event.pk]}, follow=True)
    assert messages_of(again) == [f"{event}: processed, nothing to replay."]


def test_support_sees_events_but_cannot_replay(client, support_staff, paid):
    event = WebhookEvent.objects.get(order=paid)
    WebhookEvent.objects.filter(pk=event.pk).update(status=WebhookStatus.DEAD)
    client.force_login(support_staff)

    assert client.get(EVENTS).status_code == 200
    page = client.get(f"{EVENTS}{event.pk}/change/").content.decode()
    assert 'id="webhook-replay"' not in page
    before = AuditEvent.objects.count()
    assert client.post(f"{EVENTS}{event.pk}/replay/").status_code == 403
    assert AuditEvent.objects.count() == before
    assert WebhookEvent.objects.get(pk=event.pk).status == WebhookStatus.DEAD


# --- Reconciliation and the ledger ---------------------------------------------------------------


def test_reconciliation_lists_a_tampered_order_only(finance, paid, buyer):
    fine = pay(order_checked_out(buyer, sku_for_sale(price=700)))
    assert (
        "Every order agrees with the ledger."
        in finance.get(f"{POSTINGS}reconciliation/").content.decode()
    )

    LedgerEntry.objects.filter(order_id=paid.pk).update(amount=900)
    page = finance.get(f"{POSTINGS}reconciliation/").content.decode()

    table = page[page.index('id="reconciliation"') :]
    assert str(paid.pk) in table
    assert str(fine.pk) not in table
    assert "10.00 USD" in table
    assert "9.00 USD" in table
    assert "amounts differ" in table


def test_reconciliation_is_for_finance(client, support_staff):
    client.force_login(support_staff)
    assert client.get(f"{POSTINGS}reconciliation/").status_code == 403


def test_finance_reads_the_ledger_which_is_read_only(finance, paid):
    entry = LedgerEntry.objects.get(order_id=paid.pk)
    listing = finance.get(LEDGER).content.decode()
    assert entry.reference in listing
    assert "10.00 USD" in listing
    for term in (str(paid.pk), entry.reference):
        assert entry.reference in finance.get(LEDGER, {"q": term}).content.decode()
    missed = finance.get(LEDGER, {"q": "not-an-order-id"})
    assert missed.status_code == 200
    assert entry.reference not in missed.content.decode()
    assert finance.get("/admin/marketplace/ledgerentry/add/").status_code == 403
    page = finance.get(f"/admin/marketplace/ledgerentry/{entry.pk}/change/").content.decode()
    assert 'name="_save"' not in page
