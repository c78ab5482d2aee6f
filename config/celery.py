"""The Celery app: `celery -A config worker` and `celery -A config beat`."""

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # Signs the audit chain's head (audit.services.checkpoint_create).
    "audit-checkpoint": {
        "task": "audit.tasks.audit_checkpoint",
        "schedule": 60.0 * int(os.environ.get("MARKETPLACE_AUDIT_CHECKPOINT_MINUTES", "5")),
        "options": {"expires": 55},
    },
    # Exports each UTC day not exported yet (normally yesterday) with its signed digest.
    "audit-export-nightly": {
        "task": "audit.tasks.audit_export_nightly",
        "schedule": crontab(hour=0, minute=30),
    },
    # Pushes what a lost wake-up or a failed task left behind to the Kernel (audit.fanout).
    "audit-push-to-kernel": {
        "task": "audit.tasks.audit_push_to_kernel",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # A manifest whose check found the Kernel unreachable is checked again until it answers.
    "catalog-reverify-manifests": {
        "task": "catalog.tasks.manifests_reverify_unavailable",
        "schedule": crontab(minute="*/10"),
    },
    # Re-reads every active SKU's artifact from storage and compares it with its recorded hash.
    "catalog-check-artifact-integrity": {
        "task": "catalog.tasks.artifacts_check_integrity",
        "schedule": crontab(hour=3, minute=17),
    },
    # Removes stored uploads that no artifact refers to (a form sent back after its upload).
    "catalog-sweep-orphan-artifacts": {
        "task": "catalog.tasks.artifacts_sweep_orphans",
        "schedule": crontab(hour=4, minute=7),
    },
    # Webhook events whose processing failed (backoff elapsed) or whose enqueue was lost.
    "orders-webhooks-retry": {
        "task": "orders.tasks.webhooks_retry_due",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Ledger entries Finance has not acknowledged yet (it was down): sent again.
    "orders-finance-replay": {
        "task": "orders.tasks.finance_replay_due",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    "orders-idempotency-keys-expire": {
        "task": "orders.tasks.idempotency_keys_expire",
        "schedule": crontab(minute=23),
    },
    "orders-metrics-refresh": {
        "task": "orders.tasks.orders_metrics_refresh",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Released orders without a license or delivery, pending deliveries no worker finished:
    # a lost hand-over, a crash, or the end of a maintenance window.
    "licensing-fulfilment-sweep": {
        "task": "licensing.tasks.fulfilment_sweep",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
}
