"""Orders' Prometheus metrics, defined once for the process."""

from prometheus_client import Counter, Gauge, Histogram

checkout_latency = Histogram(
    "marketplace_checkout_latency_seconds",
    "Time to answer POST /api/v1/checkout (including the payment provider's call).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
webhook_failures = Counter(
    "marketplace_stripe_webhook_failures_total",
    "Webhook deliveries refused (bad signature, unreadable body) or processing attempts failed.",
    ["reason"],
)
orders_by_status = Gauge(
    "marketplace_orders",
    "Orders by status, refreshed by the orders-metrics beat task.",
    ["status"],
    multiprocess_mode="mostrecent",
)
finance_pending = Gauge(
    "marketplace_finance_postings_pending",
    "Ledger entries waiting for Finance, refreshed with marketplace_orders.",
    multiprocess_mode="mostrecent",
)
