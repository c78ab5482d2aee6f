"""Finance: the HTTP client against the stand-in ledger API, the local ledger, the outbox of
postings (degraded mode while Finance is down, replay, rejection) and reconciliation."""

import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import current_app
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEvent
from marketplace.finance import (
    FinanceRejected,
    FinanceUnavailable,
    HttpFinance,
    LocalFinance,
    get_finance,
)
from marketplace.models import LedgerEntry
from orders import tasks
from orders.models import FinancePosting, Order, OrderStatus, PostingKind, PostingStatus
from orders.services import (
    finance_posting_send,
    finance_postings_due,
    finance_replay,
    reconciliation_report,
    webhook_event_process,
    webhook_receive,
    webhook_secrets,
)
from orders.services.finance import FINANCE_BACKOFF
from orders.tasks import finance_replay_due
from tests.catalog.factories import TEST_ACTOR
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import charge_refunded_event, session_event, signed
from tests.support.finance_api import FinanceServer


def ledger_entry(order_id: str | None = None, *, amount: int = 1000, kind: str = "sale") -> dict:
    return {
        "order_id": order_id or str(uuid.uuid4()),
        "kind": kind,
        "amount": amount,
        "currency": "EUR",
        "occurred_at": "2026-01-02T03:04:05+00:00",
        "royalties": [{"partner": "acme", "amount": amount}],
    }


def apply(event: dict) -> None:
    """Receives a signed event and processes it, as the webhook view and the worker would."""
    body, header = signed(event, webhook_secrets()[0])
    stored, _ = webhook_receive(payload=body, signature=header)
    webhook_event_process(event_pk=stored.pk)


def order_actions(order: Order) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="order", subject_id=str(order.id))
        .order_by("id")
        .values_list("action", flat=True)
    )


def sale_posting(order: Order) -> FinancePosting:
    return FinancePosting.objects.get(order=order, kind=PostingKind.SALE)


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks sent with .delay() run at once in this process (Celery's own eager mode), so a
    beat task's body can be followed through to what its tasks do."""
    previous = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = previous


# --- HttpFinance against the stand-in -------------------------------------------------------------


def test_backend_is_http_when_finance_url_is_set(finance_api, settings):
    assert isinstance(get_finance(), HttpFinance)
    settings.FINANCE_URL = ""
    assert isinstance(get_finance(), LocalFinance)


def test_entry_post_sends_token_and_key_and_is_idempotent(finance_api: FinanceServer):
    entry = ledger_entry()
    first = HttpFinance().entry_post(idempotency_key=entry["order_id"], entry=entry)
    again = HttpFinance().entry_post(idempotency_key=entry["order_id"], entry=entry)

    assert first == again
    assert first.startswith("fin_")
    assert [e["id"] for e in finance_api.entries] == [first]
    assert finance_api.entries[0]["body"] == entry
    posts = finance_api.posts
    assert [p.status for p in posts] == [201, 200]
    for post in posts:
        assert post.path == "/v1/ledger/entries"
        assert post.headers["authorization"] == f"Bearer {finance_api.token}"
        assert post.headers["idempotency-key"] == entry["order_id"]


def test_same_key_with_another_amount_is_rejected(finance_api: FinanceServer):
    entry = ledger_entry()
    HttpFinance().entry_post(idempotency_key="k1", entry=entry)
    with pytest.raises(FinanceRejected, match="409"):
        HttpFinance().entry_post(idempotency_key="k1", entry={**entry, "amount": 999})
    assert len(finance_api.entries) == 1


def test_wrong_token_is_rejected(finance_api: FinanceServer, settings):
    settings.FINANCE_TOKEN = "not-the-token"
    with pytest.raises(FinanceRejected, match="401"):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    assert finance_api.entries == []


def test_an_entry_finance_cannot_book_is_rejected(finance_api: FinanceServer):
    with pytest.raises(FinanceRejected, match="422"):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry(amount=-5))


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_unavailability(finance_api: FinanceServer, status):
    finance_api.fail_next(1, status)
    with pytest.raises(FinanceUnavailable, match=str(status)):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    # The next try goes through.
    assert HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())


def test_finance_down_is_unavailability(finance_api: FinanceServer):
    finance_api.down = True
    with pytest.raises(FinanceUnavailable, match="503"):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    with pytest.raises(FinanceUnavailable):
        HttpFinance().entries_for([str(uuid.uuid4())])


def test_refused_connection_is_unavailability(finance_api: FinanceServer):
    finance_api.refuse_connections()
    with pytest.raises(FinanceUnavailable, match="unreachable"):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    finance_api.restore()
    assert HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())


