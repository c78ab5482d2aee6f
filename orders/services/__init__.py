"""Writes for orders: checkout, payments (webhooks), Finance, and staff actions."""

from orders.services.checkout import CheckoutAnswer, checkout_create, idempotency_keys_purge
from orders.services.finance import (
    finance_posting_send,
    finance_postings_due,
    finance_replay,
    reconciliation_report,
)
from orders.services.payments import webhook_event_process, webhook_event_replay
from orders.services.support import (
    order_delivery_hold,
    order_delivery_release,
    order_refund,
    order_refundable_amount,
)
from orders.services.webhooks import (
    signature_header,
    webhook_events_dispatch,
    webhook_receive,
    webhook_secrets,
)

__all__ = [
    "CheckoutAnswer",
    "checkout_create",
    "finance_posting_send",
    "finance_postings_due",
    "finance_replay",
    "idempotency_keys_purge",
    "order_delivery_hold",
    "order_delivery_release",
    "order_refund",
    "order_refundable_amount",
    "reconciliation_report",
    "signature_header",
    "webhook_event_process",
    "webhook_event_replay",
    "webhook_events_dispatch",
    "webhook_receive",
    "webhook_secrets",
]
