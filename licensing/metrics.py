"""Licensing's Prometheus metrics, defined once for the process."""

from prometheus_client import Counter

delivery_encrypt_failures = Counter(
    "marketplace_delivery_encrypt_failures_total",
    "Delivery packaging attempts that failed (reading, encrypting, storing or signing).",
    ["reason"],
)
licenses_issued = Counter(
    "marketplace_licenses_issued_total",
    "Licenses issued and signed, counted once their transaction commits: an order's first "
    "license (kind=first) or the replacement a reissue makes (kind=reissue).",
    ["kind"],
)
# Both series exist from the start, so a rate over them is never missing a zero.
for _kind in ("first", "reissue"):
    licenses_issued.labels(kind=_kind)
