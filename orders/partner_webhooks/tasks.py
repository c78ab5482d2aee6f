"""Partner webhooks on the workers: thin, by id, safe to run twice (services claim the row)."""

from celery import shared_task

from orders.partner_webhooks import services


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def partner_webhook_deliver(delivery_pk: int, replay: bool = False) -> str:
    # The service records every outcome (no exception for what the endpoint does), and the
    # retry is its schedule on the row, picked up by the sweep below: not a Celery retry.
    return services.delivery_send(delivery_pk=delivery_pk, replay=replay)


@shared_task(soft_time_limit=50, time_limit=60)
def partner_webhooks_retry_due() -> int:
    due = services.deliveries_due()
    for pk in due:
        partner_webhook_deliver.delay(pk)
    return len(due)
