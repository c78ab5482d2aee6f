"""Processing stored webhook events (service level, local gateway): forward-only status in any
arrival order, delayed payments, dead-lettering, retries with backoff, replay, the beat sweep,
and the hand-over to licensing on a refund or a dispute."""

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from celery import current_app
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.simple import SimpleQueue

from audit.models import AuditEvent
from catalog.models import Sku
from licensing import tasks as licensing_tasks
from orders.gateways.local import intent_id_of
from orders.models import (
    FinancePosting,
    Order,
    OrderStatus,
    PostingKind,
    RoyaltyLine,
    WebhookAttempt,
    WebhookEvent,
    WebhookStatus,
)
from orders.services import (
    webhook_event_process,
    webhook_event_replay,
    webhook_receive,
    webhook_secrets,
)
from orders.services.payments import WEBHOOK_BACKOFF
from orders.services.webhook_handlers import HANDLERS
from orders.tasks import webhooks_retry_due
from tests.catalog.factories import TEST_ACTOR, PartnerFactory, make_publisher
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import (
    charge_refunded_event,
    dispute_created_event,
    session_event,
    signed,
)

pytestmark = pytest.mark.django_db


def receive(event: dict[str, Any]) -> WebhookEvent:
    body, header = signed(event, webhook_secrets()[0])
    stored, _ = webhook_receive(payload=body, signature=header)
    return stored


def apply(event: dict[str, Any]) -> WebhookEvent:
    """Receives a signed event and processes it, as the webhook view and a worker would."""
    stored = receive(event)
    webhook_event_process(event_pk=stored.pk)
    stored.refresh_from_db()
    return stored


