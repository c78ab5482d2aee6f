"""The nightly export: each UTC day not exported yet, in order, with its digest chained onto
the previous day's."""

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import metrics
from audit.exports.files import ExportError, day_bounds, export_write
from audit.exports.stores import export_name, export_store_local, export_store_s3
from audit.models import AuditEvent, AuditExport

logger = logging.getLogger(__name__)


@contextmanager
def _staging() -> Iterator[Path]:
    """Where a day's files are written before they are stored: under the export folder when
    they stay local (so that a hard link puts them in place), else a temporary folder."""
    if settings.AUDIT_BUCKET:
        with tempfile.TemporaryDirectory(prefix="audit-export-") as folder:
            yield Path(folder)
    else:
        root = Path(settings.AUDIT_EXPORT_DIR)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=root) as folder:
            yield Path(folder)


def audit_export_day(*, day: date) -> AuditExport | None:
    """Exports one UTC day, stores the file and its digest, and registers the export. None
    when the day is already registered (a rerun does nothing).

    The row is written only after both objects are stored, so a failure leaves no registered
    half export; the next run finds whatever was stored, accepts it only if it is identical to
    what it would store, and registers it. Raises ExportError when the day cannot be exported
    (a hole before it, a day not over, a conflict with what is stored); storage errors pass
    through for the caller to retry. Every failure is counted."""
    if AuditExport.objects.filter(day=day).exists():
        return None
    try:
        export = _export_day(day)
    except Exception:
        metrics.audit_export_failures.inc()
        raise
    if export is not None:
        metrics.audit_export_success.inc()
    return export


def _export_day(day: date) -> AuditExport | None:
    start, end = day_bounds(day)
    previous = AuditExport.objects.filter(day=day - timedelta(days=1)).first()
    if previous is None and AuditExport.objects.filter(day__lt=day).exists():
        raise ExportError(
            f"{day - timedelta(days=1)} is not exported: export the days in order "
            "(audit_exports_catch_up), so the digest chain has no hole"
        )
    if AuditExport.objects.filter(day__gt=day).exists():
        raise ExportError(f"a later day than {day} is already exported; days export in order")
    with _staging() as folder:
        result = export_write(
            start=start,
            end=end,
            out=folder / export_name(day),
            previous_digest_sha256=previous.digest_sha256 if previous else None,
        )
        if previous is not None:
            previous_end = previous.last_sequence or previous.previous_sequence
            if result.period.previous_sequence != previous_end:
                raise ExportError(
                    f"{day} starts after event {result.period.previous_sequence}, but the export "
                    f"of {previous.day} ends at event {previous_end}: the chain was changed"
                )
        if settings.AUDIT_BUCKET:
            stored = export_store_s3(result, day, settings.AUDIT_BUCKET)
        else:
            stored = export_store_local(
                result, day, Path(settings.AUDIT_EXPORT_DIR) / f"{day:%Y/%m/%d}"
            )
    digest = result.digest
    if stored.digest_bytes != result.digest_bytes:
        digest = json.loads(stored.digest_bytes)
    export = AuditExport(
        day=day,
        period_start=start,
        period_end=end,
        previous_sequence=result.period.previous_sequence,
        first_sequence=result.first_sequence,
        last_sequence=result.last_sequence,
        event_count=result.event_count,
        file_sha256=result.file_sha256,
        file_size=result.file_size,
        digest_sha256=hashlib.sha256(stored.digest_bytes).hexdigest(),
        key_id=digest["key_id"],
        location=stored.location,
        retain_until=stored.retain_until,
    )
    try:
        with transaction.atomic():
            export.save()
    except IntegrityError:
        # Another run registered the same day, from the same stored objects.
        return None
    logger.info(
        "audit export %s: %d event(s) stored at %s", day, export.event_count, export.location
    )
    return export


def audit_exports_catch_up() -> list[AuditExport]:
    """Exports every day not exported yet, in order, up to yesterday (UTC): from the day after
    the last export, or the first event's day, or yesterday when there are no events. Stops at
    the first day that fails, so the digest chain never has a hole."""
    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    last_day = AuditExport.objects.order_by("-day").values_list("day", flat=True).first()
    if last_day is not None:
        day = last_day + timedelta(days=1)
    else:
        first = AuditEvent.objects.order_by("sequence").values_list("occurred_at", flat=True)
        first_at = first.first()
        day = first_at.astimezone(UTC).date() if first_at else yesterday
    exported: list[AuditExport] = []
    while day <= yesterday:
        export = audit_export_day(day=day)
        if export is not None:
            exported.append(export)
        day += timedelta(days=1)
    return exported
