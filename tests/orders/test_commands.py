"""The operators' commands: replay_webhooks, replay_finance, reconcile_finance."""

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEvent
from marketplace.models import LedgerEntry
from orders.models import FinancePosting, Order, OrderStatus, PostingStatus, WebhookStatus
from orders.services import (
    finance_posting_send,
    webhook_event_process,
    webhook_receive,
    webhook_secrets,
)
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import charge_refunded_event, session_event, signed
from tests.support.finance_api import FinanceServer

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_failing(*args: str) -> tuple[str, CommandError]:
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue(), raised.value


def receive(event: dict[str, Any]):
    body, header = signed(event, webhook_secrets()[0])
    stored, _ = webhook_receive(payload=body, signature=header)
    return stored


def apply(event: dict[str, Any]):
    stored = receive(event)
    webhook_event_process(event_pk=stored.pk)
    stored.refresh_from_db()
    return stored


@pytest.fixture
def sku():
    return sku_for_sale(price=1000)


def stuck_refund(order: Order):
    """A refund event whose payment no order knows yet: it fails and waits for a retry."""
    event = apply(charge_refunded_event(order, amount_refunded=1000, refund_ids=[("re_1", 1000)]))
    assert event.status == WebhookStatus.FAILED
    return event


# --- replay_webhooks ----------------------------------------------------------------------------


def test_replay_webhooks_takes_failed_and_dead_events_by_default(buyer, sku, settings):
    first, second, third = (order_checked_out(buyer, sku, key=f"k{i}") for i in range(3))
    failed = stuck_refund(first)
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    dead = apply(charge_refunded_event(second, amount_refunded=1000))
    assert dead.status == WebhookStatus.DEAD
    done = apply(session_event("checkout.session.completed", third))
    for order in (first, second):
        apply(session_event("checkout.session.completed", order))

    output = run("replay_webhooks")

    assert f"{failed.event_id} charge.refunded: failed -> processed: order {first.id}" in output
    assert f"{dead.event_id} charge.refunded: dead -> processed: order {second.id}" in output
    assert done.event_id not in output
    assert "Replayed 2 event(s)." in output
    assert Order.objects.get(pk=first.pk).status == OrderStatus.REFUNDED
    assert Order.objects.get(pk=second.pk).status == OrderStatus.REFUNDED
    replayed = AuditEvent.objects.filter(action="webhook.replayed")
    assert sorted(replayed.values_list("subject_id", flat=True)) == sorted(
        [str(failed.pk), str(dead.pk)]
    )
    assert replayed.first().actor_id == "replay_webhooks"


def test_replay_webhooks_dead_only_and_by_event_id(buyer, sku, settings):
    first, second = (order_checked_out(buyer, sku, key=f"k{i}") for i in range(2))
    failed = stuck_refund(first)
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    dead = apply(charge_refunded_event(second, amount_refunded=1000))
    for order in (first, second):
        apply(session_event("checkout.session.completed", order))

    output = run("replay_webhooks", "--dead")
    assert dead.event_id in output
    assert failed.event_id not in output
    failed.refresh_from_db()
    assert failed.status == WebhookStatus.FAILED

    output = run("replay_webhooks", "--event", failed.event_id)
    assert f"{failed.event_id} charge.refunded: failed -> processed" in output
    failed.refresh_from_db()
    assert failed.status == WebhookStatus.PROCESSED


def test_replay_webhooks_fails_when_an_event_still_fails(buyer, sku):
    event = stuck_refund(order_checked_out(buyer, sku))

    output, error = run_failing("replay_webhooks", "--failed")

    assert f"{event.event_id} charge.refunded: failed -> failed: no order is known" in output
    assert "1 of 1 event(s) are still not processed" in str(error)
    assert error.returncode == 1


def test_replay_webhooks_refuses_an_unknown_event_id(buyer, sku):
    event = stuck_refund(order_checked_out(buyer, sku))
    _, error = run_failing("replay_webhooks", "--event", event.event_id, "--event", "evt_nope")
    assert "evt_nope" in str(error)
    event.refresh_from_db()
    assert event.attempts == 1  # nothing was replayed


def test_replay_webhooks_with_nothing_to_do():
    assert run("replay_webhooks").strip() == "No events to replay."


# --- replay_finance -------------------------------------------------------------------------------


def paid(buyer, sku, key: str) -> Order:
    order = order_checked_out(buyer, sku, key=key)
    apply(session_event("checkout.session.completed", order))
    return order