def actions_on(subject_type: str, subject_id: Any) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type=subject_type, subject_id=str(subject_id))
        .order_by("id")
        .values_list("action", flat=True)
    )


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks sent with .delay() run at once in this process (Celery's eager mode)."""
    previous = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = previous


@pytest.fixture
def sku(db: None) -> Sku:
    publisher = make_publisher()
    partner = PartnerFactory()
    # 1999 does not divide evenly: the lines show who gets the remainder.
    return sku_for_sale(publisher, price=1999, splits=[(publisher.partner, 6000), (partner, 4000)])


# --- Any arrival order, any duplicates: one end state ---------------------------------------------

STATUS_OF = {
    "completed": OrderStatus.PAID,
    "async_succeeded": OrderStatus.PAID,
    "refunded": OrderStatus.REFUNDED,
    "disputed": OrderStatus.DISPUTED,
    "expired": OrderStatus.CANCELLED,
    "async_failed": OrderStatus.PAYMENT_FAILED,
}
MONEY_TAKEN = {"completed", "async_succeeded", "refunded", "disputed"}


def events_for(order: Order) -> dict[str, dict[str, Any]]:
    """One event of each kind for `order`, carrying the PaymentIntent the local gateway made for
    it, so a charge event arriving before the checkout's can ask whose payment it is."""
    events = {
        "completed": session_event("checkout.session.completed", order),
        "async_succeeded": session_event("checkout.session.async_payment_succeeded", order),
        "expired": session_event(
            "checkout.session.expired", order, payment_status="unpaid", status="expired"
        ),
        "async_failed": session_event(
            "checkout.session.async_payment_failed", order, payment_status="unpaid"
        ),
        "refunded": charge_refunded_event(
            order, amount_refunded=order.amount, refund_ids=[("re_full_" + order.id.hex, 1999)]
        ),
        "disputed": dispute_created_event(order),
    }
    for event in events.values():
        event["data"]["object"]["payment_intent"] = intent_id_of(str(order.id))
    return events


def end_state(order: Order) -> dict[str, Any]:
    order.refresh_from_db()
    postings = FinancePosting.objects.filter(order=order)
    return {
        "status": order.status,
        "delivery": order.delivery_state,
        "paid": order.paid_at is not None,
        "refunded": order.amount_refunded,
        "sale_postings": [p.amount for p in postings if p.kind == PostingKind.SALE],
        "refund_total": sum(p.amount for p in postings if p.kind == PostingKind.REFUND),
        "royalties": sorted(
            RoyaltyLine.objects.filter(order=order).values_list(
                "partner__slug", "basis_points", "amount", "receives_remainder"
            )
        ),
    }


def run_arrival(buyer: Any, sku: Sku, arrival: list[str], duplicates: list[int]) -> Order:
    order = order_checked_out(buyer, sku, key=f"k-{Order.objects.count()}")
    events = events_for(order)
    for name in arrival:
        apply(events[name])
    for index in duplicates:
        # Stripe delivers it again (stored once: a no-op) and a worker runs it twice.
        again = apply(events[arrival[index % len(arrival)]])
        assert webhook_event_process(event_pk=again.pk) == again.status
    unfinished = WebhookEvent.objects.filter(order=order).exclude(
        status__in=[WebhookStatus.PROCESSED, WebhookStatus.IGNORED]
    )
    assert not unfinished.exists(), list(unfinished.values("type", "status", "last_error"))
    assert WebhookEvent.objects.filter(order=order).count() == len(arrival)
    return order


def expected_state(kinds: set[str], first: dict[str, Any]) -> None:
    assert first["status"] == max((STATUS_OF[kind] for kind in kinds), key=OrderStatus.rank), kinds
    money = bool(kinds & MONEY_TAKEN)
    assert first["paid"] is money
    assert first["sale_postings"] == ([1999] if money else [])
    assert first["refund_total"] == (-1999 if "refunded" in kinds else 0)
    if money:
        assert sum(line[2] for line in first["royalties"]) == 1999
        assert [line[1:] for line in first["royalties"]] in (
            [(6000, 1200, True), (4000, 799, False)],
            [(4000, 799, False), (6000, 1200, True)],
        )
    else:
        assert first["royalties"] == []


@pytest.mark.parametrize(
    "kinds",
    [
        ("completed", "refunded", "disputed"),
        ("completed", "async_succeeded", "expired", "async_failed"),
        ("refunded", "expired", "async_failed"),
        ("disputed", "async_failed", "completed"),
        ("expired", "async_failed"),
    ],
)
def test_every_arrival_order_ends_in_the_same_state(buyer, sku, kinds):
    states = []
    for arrival in itertools.permutations(kinds):
        order = run_arrival(buyer, sku, list(arrival), duplicates=[0])
        states.append((arrival, end_state(order)))
    first = states[0][1]
    expected_state(set(kinds), first)
    for arrival, state in states[1:]:
        assert state == first, arrival


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    arrival=st.permutations(list(STATUS_OF)),
    duplicates=st.lists(st.integers(0, 5), max_size=4),
)
def test_all_six_events_in_any_order_with_duplicates_end_refunded(buyer, sku, arrival, duplicates):
    order = run_arrival(buyer, sku, arrival, duplicates)
    state = end_state(order)
    expected_state(set(arrival), state)
    assert state["status"] == OrderStatus.REFUNDED
    assert state["delivery"] == OrderStatus.REFUNDED


# --- Delayed payments ---------------------------------------------------------------------------


def test_an_unpaid_completed_checkout_waits_for_the_async_payment(buyer, sku):
    order = order_checked_out(buyer, sku)
    completed = apply(session_event("checkout.session.completed", order, payment_status="unpaid"))

    assert completed.status == WebhookStatus.PROCESSED
    assert "still processing" in completed.outcome
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING
    assert order.paid_at is None
    assert order.payment_intent_id.startswith("pi_")
    assert not RoyaltyLine.objects.filter(order=order).exists()
    assert not FinancePosting.objects.filter(order=order).exists()
    assert actions_on("order", order.id)[-1] == "order.payment_processing"

    apply(session_event("checkout.session.async_payment_succeeded", order))
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.delivery_state == "finance_pending"
    assert FinancePosting.objects.filter(order=order, kind=PostingKind.SALE).count() == 1
    assert actions_on("order", order.id)[-1] == "order.paid"