def test_timeout_is_unavailability(finance_api: FinanceServer, settings):
    settings.FINANCE_TIMEOUT_SECONDS = 0.2
    finance_api.delay = 2.0
    started = time.monotonic()
    with pytest.raises(FinanceUnavailable, match="unreachable"):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>502 upstream</body></html>", "text/html"),
        (b'{"status": "ok"}', "application/json"),  # JSON, but no entry id
        (b'["fin_1"]', "application/json"),
    ],
)
def test_an_answer_without_an_entry_id_is_unavailability(
    finance_api: FinanceServer, body, content_type
):
    finance_api.reply_next(200, body, content_type)
    with pytest.raises(FinanceUnavailable):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    assert finance_api.entries == []


def test_a_redirect_is_not_followed(finance_api: FinanceServer):
    finance_api.reply_next(307, b"", "text/plain")
    with pytest.raises(FinanceUnavailable, match="redirected"):
        HttpFinance().entry_post(idempotency_key="k1", entry=ledger_entry())
    assert len(finance_api.requests) == 1


def test_entries_for_asks_in_batches_and_returns_only_the_orders_asked(
    finance_api: FinanceServer,
):
    order_ids = [str(uuid.uuid4()) for _ in range(150)]
    for order_id in order_ids[:3]:
        HttpFinance().entry_post(idempotency_key=order_id, entry=ledger_entry(order_id))
    HttpFinance().entry_post(
        idempotency_key=f"{order_ids[0]}:refund",
        entry=ledger_entry(order_ids[0], amount=-400, kind="refund"),
    )
    other = str(uuid.uuid4())
    HttpFinance().entry_post(idempotency_key=other, entry=ledger_entry(other))

    lines = HttpFinance().entries_for(order_ids)

    assert sorted((line.order_id, line.amount) for line in lines) == sorted(
        [(order_ids[0], 1000), (order_ids[0], -400), (order_ids[1], 1000), (order_ids[2], 1000)]
    )
    gets = [r for r in finance_api.requests if r.method == "GET"]
    assert [len(r.query["order_id"]) for r in gets] == [100, 50]
    assert all(r.headers["authorization"] == f"Bearer {finance_api.token}" for r in gets)


@pytest.mark.parametrize(
    "body",
    [b'{"entries": "none"}', b'{"entries": [{"id": "x"}]}', b"[]"],
)
def test_an_unreadable_entry_list_is_unavailability(finance_api: FinanceServer, body):
    finance_api.reply_next(200, body)
    with pytest.raises(FinanceUnavailable):
        HttpFinance().entries_for([str(uuid.uuid4())])


# --- LocalFinance ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_local_ledger_records_a_key_once_and_refuses_it_for_another_entry():
    entry = ledger_entry()
    first = LocalFinance().entry_post(idempotency_key="k1", entry=entry)
    assert LocalFinance().entry_post(idempotency_key="k1", entry=entry) == first
    with pytest.raises(FinanceRejected, match="k1"):
        LocalFinance().entry_post(idempotency_key="k1", entry={**entry, "amount": 1})

    row = LedgerEntry.objects.get()
    assert (row.reference, row.amount, row.kind, row.currency) == (first, 1000, "sale", "EUR")
    lines = LocalFinance().entries_for([entry["order_id"]])
    assert [(line.reference, line.order_id, line.amount) for line in lines] == [
        (first, entry["order_id"], 1000)
    ]


# --- The outbox: degraded mode, replay, rejection -------------------------------------------------


def test_retry_delay_doubles_and_is_capped():
    assert [FINANCE_BACKOFF.delay(n).total_seconds() for n in (1, 2, 3, 4, 7, 20)] == [
        15,
        30,
        60,
        120,
        900,
        900,
    ]


@pytest.mark.django_db
def test_finance_down_keeps_the_order_paid_and_holds_its_delivery(
    finance_api: FinanceServer, buyer
):
    order = order_checked_out(buyer, sku_for_sale(price=1200))
    apply(session_event("checkout.session.completed", order))
    posting = sale_posting(order)
    assert posting.payload["amount"] == 1200

    finance_api.down = True
    before = timezone.now()
    assert finance_posting_send(posting_pk=posting.pk) == PostingStatus.PENDING
    posting.refresh_from_db()
    assert (posting.status, posting.attempts) == (PostingStatus.PENDING, 1)
    assert "503" in posting.last_error
    assert before + timedelta(seconds=15) <= posting.next_attempt_at
    assert posting.next_attempt_at <= timezone.now() + timedelta(seconds=15)

    # Down at the TCP level: the wait doubles.
    finance_api.down = False
    finance_api.refuse_connections()
    before = timezone.now()
    assert finance_posting_send(posting_pk=posting.pk) == PostingStatus.PENDING
    posting.refresh_from_db()
    assert posting.attempts == 2
    assert "unreachable" in posting.last_error
    assert before + timedelta(seconds=30) <= posting.next_attempt_at

    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.finance_pending is True
    assert order.delivery_state == "finance_pending"
    assert not order.is_deliverable()
    assert "finance.posted" not in order_actions(order)
    # Not due before its backoff has passed.
    assert posting.pk not in finance_postings_due()
    assert posting.pk in finance_postings_due(now=posting.next_attempt_at)


