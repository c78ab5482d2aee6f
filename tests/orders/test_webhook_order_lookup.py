"""A charge or dispute that arrives before its checkout: processing asks Stripe (the stand-in in
tests/support/stripe_api.py, through the real client) whose PaymentIntent it is, before it opens
its transaction, so no event or order row is locked while Stripe answers; Stripe unreachable
defers the event, Stripe not knowing the PaymentIntent dead-letters it."""

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from celery import current_app
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from catalog.models import Sku
from orders.models import Order, OrderStatus, WebhookEvent, WebhookStatus
from orders.services import webhook_event_process, webhook_receive
from orders.services.payments import WEBHOOK_BACKOFF
from tests.catalog.factories import make_publisher
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import dispute_created_event, signed
from tests.support.pg import backends_blocked_by, order_row_locked
from tests.support.stripe_api import StripeApiServer
from tests.support.worker import wait_until

INTENTS_PATH = "/v1/payment_intents/"


@pytest.fixture
def sku(db: None) -> Sku:
    return sku_for_sale(make_publisher(), price=1999)


def stripe_order(stripe_api: StripeApiServer, buyer: Any, sku: Sku) -> tuple[Order, str]:
    """An order checked out through the Stripe stand-in and paid there; answers it and its
    PaymentIntent, which only Stripe knows belongs to it (its metadata names the order)."""
    order = order_checked_out(buyer, sku, key=f"key-{uuid.uuid4()}")
    session = stripe_api.pay(order.checkout_session_id)
    return order, session["payment_intent"]


def dispute_first(order: Order, payment_intent: str) -> dict[str, Any]:
    """A dispute of the payment, as Stripe sends it: it names the PaymentIntent, not the order."""
    event = dispute_created_event(order)
    event["data"]["object"]["payment_intent"] = payment_intent
    assert event["data"]["object"]["metadata"] == {}
    return event


def receive(stripe_api: StripeApiServer, event: dict[str, Any]) -> WebhookEvent:
    body, header = signed(event, stripe_api.webhook_secret)
    return webhook_receive(payload=body, signature=header)[0]


def intent_lookups(stripe_api: StripeApiServer) -> list[str]:
    return [r.path for r in stripe_api.requests if r.path.startswith(INTENTS_PATH)]


# --- Asking Stripe -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_dispute_arriving_first_is_placed_by_asking_stripe(stripe_api, buyer, sku):
    order, intent = stripe_order(stripe_api, buyer, sku)
    event = receive(stripe_api, dispute_first(order, intent))

    assert webhook_event_process(event_pk=event.pk) == WebhookStatus.PROCESSED

    assert intent_lookups(stripe_api) == [INTENTS_PATH + intent]
    event.refresh_from_db()
    assert (event.order_id, event.attempts) == (order.pk, 1)
    order.refresh_from_db()
    assert (order.status, order.payment_intent_id) == (OrderStatus.DISPUTED, intent)
    assert order.paid_at is not None


@pytest.mark.django_db
def test_stripe_unreachable_defers_the_event_and_the_retry_places_it(stripe_api, buyer, sku):
    order, intent = stripe_order(stripe_api, buyer, sku)
    event = receive(stripe_api, dispute_first(order, intent))
    stripe_api.down = True
    before = timezone.now()

    assert webhook_event_process(event_pk=event.pk) == WebhookStatus.FAILED

    event.refresh_from_db()
    assert event.attempts == 1
    assert event.last_error.startswith("Stripe answered 503")
    assert before + WEBHOOK_BACKOFF.delay(1) <= event.next_attempt_at
    assert event.next_attempt_at <= timezone.now() + WEBHOOK_BACKOFF.delay(1)
    order.refresh_from_db()
    assert (order.status, order.paid_at) == (OrderStatus.PENDING, None)

    stripe_api.down = False
    assert webhook_event_process(event_pk=event.pk) == WebhookStatus.PROCESSED
    event.refresh_from_db()
    assert list(event.attempt_log.values_list("number", "succeeded")) == [(1, False), (2, True)]
    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED


@pytest.mark.django_db
def test_a_payment_intent_stripe_does_not_know_is_dead_lettered_at_once(stripe_api, buyer, sku):
    order, _ = stripe_order(stripe_api, buyer, sku)
    event = receive(stripe_api, dispute_first(order, "pi_made_elsewhere"))

    assert webhook_event_process(event_pk=event.pk) == WebhookStatus.DEAD

    event.refresh_from_db()
    assert (event.attempts, event.next_attempt_at) == (1, None)
    assert event.last_error.startswith("the provider does not know pi_made_elsewhere: ")
    assert "(404)" in event.last_error
    order.refresh_from_db()
    assert (order.status, order.paid_at) == (OrderStatus.PENDING, None)


