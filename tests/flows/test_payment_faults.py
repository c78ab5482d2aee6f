"""What Stripe's webhooks and our workers can do wrong, done for real: deliveries duplicated,
reordered and concurrent over HTTP; a worker killed with SIGKILL in the middle of processing;
events arriving while no worker runs. Each ends in the one right state, with every effect
(royalty lines, the sale's ledger entry, the audit events) exactly once."""

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from audit.models import AuditEvent
from audit.sealer import seal_all
from audit.verify import chain_verify
from catalog.models import Sku
from marketplace.models import LedgerEntry
from orders.models import (
    FinancePosting,
    Order,
    OrderStatus,
    PostingStatus,
    RoyaltyLine,
    WebhookAttempt,
    WebhookEvent,
    WebhookStatus,
)
from orders.tasks import webhook_event_process, webhooks_retry_due
from tests.orders.factories import PartnerFactory, order_checked_out, sku_for_sale
from tests.orders.stripe_events import dispute_created_event, envelope, signed
from tests.support.pg import backends_alive, backends_blocked_by, order_row_locked
from tests.support.stripe_api import StripeApiServer
from tests.support.worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

WEBHOOK_PATH = "/marketplace/stripe/webhook"
StartWorker = Callable[..., WorkerProcess]


# --- Helpers -----------------------------------------------------------------------------------


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


def deliver_concurrently(
    base_url: str, deliveries: list[dict[str, Any]], secret: str, *, threads: int = 12
) -> list[requests.Response]:
    """Posts every delivery at once from `threads` threads, each with its own connection."""
    sessions: dict[int, requests.Session] = {}

    def send(index_event: tuple[int, dict[str, Any]]) -> requests.Response:
        index, event = index_event
        http = sessions.setdefault(index % threads, requests.Session())
        return post_event(http, base_url, event, secret)

    # Each thread gets deliveries of one residue class, so no two threads share a session.
    buckets = [
        [(i, event) for i, event in enumerate(deliveries) if i % threads == t]
        for t in range(threads)
    ]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = pool.map(lambda bucket: [send(item) for item in bucket], buckets)
        responses = [response for bucket in results for response in bucket]
    for http in sessions.values():
        http.close()
    return responses


def stripe_order(stripe_api: StripeApiServer, buyer: Any, sku: Sku) -> tuple[Order, dict]:
    """An order checked out through the Stripe stand-in and paid on its page; answers the order
    and its Checkout Session as Stripe now shows it."""
    order = order_checked_out(buyer, sku, key=f"key-{uuid.uuid4()}")
    session = stripe_api.pay(order.checkout_session_id)
    # The in-memory order only lends the events their PaymentIntent (stripe_events reads it
    # from the order); the stored order learns it from the first event that names it.
    order.payment_intent_id = session["payment_intent"]
    return order, session


def session_event(event_type: str, session: dict[str, Any]) -> dict[str, Any]:
    return envelope(event_type, session)


def order_actions(order: Order) -> Counter[str]:
    return Counter(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order.pk)).values_list(
            "action", flat=True
        )
    )


def all_settled() -> bool:
    """Every event processed and every ledger entry acknowledged."""
    return (
        not WebhookEvent.objects.exclude(status=WebhookStatus.PROCESSED).exists()
        and not FinancePosting.objects.exclude(status=PostingStatus.POSTED).exists()
    )


def assert_paid_once(order: Order, *, splits: int) -> None:
    """The effects of one captured payment, each exactly once."""
    assert RoyaltyLine.objects.filter(order=order).count() == splits
    assert sum(RoyaltyLine.objects.filter(order=order).values_list("amount", flat=True)) == (
        order.amount
    )
    assert list(LedgerEntry.objects.filter(order_id=order.pk).values_list("kind", "amount")) == [
        ("sale", order.amount)
    ]
    assert FinancePosting.objects.filter(order=order).count() == 1


@pytest.fixture
def two_workers(celery_worker: WorkerProcess, start_worker: StartWorker) -> list[WorkerProcess]:
    """Two solo workers on the same queue, so events of one order are processed at once."""
    return [celery_worker, start_worker(name="-2")]


@pytest.fixture
def sku(publisher: Any) -> Sku:
    co_author = PartnerFactory(slug="pixel-forge")
    return sku_for_sale(
        publisher, price=1001, splits=[(publisher.partner, 5000), (co_author, 5000)]
    )


# --- Duplicated and reordered deliveries -------------------------------------------------------