def test_an_async_payment_failure_fails_the_order(buyer, sku):
    order = order_checked_out(buyer, sku)
    apply(session_event("checkout.session.completed", order, payment_status="unpaid"))
    apply(session_event("checkout.session.async_payment_failed", order, payment_status="unpaid"))
    order.refresh_from_db()
    assert order.status == OrderStatus.PAYMENT_FAILED
    assert order.paid_at is None


# --- Failures: dead-letter, backoff, replay ------------------------------------------------------


def test_an_amount_mismatch_is_dead_lettered_at_once_and_the_order_untouched(buyer, sku):
    order = order_checked_out(buyer, sku)
    before = actions_on("order", order.id)

    event = apply(session_event("checkout.session.completed", order, amount=1))

    assert event.status == WebhookStatus.DEAD
    assert event.attempts == 1
    assert event.next_attempt_at is None
    assert "1 USD" in event.last_error
    assert "1999 USD" in event.last_error
    assert list(event.attempt_log.values_list("succeeded", flat=True)) == [False]
    dead = AuditEvent.objects.get(
        subject_type="webhookevent", subject_id=str(event.pk), action="webhook.dead_lettered"
    )
    assert dead.data["event"] == event.event_id
    assert dead.data["attempts"] == 1
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING
    assert order.paid_at is None
    assert order.payment_intent_id == ""
    assert not RoyaltyLine.objects.filter(order=order).exists()
    assert not FinancePosting.objects.filter(order=order).exists()
    assert actions_on("order", order.id) == before


def test_a_partial_dispute_arriving_first_books_the_whole_payment(buyer, sku):
    order = order_checked_out(buyer, sku)
    dispute = dispute_created_event(order)
    dispute["data"]["object"].update(amount=500, payment_intent=intent_id_of(str(order.id)))

    assert apply(dispute).status == WebhookStatus.PROCESSED

    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED
    assert order.delivery_hold == "disputed"
    assert FinancePosting.objects.get(order=order, kind=PostingKind.SALE).amount == 1999


def unknown_payment_refund(order: Order) -> dict[str, Any]:
    """A refund whose PaymentIntent the order does not know yet and the local gateway cannot
    place (it is not one the local gateway made)."""
    return charge_refunded_event(order, amount_refunded=1999, refund_ids=[("re_x", 1999)])


def test_an_event_for_an_unknown_payment_is_retried_with_backoff_until_its_order_is_known(
    buyer, sku, eager_tasks
):
    order = order_checked_out(buyer, sku)
    before = timezone.now()
    refund = apply(unknown_payment_refund(order))

    assert refund.status == WebhookStatus.FAILED
    assert refund.attempts == 1
    assert "no order is known" in refund.last_error
    assert (
        before + WEBHOOK_BACKOFF.delay(1)
        <= refund.next_attempt_at
        <= timezone.now() + WEBHOOK_BACKOFF.delay(1)
    )
    assert WEBHOOK_BACKOFF.delay(1) == timedelta(seconds=30)
    assert WEBHOOK_BACKOFF.delay(2) == timedelta(seconds=60)
    # The retry is not due yet: the sweep leaves it.
    assert webhooks_retry_due() == 0
    refund.refresh_from_db()
    assert refund.attempts == 1

    apply(session_event("checkout.session.completed", order))
    WebhookEvent.objects.filter(pk=refund.pk).update(next_attempt_at=timezone.now())
    assert webhooks_retry_due() == 1

    refund.refresh_from_db()
    assert refund.status == WebhookStatus.PROCESSED
    assert refund.attempts == 2
    assert refund.last_error == ""
    assert list(refund.attempt_log.values_list("number", "succeeded")) == [(1, False), (2, True)]
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    assert order.amount_refunded == 1999


