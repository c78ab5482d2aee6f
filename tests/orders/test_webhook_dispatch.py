"""How stored webhook events reach the workers (orders/services/webhooks.py): with Redis as the
cache, a doorbell that queues one dispatch for a burst of events, and the dispatch that hands
each event to its own processing task exactly once; with the local-memory cache, a task per
event."""

from typing import Any

import pytest
from celery import current_app
from django.core.cache import cache
from django.db import connection
from kombu.simple import SimpleQueue

from orders.models import Order, WebhookEvent, WebhookStatus
from orders.services import webhook_events_dispatch, webhook_receive, webhook_secrets
from orders.services.webhooks import DOORBELL_KEY
from orders.tasks import webhook_event_process
from orders.tasks import webhook_events_dispatch as dispatch_task
from tests.marketplace.test_outages import broker_at, closed_port
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import session_event, signed
from tests.support.pg import pg_connect

pytestmark = pytest.mark.django_db

shared_cache = pytest.mark.skipif(
    not hasattr(cache, "client"), reason="needs Redis as the cache (set MARKETPLACE_REDIS_URL)"
)


def broker_messages() -> list[tuple[str, list]]:
    """Takes this test process's queue's messages off the broker: (task name, args) each."""
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
                args, _, _ = message.decode()
                found.append((message.headers["task"], args))
        finally:
            queue.close()
    return found


@pytest.fixture
def order(buyer: Any) -> Order:
    return order_checked_out(buyer, sku_for_sale(price=1500))


def expiry(order: Order) -> tuple[bytes, str]:
    """A signed checkout.session.expired for `order`, with an id of its own."""
    return signed(session_event("checkout.session.expired", order), webhook_secrets()[0])


def stored_events(order: Order, count: int, capture: Any) -> list[int]:
    """Receives `count` events as the endpoint does, running what it leaves for after the
    commit (the hand-over)."""
    pks = []
    for _ in range(count):
        body, header = signed(
            session_event("checkout.session.expired", order), webhook_secrets()[0]
        )
        with capture(execute=True):
            pks.append(webhook_receive(payload=body, signature=header)[0].pk)
    return pks


@shared_cache
def test_a_burst_of_events_queues_one_dispatch_which_hands_each_event_out_once(
    order: Order, django_capture_on_commit_callbacks: Any
):
    broker_messages()  # whatever earlier tests left
    pks = stored_events(order, 3, django_capture_on_commit_callbacks)

    assert broker_messages() == [(dispatch_task.name, [])]
    sent: list[int] = []
    assert webhook_events_dispatch(send=sent.append) == 3
    assert sent == pks
    assert WebhookEvent.objects.undispatched().count() == 0
    # Handed out once: a second dispatch finds nothing, and processing is still to come.
    assert webhook_events_dispatch(send=sent.append) == 0
    assert sent == pks
    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {WebhookStatus.RECEIVED}

    # The dispatch cleared the doorbell: the next event rings it again.
    [later] = stored_events(order, 1, django_capture_on_commit_callbacks)
    assert broker_messages() == [(dispatch_task.name, [])]
    assert webhook_events_dispatch(send=sent.append) == 1
    assert sent == [*pks, later]


@shared_cache
def test_the_dispatch_task_queues_one_processing_task_per_event(
    order: Order, django_capture_on_commit_callbacks: Any
):
    broker_messages()
    pks = stored_events(order, 2, django_capture_on_commit_callbacks)
    broker_messages()

    assert dispatch_task() == 2

    assert broker_messages() == [(webhook_event_process.name, [pk]) for pk in pks]


@shared_cache
def test_an_event_whose_dispatch_cannot_be_queued_leaves_the_doorbell_silent(
    order: Order, django_capture_on_commit_callbacks: Any, settings: Any, caplog: Any
):
    real_broker = settings.CELERY_BROKER_URL
    broker_at(settings, f"redis://127.0.0.1:{closed_port()}/11")
    try:
        stored_events(order, 1, django_capture_on_commit_callbacks)
    finally:
        broker_at(settings, real_broker)
    assert "the broker is unavailable, the sweep will process it" in caplog.text
    # Not left ringing: the next event queues a dispatch as soon as the broker is back.
    assert cache.get(DOORBELL_KEY) is None


def test_without_a_shared_cache_each_event_queues_its_own_task(
    order: Order, django_capture_on_commit_callbacks: Any, settings: Any
):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    broker_messages()
    pks = stored_events(order, 2, django_capture_on_commit_callbacks)

    assert broker_messages() == [(webhook_event_process.name, [pk]) for pk in pks]


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatches_hand_out_disjoint_events(order: Order):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set MARKETPLACE_DATABASE_URL)")
    pks = []
    for _ in range(3):
        body, header = signed(
            session_event("checkout.session.expired", order), webhook_secrets()[0]
        )
        pks.append(webhook_receive(payload=body, signature=header)[0].pk)

    # Another dispatch holds the oldest event's row in its transaction.
    with pg_connect() as other:
        other.execute("SELECT id FROM orders_webhookevent WHERE id = %s FOR UPDATE", (pks[0],))
        sent: list[int] = []
        assert webhook_events_dispatch(send=sent.append) == 2
        assert sent == pks[1:]
        other.rollback()

    assert webhook_events_dispatch(send=sent.append) == 1
    assert sent == [*pks[1:], pks[0]]