def test_replay_finance_sends_what_waits_and_prints_counts(finance_api: FinanceServer, buyer, sku):
    orders = [paid(buyer, sku, f"k{i}") for i in range(2)]
    # Their backoff has not passed; the command sends them anyway.
    FinancePosting.objects.update(next_attempt_at=timezone.now() + timedelta(hours=1))
    finance_api.down = True

    output, error = run_failing("replay_finance")

    assert output.strip() == "Sent 2 posting(s): 2 pending, 0 posted, 0 rejected"
    assert "2 posting(s) still wait for Finance" in str(error)
    assert error.returncode == 1

    finance_api.down = False
    assert run("replay_finance").strip() == "Sent 2 posting(s): 0 pending, 2 posted, 0 rejected"
    for order in orders:
        order.refresh_from_db()
        assert order.delivery_state == "released"
    assert sorted(e["order_id"] for e in finance_api.entries) == sorted(str(o.id) for o in orders)
    assert run("replay_finance").strip() == "Sent 0 posting(s): 0 pending, 0 posted, 0 rejected"


def test_replay_finance_reports_rejections(finance_api: FinanceServer, buyer, sku):
    paid(buyer, sku, "k1")
    finance_api.fail_next(1, 400)

    output, error = run_failing("replay_finance")

    assert output.strip() == "Sent 1 posting(s): 0 pending, 0 posted, 1 rejected"
    assert "Finance rejected 1 posting(s)" in str(error)
    assert "--include-rejected" in str(error)
    assert run("replay_finance", "--include-rejected").strip() == (
        "Sent 1 posting(s): 0 pending, 1 posted, 0 rejected"
    )


# --- reconcile_finance ----------------------------------------------------------------------------


def send_all() -> None:
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)


def test_reconcile_finance_with_everything_matching(buyer, sku):
    order = paid(buyer, sku, "k1")
    order.refresh_from_db()
    apply(charge_refunded_event(order, amount_refunded=250, refund_ids=[("re_1", 250)]))
    send_all()
    assert run("reconcile_finance").strip() == "0 order(s) differ from the ledger, 0 await Finance."


def test_reconcile_finance_lists_differences_and_exits_1(buyer, sku):
    tampered = paid(buyer, sku, "k1")
    send_all()
    LedgerEntry.objects.filter(order_id=tampered.id).update(amount=900)
    awaiting = paid(buyer, sku, "k2")

    output, error = run_failing("reconcile_finance")

    lines = output.strip().splitlines()
    assert lines[0].split() == [
        "order",
        "status",
        "expected",
        "ledger",
        "pending",
        "rejected",
        "problem",
    ]
    assert lines[1].split() == [
        str(tampered.id),
        "paid",
        "1000",
        "USD",
        "900",
        "0",
        "0",
        *["amounts", "differ"],
    ]
    assert lines[2].split() == [
        str(awaiting.id),
        "paid",
        "1000",
        "USD",
        "0",
        "1",
        "0",
        *["awaiting", "Finance"],
    ]
    assert lines[3] == "1 order(s) differ from the ledger, 1 await Finance."
    assert error.returncode == 1
    assert "1 order(s) differ" in str(error)


def test_reconcile_finance_only_awaiting_finance_exits_0(buyer, sku):
    awaiting = paid(buyer, sku, "k1")
    output = run("reconcile_finance")
    assert str(awaiting.id) in output
    assert "0 order(s) differ from the ledger, 1 await Finance." in output


def test_reconcile_finance_json_and_since(buyer, sku):
    old = paid(buyer, sku, "k1")
    send_all()
    LedgerEntry.objects.filter(order_id=old.id).update(amount=1)
    Order.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    recent = paid(buyer, sku, "k2")
    send_all()
    LedgerEntry.objects.filter(order_id=recent.id).update(amount=2)

    _, error = run_failing("reconcile_finance", "--json")
    assert error.returncode == 1
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile_finance", "--json", stdout=out)
    document = json.loads(out.getvalue())
    assert document["differences"] == 2
    assert document["awaiting_finance"] == 0
    assert {row["order_id"]: row["ledger"] for row in document["orders"]} == {
        str(old.id): 1,
        str(recent.id): 2,
    }
    assert set(document["orders"][0]) >= {"order_id", "status", "expected", "ledger", "problem"}

    since = (timezone.now() - timedelta(days=1)).date().isoformat()
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile_finance", "--json", "--since", since, stdout=out)
    document = json.loads(out.getvalue())
    assert [row["order_id"] for row in document["orders"]] == [str(recent.id)]
    assert document["since"].startswith(since)


def test_reconcile_finance_refuses_a_bad_since():
    _, error = run_failing("reconcile_finance", "--since", "last tuesday")
    assert "last tuesday" in str(error)


def test_reconcile_finance_exits_2_when_finance_cannot_be_asked(
    finance_api: FinanceServer, buyer, sku
):
    paid(buyer, sku, "k1")
    finance_api.down = True
    _, error = run_failing("reconcile_finance")
    assert error.returncode == 2
    assert "Finance could not be asked" in str(error)