def test_fifty_duplicated_reordered_concurrent_deliveries_end_disputed_with_one_sale(
    stripe_api: StripeApiServer,
    live_server: Any,
    two_workers: list[WorkerProcess],
    buyer: Any,
    sku: Sku,
) -> None:
    order, session = stripe_order(stripe_api, buyer, sku)
    # Distinct events (Stripe can send the same fact under several ids: a completed session and
    # an async success both report the payment), each delivered several times under its id.
    distinct = (
        [session_event("checkout.session.completed", session) for _ in range(3)]
        + [session_event("checkout.session.async_payment_succeeded", session) for _ in range(3)]
        + [dispute_created_event(order) for _ in range(2)]
    )
    copies = [5, 7, 6, 8, 6, 7, 5, 6]  # 50 deliveries
    deliveries = [event for event, n in zip(distinct, copies, strict=True) for _ in range(n)]
    assert len(deliveries) == 50
    random.Random(4).shuffle(deliveries)

    responses = deliver_concurrently(live_server.url, deliveries, stripe_api.webhook_secret)

    assert [r.status_code for r in responses] == [200] * 50
    # Exactly one delivery of each id was the one that stored it.
    new = Counter(r.json()["id"] for r in responses if not r.json()["duplicate"])
    assert new == Counter({event["id"]: 1 for event in distinct})
    assert WebhookEvent.objects.count() == len(distinct)

    wait_until(all_settled, timeout=60, worker=two_workers[0])
    order.refresh_from_db()
    assert order.status == OrderStatus.DISPUTED
    assert order.delivery_state == "disputed"
    assert order.payment_intent_id == session["payment_intent"]
    assert_paid_once(order, splits=2)
    assert set(WebhookEvent.objects.values_list("status", "attempts")) == {
        (WebhookStatus.PROCESSED, 1)
    }
    assert WebhookAttempt.objects.filter(succeeded=True).count() == len(distinct)
    actions = order_actions(order)
    assert actions["order.disputed"] == 1
    # Whichever came first booked the payment; the status passed through `paid` at most once.
    assert actions["order.paid"] <= 1
    assert actions["finance.posted"] == 1
    seal_all()
    assert chain_verify().ok


def test_five_orders_interleaved_each_end_in_their_own_state(
    stripe_api: StripeApiServer,
    live_server: Any,
    two_workers: list[WorkerProcess],
    buyer: Any,
    sku: Sku,
) -> None:
    orders, deliveries, disputed = [], [], {1, 3}
    for n in range(5):
        order, session = stripe_order(stripe_api, buyer, sku)
        orders.append(order)
        events = [
            session_event("checkout.session.completed", session),
            session_event("checkout.session.async_payment_succeeded", session),
        ]
        if n in disputed:
            events.append(dispute_created_event(order))
        for i in range(10):  # ten deliveries per order, fifty in all
            deliveries.append(events[i % len(events)])
    random.Random(5).shuffle(deliveries)

    responses = deliver_concurrently(live_server.url, deliveries, stripe_api.webhook_secret)

    assert [r.status_code for r in responses] == [200] * 50
    assert WebhookEvent.objects.count() == 2 * 5 + len(disputed)
    wait_until(all_settled, timeout=60, worker=two_workers[0])
    for n, order in enumerate(orders):
        order.refresh_from_db()
        assert order.status == (OrderStatus.DISPUTED if n in disputed else OrderStatus.PAID), n
        assert order.delivery_state == ("disputed" if n in disputed else "released"), n
        assert_paid_once(order, splits=2)
        actions = order_actions(order)
        assert actions["finance.posted"] == 1
        if n not in disputed:
            assert actions["order.paid"] == 1
    assert LedgerEntry.objects.count() == 5
    seal_all()
    assert chain_verify().ok


# --- A worker killed in the middle of processing -----------------------------------------------


