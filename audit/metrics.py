"""The audit exports' Prometheus counters, defined once for the process."""

from prometheus_client import Counter

audit_export_success = Counter(
    "marketplace_audit_export_success_total",
    "Daily audit exports stored (file and digest) and registered.",
)
audit_export_failures = Counter(
    "marketplace_audit_export_failures_total",
    "Daily audit exports that failed (writing, uploading or registering); each is retried.",
)
