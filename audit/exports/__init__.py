"""Exporting the audit chain: a period's events as gzip JSON Lines with a signed digest beside
them, and the nightly export of each UTC day to the audit bucket under object lock (or to local
files without a bucket).

A period [start, end) is a contiguous run of the chain, because an event's occurred_at never
goes back along the sequence (audit.services.audit_append). Its export is deterministic: the same
events give the same bytes (gzip with no name and mtime 0; the digest holds no wall-clock time;
Ed25519 signatures are deterministic). That is what makes a rerun safe: what is already stored
must be byte-identical to what the rerun would store, and anything else is refused as evidence.

Digest chain: each daily digest names the SHA-256 of the previous day's digest file
(`previous_digest_sha256`, null for the very first export). An ad-hoc export
(`export_audit_batch`) names the digest of the registered daily export that ends exactly where
the batch starts, and null otherwise; so a batch starting at a midnight already exported chains
onto the daily exports, and any other batch stands alone.
"""

from audit.exports.daily import audit_export_day, audit_exports_catch_up
from audit.exports.files import (
    ExportConflict,
    ExportError,
    ExportResult,
    Period,
    day_bounds,
    digest_path_of,
    export_write,
    period_resolve,
    previous_digest_for,
)
from audit.exports.stores import export_key, export_name

__all__ = [
    "ExportConflict",
    "ExportError",
    "ExportResult",
    "Period",
    "audit_export_day",
    "audit_exports_catch_up",
    "day_bounds",
    "digest_path_of",
    "export_key",
    "export_name",
    "export_write",
    "period_resolve",
    "previous_digest_for",
]
