"""Previews' Prometheus metrics, defined once for the process."""

from prometheus_client import Counter, Gauge, Histogram

sessions_active = Gauge(
    "marketplace_preview_sessions_active",
    "Preview sessions open (requested, starting or ready), by status; refreshed by the sweep "
    "and whenever a session changes on this process.",
    ["status"],
    multiprocess_mode="mostrecent",
)
queue_depth = Gauge(
    "marketplace_preview_queue_depth",
    "Preview sessions requested and waiting for a worker to start their sandbox.",
    multiprocess_mode="mostrecent",
)
capacity = Gauge(
    "marketplace_preview_capacity",
    "Preview sessions the platform may have open at once (MARKETPLACE_PREVIEW_CAPACITY).",
    multiprocess_mode="mostrecent",
)
start_latency = Histogram(
    "marketplace_preview_start_seconds",
    "From a preview's request to its sandbox answering HTTP (ready), or to its failure.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
)
teardown_lag = Histogram(
    "marketplace_preview_teardown_lag_seconds",
    "From a session's expiry to its sandbox being torn down.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
leaked_found = Counter(
    "marketplace_preview_leaked_sandboxes_total",
    "Sandboxes found running that no open session knows, torn down by the collector.",
    ["provisioner"],
)
sessions_ended = Counter(
    "marketplace_preview_sessions_ended_total",
    "Preview sessions ended, by reason.",
    ["reason"],
)
for _outcome in ("ready", "failed"):
    start_latency.labels(outcome=_outcome)
for _reason in ("expired", "ended", "revoked", "failed", "rotated"):
    sessions_ended.labels(reason=_reason)
for _provisioner in ("local", "kubernetes"):
    leaked_found.labels(provisioner=_provisioner)
