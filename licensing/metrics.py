"""Licensing's Prometheus metrics, defined once for the process."""

from prometheus_client import Counter

delivery_encrypt_failures = Counter(
    "marketplace_delivery_encrypt_failures_total",
    "Delivery packaging attempts that failed (reading, encrypting, storing or signing).",
    ["reason"],
)
licenses_issued = Counter("marketplace_licenses_issued_total", "Licenses issued and signed.")
