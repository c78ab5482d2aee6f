"""Orders' work on the workers: processing webhook events, sending ledger entries to Finance,
and the beat sweeps that retry both. Each task loads by id and calls the service it is named
after, which re-reads state under a lock, so running one twice does no harm."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from orders import services
from orders.metrics import finance_pending, orders_by_status
from orders.models import FinancePosting, Order, OrderStatus, PostingStatus, WebhookEvent


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def webhook_event_process(event_pk: int) -> str:
    return services.webhook_event_process(event_pk=event_pk)


@shared_task(soft_time_limit=50, time_limit=60)
def webhook_events_dispatch() -> int:
    """Rung by the webhook endpoint: one processing task for each event stored since the last
    dispatch. Safe to run twice (each event is handed out once); one lost is covered by the
    sweep."""
    return services.webhook_events_dispatch(send=webhook_event_process.delay)


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def finance_posting_send(posting_pk: int) -> str:
    return services.finance_posting_send(posting_pk=posting_pk)


@shared_task(soft_time_limit=50, time_limit=60)
def webhooks_retry_due() -> int:
    now = timezone.now()
    due = list(WebhookEvent.objects.due(now).values_list("pk", flat=True)[:500])
    stranded_before = now - timedelta(seconds=settings.WEBHOOK_STRANDED_SECONDS)
    due += list(WebhookEvent.objects.stranded(stranded_before).values_list("pk", flat=True)[:500])
    for pk in due:
        webhook_event_process.delay(pk)
    return len(due)


@shared_task(soft_time_limit=50, time_limit=60)
def finance_replay_due() -> int:
    due = services.finance_postings_due()
    for pk in due:
        finance_posting_send.delay(pk)
    return len(due)


@shared_task(soft_time_limit=300, time_limit=360)
def idempotency_keys_purge() -> int:
    return services.idempotency_keys_purge()


@shared_task(soft_time_limit=25, time_limit=30)
def orders_metrics_refresh() -> dict[str, int]:
    counts = dict.fromkeys(OrderStatus.values, 0)
    for row in Order.objects.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    for status, count in counts.items():
        orders_by_status.labels(status=status).set(count)
    finance_pending.set(FinancePosting.objects.filter(status=PostingStatus.PENDING).count())
    return counts


# Partner webhooks' tasks, registered with the worker through this module.
from orders.partner_webhooks.tasks import (  # noqa: E402, F401
    partner_webhook_deliver,
    partner_webhooks_retry_due,
)