def test_an_event_is_dead_lettered_after_the_maximum_attempts(buyer, sku, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    order = order_checked_out(buyer, sku)
    event = receive(unknown_payment_refund(order))

    statuses = [webhook_event_process(event_pk=event.pk) for _ in range(4)]

    assert statuses == [
        WebhookStatus.FAILED,
        WebhookStatus.FAILED,
        WebhookStatus.DEAD,
        WebhookStatus.DEAD,  # a dead event is left alone by a plain run
    ]
    event.refresh_from_db()
    assert event.attempts == 3
    assert event.next_attempt_at is None
    assert WebhookAttempt.objects.filter(event=event).count() == 3
    assert actions_on("webhookevent", event.pk) == ["webhook.dead_lettered"]
    # Dead events are not swept by beat.
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(1))
    assert webhooks_retry_due() == 0


def test_replay_processes_a_dead_event_and_audits_it(buyer, sku, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    order = order_checked_out(buyer, sku)
    event = apply(unknown_payment_refund(order))
    assert event.status == WebhookStatus.DEAD

    # Replaying before anything changed fails again, and says so.
    assert webhook_event_replay(event_pk=event.pk, actor=TEST_ACTOR) == WebhookStatus.DEAD

    apply(session_event("checkout.session.completed", order))
    assert webhook_event_replay(event_pk=event.pk, actor=TEST_ACTOR) == WebhookStatus.PROCESSED

    event.refresh_from_db()
    assert event.status == WebhookStatus.PROCESSED
    assert event.attempts == 3
    assert actions_on("webhookevent", event.pk) == [
        "webhook.dead_lettered",
        "webhook.replayed",
        "webhook.dead_lettered",
        "webhook.replayed",
    ]
    replayed = AuditEvent.objects.filter(
        subject_type="webhookevent", subject_id=str(event.pk), action="webhook.replayed"
    ).last()
    assert replayed.data == {"event": event.event_id, "event_type": event.type, "was": "dead"}
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    # A processed event is not replayed (nor audited) again.
    assert webhook_event_replay(event_pk=event.pk, actor=TEST_ACTOR) == WebhookStatus.PROCESSED
    assert actions_on("webhookevent", event.pk).count("webhook.replayed") == 2


def test_the_sweep_takes_due_failures_and_stranded_events_only(buyer, sku, settings, eager_tasks):
    settings.WEBHOOK_STRANDED_SECONDS = 120
    now = timezone.now()
    orders = [order_checked_out(buyer, sku, key=f"sweep-{i}") for i in range(5)]
    # A failure whose backoff has passed, and one whose backoff has not.
    due = apply(unknown_payment_refund(orders[0]))
    apply(session_event("checkout.session.completed", orders[0]))
    WebhookEvent.objects.filter(pk=due.pk).update(next_attempt_at=now - timedelta(seconds=1))
    waiting = apply(unknown_payment_refund(orders[1]))
    apply(session_event("checkout.session.completed", orders[1]))
    # Stored, but its enqueue was lost: older than the threshold, and one just received.
    stranded = receive(session_event("checkout.session.completed", orders[2]))
    WebhookEvent.objects.filter(pk=stranded.pk).update(received_at=now - timedelta(seconds=121))
    fresh = receive(session_event("checkout.session.completed", orders[3]))
    WebhookEvent.objects.filter(pk=fresh.pk).update(received_at=now - timedelta(seconds=100))
    # Long processed.
    done = apply(session_event("checkout.session.completed", orders[4]))
    WebhookEvent.objects.filter(pk=done.pk).update(received_at=now - timedelta(days=1))

    assert webhooks_retry_due() == 2

    status = dict(WebhookEvent.objects.values_list("pk", "status"))
    assert status[due.pk] == WebhookStatus.PROCESSED
    assert status[stranded.pk] == WebhookStatus.PROCESSED
    assert status[waiting.pk] == WebhookStatus.FAILED
    assert status[fresh.pk] == WebhookStatus.RECEIVED
    assert status[done.pk] == WebhookStatus.PROCESSED
    assert WebhookEvent.objects.get(pk=done.pk).attempts == 1
    assert Order.objects.get(pk=orders[2].pk).status == OrderStatus.PAID
    assert Order.objects.get(pk=orders[3].pk).status == OrderStatus.PENDING


# --- A bug meets an event: dead-lettered at once, with its traceback ----------------------------


def refund_with_a_plain_list_of_refunds(order: Order) -> dict[str, Any]:
    """A refund arriving first whose `refunds` is a bare list rather than Stripe's list object:
    the handler books the payment, then trips over the refunds."""
    event = events_for(order)["refunded"]
    event["data"]["object"]["refunds"] = [{"id": "re_bare", "amount": 1999}]
    return event


def session_with_an_amount_object(order: Order) -> dict[str, Any]:
    event = session_event("checkout.session.completed", order)
    event["data"]["object"]["amount_total"] = {"value": 1999, "currency": "usd"}
    return event


def session_in_a_list(order: Order) -> dict[str, Any]:
    """`data.object` a list: the order cannot even be looked for (before any transaction)."""
    event = session_event("checkout.session.completed", order)
    event["data"]["object"] = [event["data"]["object"]]
    return event


@pytest.mark.parametrize(
    ("make_event", "error"),
    [
        (refund_with_a_plain_list_of_refunds, "AttributeError: 'list' object has no attribute"),
        (session_with_an_amount_object, "TypeError: int() argument must be"),
        (session_in_a_list, "AttributeError: 'list' object has no attribute 'get'"),
    ],
    ids=["refunds-a-list", "amount-an-object", "object-a-list"],
)
def test_an_event_a_handler_cannot_handle_is_dead_lettered_at_once_with_its_traceback(
    buyer, sku, caplog, make_event, error
):
    order = order_checked_out(buyer, sku)
    before = actions_on("order", order.id)
    event = receive(make_event(order))

    with caplog.at_level("ERROR", logger="orders.services.payments"):
        assert webhook_event_process(event_pk=event.pk) == WebhookStatus.DEAD

    event.refresh_from_db()
    assert (event.status, event.attempts, event.next_attempt_at) == (WebhookStatus.DEAD, 1, None)
    assert event.last_error.startswith("Traceback (most recent call last):")
    assert 'orders/services/webhook_handlers.py", line' in event.last_error
    assert event.last_error.splitlines()[-1].startswith(error)
    assert list(event.attempt_log.values_list("number", "succeeded", "detail")) == [
        (1, False, event.last_error)
    ]
    dead = AuditEvent.objects.get(
        subject_type="webhookevent", subject_id=str(event.pk), action="webhook.dead_lettered"
    )
    assert dead.data == {
        "event": event.event_id,
        "event_type": event.type,
        "attempts": 1,
        "error": event.last_error.splitlines()[-1],
    }
    [logged] = [r for r in caplog.records if r.name == "orders.services.payments"]
    assert logged.levelname == "ERROR"
    assert logged.exc_info is not None
    assert str(event.pk) in logged.getMessage()
    # Whatever the handler did before it failed was rolled back with it.
    order.refresh_from_db()
    assert (order.status, order.paid_at, order.amount_refunded) == (OrderStatus.PENDING, None, 0)
    assert not RoyaltyLine.objects.filter(order=order).exists()
    assert not FinancePosting.objects.filter(order=order).exists()
    assert actions_on("order", order.id) == before
    # Nothing retries it: neither the sweep nor a plain run.
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(1))
    assert webhooks_retry_due() == 0
    assert webhook_event_process(event_pk=event.pk) == WebhookStatus.DEAD
    event.refresh_from_db()
    assert event.attempts == 1