@pytest.mark.django_db
def test_finance_back_the_beat_task_posts_and_releases_the_order(
    finance_api: FinanceServer, buyer, eager_tasks
):
    order = order_checked_out(buyer, sku_for_sale(price=1200))
    apply(session_event("checkout.session.completed", order))
    posting = sale_posting(order)
    finance_api.down = True
    finance_posting_send(posting_pk=posting.pk)

    finance_api.down = False
    # The backoff has not passed: the beat task leaves it alone.
    assert finance_replay_due() == 0
    assert sale_posting(order).status == PostingStatus.PENDING

    FinancePosting.objects.filter(pk=posting.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    assert finance_replay_due() == 1

    posting.refresh_from_db()
    assert posting.status == PostingStatus.POSTED
    assert posting.attempts == 2
    assert posting.last_error == ""
    assert posting.ledger_reference == finance_api.entries[0]["id"]
    assert finance_api.entries[0]["order_id"] == str(order.id)
    assert finance_api.entries[0]["amount"] == 1200
    order.refresh_from_db()
    assert order.finance_pending is False
    assert order.delivery_state == "released"
    posted = AuditEvent.objects.get(
        subject_type="order", subject_id=str(order.id), action="finance.posted"
    )
    assert posted.data["delivery"] == "released"
    assert posted.data["ledger_reference"] == posting.ledger_reference
    # Running it again finds nothing due and sends nothing.
    sent = len(finance_api.posts)
    assert finance_replay_due() == 0
    assert tasks.finance_posting_send(posting.pk) == PostingStatus.POSTED
    assert len(finance_api.posts) == sent


@pytest.mark.django_db
def test_a_posting_acknowledged_twice_is_booked_once(finance_api: FinanceServer, buyer):
    """Finance recorded the entry but its answer was lost: the replay gets the same id."""
    order = order_checked_out(buyer, sku_for_sale(price=700))
    apply(session_event("checkout.session.completed", order))
    posting = sale_posting(order)
    HttpFinance().entry_post(idempotency_key=posting.idempotency_key, entry=posting.payload)

    assert finance_posting_send(posting_pk=posting.pk) == PostingStatus.POSTED
    assert len(finance_api.entries) == 1
    assert sale_posting(order).ledger_reference == finance_api.entries[0]["id"]


@pytest.mark.django_db
def test_a_rejected_posting_is_recorded_and_requeued_on_request(finance_api: FinanceServer, buyer):
    order = order_checked_out(buyer, sku_for_sale(price=900))
    apply(session_event("checkout.session.completed", order))
    posting = sale_posting(order)

    finance_api.fail_next(1, 422)
    assert finance_posting_send(posting_pk=posting.pk) == PostingStatus.REJECTED
    posting.refresh_from_db()
    assert posting.status == PostingStatus.REJECTED
    assert "422" in posting.last_error
    rejected = AuditEvent.objects.get(
        subject_type="order", subject_id=str(order.id), action="finance.posting_rejected"
    )
    assert rejected.data["posting"] == posting.idempotency_key
    # Terminal: not retried by beat, nor by a plain replay.
    assert posting.pk not in finance_postings_due(now=timezone.now() + timedelta(days=1))
    assert finance_replay(actor=TEST_ACTOR) == {}
    with pytest.raises(CommandError, match="--include-rejected"):
        call_command("replay_finance")
    assert sale_posting(order).status == PostingStatus.REJECTED
    order.refresh_from_db()
    assert order.delivery_state == "finance_pending"

    call_command("replay_finance", "--include-rejected")

    posting.refresh_from_db()
    assert posting.status == PostingStatus.POSTED
    order.refresh_from_db()
    assert order.delivery_state == "released"
    actions = order_actions(order)
    assert actions.index("finance.posting_rejected") < actions.index("finance.posting_requeued")
    assert actions[-1] == "finance.posted"


# --- Refunds --------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("arrival", list(itertools.permutations([300, 500, 1000])))
def test_refund_postings_sum_to_the_refunded_total_whatever_the_arrival_order(buyer, arrival):
    """Three partial refunds (300, then 200, then 500 of 1000): each charge.refunded event
    carries the running total; they arrive in any order, one of them twice."""
    order = order_checked_out(buyer, sku_for_sale(price=1000))
    apply(session_event("checkout.session.completed", order))
    order.refresh_from_db()
    refunds = {300: [("re_a", 300)], 500: [("re_a", 300), ("re_b", 200)]}
    refunds[1000] = [*refunds[500], ("re_c", 500)]
    events = {
        total: charge_refunded_event(order, amount_refunded=total, refund_ids=refunds[total])
        for total in arrival
    }
    for total in [*arrival, arrival[0]]:
        apply(events[total])
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    assert order.amount_refunded == 1000
    refund_postings = FinancePosting.objects.filter(order=order, kind=PostingKind.REFUND)
    assert all(p.amount < 0 for p in refund_postings)
    assert sum(p.amount for p in refund_postings) == -1000
    assert sorted(
        LedgerEntry.objects.filter(order_id=order.id, kind="refund").values_list(
            "amount", flat=True
        )
    ) == sorted(p.amount for p in refund_postings)
    assert sum(LedgerEntry.objects.filter(order_id=order.id).values_list("amount", flat=True)) == 0
    assert sorted(order.refunds.values_list("gateway_refund_id", "amount")) == [
        ("re_a", 300),
        ("re_b", 200),
        ("re_c", 500),
    ]
    assert reconciliation_report() == []


# --- Reconciliation -------------------------------------------------------------------------------


def paid_order(buyer, *, price: int) -> Order:
    order = order_checked_out(buyer, sku_for_sale(price=price))
    apply(session_event("checkout.session.completed", order))
    return order


def send_pending() -> None:
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)