@pytest.mark.django_db
def test_stripe_is_not_asked_when_the_platform_can_place_the_payment(stripe_api, buyer, sku):
    order, intent = stripe_order(stripe_api, buyer, sku)
    named = dispute_first(order, intent)
    named["data"]["object"]["metadata"] = {"order_id": str(order.pk)}
    by_metadata = receive(stripe_api, named)
    assert webhook_event_process(event_pk=by_metadata.pk) == WebhookStatus.PROCESSED

    # The order knows its PaymentIntent now (the dispute recorded it).
    other_dispute = receive(stripe_api, dispute_first(order, intent))
    assert webhook_event_process(event_pk=other_dispute.pk) == WebhookStatus.PROCESSED
    # A processed event run again is left alone before anything is asked.
    assert webhook_event_process(event_pk=by_metadata.pk) == WebhookStatus.PROCESSED

    assert intent_lookups(stripe_api) == []
    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED


# --- No lock is held while Stripe answers ------------------------------------------------------


@contextmanager
def intent_lookups_held(stripe_api: StripeApiServer) -> Iterator[tuple[threading.Event, Callable]]:
    """Stripe takes its time over PaymentIntent lookups: each waits, mid-request, until the test
    lets it go. Yields (a lookup has arrived, let them go)."""
    arrived, go = threading.Event(), threading.Event()
    answer = stripe_api.answer

    def held(method: str, target: str, headers: dict[str, str], body: bytes) -> Any:
        if method == "GET" and target.startswith(INTENTS_PATH):
            arrived.set()
            go.wait(timeout=30)
        return answer(method, target, headers, body)

    stripe_api.answer = held
    try:
        yield arrived, go.set
    finally:
        go.set()
        stripe_api.answer = answer


def process_in_the_background(event_pk: int) -> tuple[threading.Thread, dict[str, str]]:
    """A worker's run of the event, on a thread (so with its own database connection)."""
    result: dict[str, str] = {}

    def run() -> None:
        try:
            result["status"] = webhook_event_process(event_pk=event_pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="webhook-worker", daemon=True)
    thread.start()
    return thread, result


def lock_and_touch(event: WebhookEvent, order: Order) -> None:
    """From this test's own connection: takes the event's and the order's row locks without
    waiting, writes to both rows, and rolls it all back."""
    with transaction.atomic():
        WebhookEvent.objects.select_for_update(nowait=True).get(pk=event.pk)
        Order.objects.select_for_update(nowait=True).get(pk=order.pk)
        WebhookEvent.objects.filter(pk=event.pk).update(outcome="touched")
        Order.objects.filter(pk=order.pk).update(hold_reason="touched")
        transaction.set_rollback(True)


def transactions_open_elsewhere() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() "
            "AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
        )
        return cursor.fetchone()[0]


@pytest.fixture
def own_queue_purged() -> Iterator[None]:
    """What the worker run sends after its commit (the ledger entry, the hand-over) is taken
    off this test process's own queue afterwards."""
    yield
    with current_app.connection_for_write() as broker:
        broker.default_channel.queue_purge(current_app.conf.task_default_queue)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_no_row_is_locked_and_no_transaction_open_while_stripe_is_asked(
    stripe_api, buyer, sku, settings, own_queue_purged
):
    settings.STRIPE_TIMEOUT_SECONDS = 20  # Stripe is slow on purpose here, not down
    order, intent = stripe_order(stripe_api, buyer, sku)
    event = receive(stripe_api, dispute_first(order, intent))

    with intent_lookups_held(stripe_api) as (lookup_arrived, let_stripe_answer):
        worker, result = process_in_the_background(event.pk)
        assert lookup_arrived.wait(timeout=10), "the worker never asked Stripe"

        # While the worker waits on Stripe, another connection locks and writes both rows at
        # once, and the worker has no transaction open at all.
        lock_and_touch(event, order)
        assert transactions_open_elsewhere() == 0

        # The same probe does see the worker's locks once it has them: hold the order's row,
        # let Stripe answer, and the worker, holding the event's row, queues on the order's.
        with order_row_locked(order.pk) as holder:
            let_stripe_answer()
            wait_until(lambda: backends_blocked_by(holder), timeout=10)
            with pytest.raises(DatabaseError), transaction.atomic():
                WebhookEvent.objects.select_for_update(nowait=True).get(pk=event.pk)
        worker.join(timeout=20)

    assert not worker.is_alive()
    assert result == {"status": WebhookStatus.PROCESSED}
    assert intent_lookups(stripe_api) == [INTENTS_PATH + intent]
    event.refresh_from_db()
    assert (event.status, event.attempts, event.order_id) == ("processed", 1, order.pk)
    order.refresh_from_db()
    assert (order.status, order.hold_reason.startswith("dispute ")) == ("disputed", True)
    assert order.paid_at > timezone.now() - timedelta(minutes=1)