def test_a_dead_lettered_bug_is_applied_by_a_replay_once_the_handler_copes(buyer, sku, monkeypatch):
    order = order_checked_out(buyer, sku)
    original = HANDLERS["checkout.session.expired"]

    def broken(event: WebhookEvent, order: Order) -> str:
        """A handler with a mistake in it."""
        return {}["missing"]

    monkeypatch.setitem(HANDLERS, "checkout.session.expired", replace(original, apply=broken))
    event = apply(session_event("checkout.session.expired", order, payment_status="unpaid"))
    assert (event.status, event.attempts) == (WebhookStatus.DEAD, 1)
    assert event.last_error.splitlines()[-1] == "KeyError: 'missing'"

    monkeypatch.setitem(HANDLERS, "checkout.session.expired", original)  # the fix is deployed
    assert webhook_event_replay(event_pk=event.pk, actor=TEST_ACTOR) == WebhookStatus.PROCESSED
    event.refresh_from_db()
    assert (event.status, event.attempts, event.last_error) == (WebhookStatus.PROCESSED, 2, "")
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED


def test_events_the_platform_does_not_act_on_are_recorded_and_ignored(buyer, sku):
    order = order_checked_out(buyer, sku)
    event = session_event("checkout.session.completed", order)
    event["type"] = "payment_intent.created"
    stored = apply(event)
    assert stored.status == WebhookStatus.IGNORED
    assert "does not act" in stored.outcome
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING


# --- Hand-over to licensing ---------------------------------------------------------------------


# Licensing's task, as orders.handover sends it through licensing.handover.
REVOKE_TASK = licensing_tasks.order_revoke.name


def broker_messages(task_name: str) -> list[tuple[list, dict]]:
    """Takes this test process's queue's messages off the broker; answers the (args, kwargs)
    of those for `task_name`."""
    found = []
    with current_app.connection_for_read() as connection:
        queue = SimpleQueue(connection, current_app.conf.task_default_queue)
        try:
            while True:
                try:
                    message = queue.get_nowait()
                except queue.Empty:
                    break
                message.ack()
                if message.headers.get("task") == task_name:
                    args, kwargs, _ = message.decode()
                    found.append((args, kwargs))
        finally:
            queue.close()
    return found


def test_a_refund_is_handed_to_licensing(buyer, sku, django_capture_on_commit_callbacks):
    order = order_checked_out(buyer, sku)
    apply(session_event("checkout.session.completed", order))
    order.refresh_from_db()
    broker_messages(REVOKE_TASK)  # whatever earlier tests left

    with django_capture_on_commit_callbacks(execute=True):
        stored = receive(charge_refunded_event(order, amount_refunded=1999))
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_process(event_pk=stored.pk)

    sent = broker_messages(REVOKE_TASK)
    assert sent == [([str(order.id)], {"reason": "refunded"})]
    # The message runs licensing's revocation (nothing was issued yet to revoke).
    assert licensing_tasks.order_revoke(*sent[0][0], **sent[0][1]) == {
        "licenses": 0,
        "deliveries": 0,
    }

    # A partial refund does not revoke.
    other = order_checked_out(buyer, sku, key="partial")
    apply(session_event("checkout.session.completed", other))
    other.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_process(event_pk=receive(charge_refunded_event(other, amount_refunded=5)).pk)
    assert broker_messages(REVOKE_TASK) == []


def test_a_dispute_is_handed_to_licensing(buyer, sku, django_capture_on_commit_callbacks):
    order = order_checked_out(buyer, sku)
    apply(session_event("checkout.session.completed", order))
    order.refresh_from_db()
    broker_messages(REVOKE_TASK)

    with django_capture_on_commit_callbacks(execute=True):
        webhook_event_process(event_pk=receive(dispute_created_event(order)).pk)

    assert broker_messages(REVOKE_TASK) == [([str(order.id)], {"reason": "disputed"})]
    order.refresh_from_db()
    assert order.delivery_state == "disputed"