@pytest.mark.django_db
def test_reconciliation_lists_differences_and_orders_awaiting_finance(buyer):
    matching = paid_order(buyer, price=1000)
    refunded = paid_order(buyer, price=800)
    refunded.refresh_from_db()
    apply(charge_refunded_event(refunded, amount_refunded=300, refund_ids=[("re_1", 300)]))
    tampered = paid_order(buyer, price=600)
    send_pending()
    LedgerEntry.objects.filter(order_id=tampered.id).update(amount=599)
    rejected = paid_order(buyer, price=400)
    LedgerEntry.objects.create(  # the key was already used for another amount
        idempotency_key=str(rejected.id),
        reference="led_other",
        order_id=rejected.id,
        kind="sale",
        amount=1,
        currency="USD",
        payload={},
    )
    finance_posting_send(posting_pk=sale_posting(rejected).pk)
    other_currency = paid_order(buyer, price=300)
    send_pending()
    LedgerEntry.objects.filter(order_id=other_currency.id).update(currency="EUR")
    awaiting = paid_order(buyer, price=500)  # its posting is not sent
    order_checked_out(buyer, sku_for_sale(price=200))  # never paid: nothing to reconcile

    rows = {row.order_id: row for row in reconciliation_report()}

    assert set(rows) == {
        str(tampered.id),
        str(awaiting.id),
        str(rejected.id),
        str(other_currency.id),
    }
    assert str(matching.id) not in rows
    assert str(refunded.id) not in rows
    row = rows[str(tampered.id)]
    assert (row.problem, row.expected, row.ledger, row.pending_postings) == (
        "amounts differ",
        600,
        599,
        0,
    )
    row = rows[str(awaiting.id)]
    assert (row.problem, row.expected, row.ledger, row.pending_postings) == (
        "awaiting Finance",
        500,
        0,
        1,
    )
    assert row.awaiting_finance
    row = rows[str(rejected.id)]
    assert (row.problem, row.ledger, row.rejected_postings) == (
        "posting rejected by Finance",
        1,
        1,
    )
    assert rows[str(other_currency.id)].problem == "ledger entry in another currency"

    # `since` leaves out older orders.
    Order.objects.filter(pk=tampered.pk).update(created_at=timezone.now() - timedelta(days=3))
    recent = {row.order_id for row in reconciliation_report(since=timezone.now() - timedelta(1))}
    assert str(tampered.id) not in recent
    assert str(awaiting.id) in recent


@pytest.mark.django_db
def test_reconciliation_against_finance_finds_a_changed_entry(finance_api: FinanceServer, buyer):
    first = paid_order(buyer, price=1000)
    second = paid_order(buyer, price=700)
    send_pending()
    assert reconciliation_report() == []

    entry = next(e for e in finance_api.entries if e["order_id"] == str(second.id))
    finance_api.entry_amount_set(entry["id"], 70)

    rows = reconciliation_report()
    assert [(row.order_id, row.expected, row.ledger, row.problem) for row in rows] == [
        (str(second.id), 700, 70, "amounts differ")
    ]
    assert str(first.id) not in {row.order_id for row in rows}


@pytest.mark.django_db
def test_reconciliation_needs_finance(finance_api: FinanceServer, buyer):
    paid_order(buyer, price=1000)
    finance_api.refuse_connections()
    with pytest.raises(FinanceUnavailable):
        reconciliation_report()