@pytest.mark.postgres
def test_a_worker_killed_while_processing_leaves_the_event_to_be_processed_exactly_once(
    stripe_api: StripeApiServer,
    live_server: Any,
    start_worker: StartWorker,
    settings: Any,
    buyer: Any,
    sku: Sku,
) -> None:
    # An event still `received` this long after it was stored lost its task: the beat sweep
    # sends it again. Short here, so the test need not wait a minute.
    settings.WEBHOOK_STRANDED_SECONDS = 1
    first = start_worker(name="-first")
    order, session = stripe_order(stripe_api, buyer, sku)
    completed = session_event("checkout.session.completed", session)

    with requests.Session() as http, order_row_locked(order.pk) as holder:
        answer = post_event(http, live_server.url, completed, stripe_api.webhook_secret)
        assert answer.status_code == 200, answer.text
        # The worker has taken the event's row and waits for the order's: mid-transaction.
        wait_until(lambda: backends_blocked_by(holder), worker=first)
        stuck = backends_blocked_by(holder)
        assert "orders.tasks.webhook_event_process" in first.log()
        first.kill()
        assert first.process.returncode == -9
    # The lock is released: the dead worker's session gets it, finds no client to answer and
    # ends, rolling its transaction back.
    wait_until(lambda: not backends_alive(stuck), timeout=15)

    event = WebhookEvent.objects.get(event_id=completed["id"])
    assert (event.status, event.attempts) == (WebhookStatus.RECEIVED, 0)
    assert not WebhookAttempt.objects.exists()
    order.refresh_from_db()
    assert (order.status, order.paid_at) == (OrderStatus.PENDING, None)
    assert not RoyaltyLine.objects.exists()
    assert not FinancePosting.objects.exists()

    # A new worker. The killed one's message stays unacknowledged in Redis (until the broker's
    # visibility timeout); the beat sweep finds the stranded event first.
    second = start_worker(name="-second", purge=False)
    time.sleep(max(0.0, event.received_at.timestamp() + 1.2 - time.time()))
    webhooks_retry_due.delay()
    wait_until(all_settled, worker=second)
    # The broker redelivering the killed worker's message later is one more run: a no-op.
    redelivered = webhook_event_process.delay(event.pk)
    wait_until(
        lambda: f"webhook_event_process[{redelivered.id}] succeeded" in second.log(), worker=second
    )

    event.refresh_from_db()
    assert (event.status, event.attempts) == (WebhookStatus.PROCESSED, 1)
    assert list(WebhookAttempt.objects.values_list("number", "succeeded")) == [(1, True)]
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.delivery_state == "released"
    assert_paid_once(order, splits=2)
    actions = order_actions(order)
    assert (actions["order.paid"], actions["finance.posted"]) == (1, 1)
    seal_all()
    assert chain_verify().ok


# --- No worker running -------------------------------------------------------------------------


def _paid_events_for(stripe_api: StripeApiServer, buyer: Any, sku: Sku, n: int) -> tuple:
    orders, events = [], []
    for _ in range(n):
        order, session = stripe_order(stripe_api, buyer, sku)
        orders.append(order)
        events.append(session_event("checkout.session.completed", session))
    return orders, events


def test_events_received_while_no_worker_runs_are_processed_when_one_starts(
    stripe_api: StripeApiServer,
    live_server: Any,
    start_worker: StartWorker,
    buyer: Any,
    sku: Sku,
) -> None:
    orders, events = _paid_events_for(stripe_api, buyer, sku, 5)
    responses = deliver_concurrently(
        live_server.url, events + events[:2], stripe_api.webhook_secret
    )

    assert [r.status_code for r in responses] == [200] * 7
    assert WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).count() == 5
    assert all(o.status == OrderStatus.PENDING for o in Order.objects.all())

    worker = start_worker(purge=False)  # the tasks waited in the broker
    wait_until(all_settled, worker=worker)
    for order in orders:
        order.refresh_from_db()
        assert (order.status, order.delivery_state) == (OrderStatus.PAID, "released")
        assert_paid_once(order, splits=2)
    assert set(WebhookEvent.objects.values_list("attempts", flat=True)) == {1}


def test_events_whose_tasks_the_broker_lost_are_recovered_by_the_sweep(
    stripe_api: StripeApiServer,
    live_server: Any,
    start_worker: StartWorker,
    settings: Any,
    buyer: Any,
    sku: Sku,
) -> None:
    settings.WEBHOOK_STRANDED_SECONDS = 1
    orders, events = _paid_events_for(stripe_api, buyer, sku, 3)
    responses = deliver_concurrently(live_server.url, events, stripe_api.webhook_secret)
    assert [r.status_code for r in responses] == [200] * 3

    # Started with --purge: the queued tasks are gone, as after losing Redis's data.
    worker = start_worker(purge=True)
    time.sleep(1.5)
    assert WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).count() == 3

    webhooks_retry_due.delay()
    wait_until(all_settled, worker=worker)
    for order in orders:
        order.refresh_from_db()
        assert order.status == OrderStatus.PAID
        assert_paid_once(order, splits=2)
