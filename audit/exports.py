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

import base64
import gzip
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import metrics
from audit.chain import (
    DIGEST_TYPE,
    DIGEST_VERSION,
    GENESIS_HASH,
    STORED_COLUMNS,
    ChainCheck,
    digest_encode,
    digest_message,
    digest_sign,
    format_time,
    signature_problem,
    stored_record,
)
from audit.models import AuditEvent, AuditExport, ChainHead
from audit.signing_keys import signing_key_active
from marketplace.keystore import public_keys_from_store, signer_for
from marketplace.models import SigningKeyPurpose

logger = logging.getLogger(__name__)

CHUNK_SIZE = 5000
# zlib level 6: within a few percent of level 9's size at about a third of its time.
GZIP_LEVEL = 6
KEY_PREFIX = "audit"
DIGEST_SUFFIX = ".digest.json"
_READ_BYTES = 1024 * 1024


class ExportError(Exception):
    """An export cannot be made as asked; the message says why and what to do."""


class ExportConflict(ExportError):
    """What is already stored under an export's name is not what the export holds: the chain
    or the stored export was changed. Never overwritten; an operator must look at it."""


# --- Periods -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """[start, end) as a run of the chain: the events after `previous_sequence` up to and
    including `last_sequence` (equal to previous_sequence when the period is empty)."""

    start: datetime
    end: datetime
    previous_sequence: int
    previous_hash: str
    last_sequence: int

    @property
    def event_count(self) -> int:
        return self.last_sequence - self.previous_sequence


def period_resolve(*, start: datetime, end: datetime) -> Period:
    """The run of the chain that [start, end) covers. Refuses an end in the future: the
    period is not over, and events could still be appended to it."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ExportError("export periods are timezone-aware")
    if start >= end:
        raise ExportError(
            f"the period starts ({format_time(start)}) at or after its end ({format_time(end)})"
        )
    if end > timezone.now():
        raise ExportError(
            f"the period ends at {format_time(end)}, which is in the future: events may still "
            "be appended to it; export a period that is over"
        )
    # Appends lock the head until they commit, and date their event after taking the lock.
    # Taking the lock once therefore waits for any append still in flight, and every later one
    # is dated after now >= end: what is committed before `end` no longer changes.
    with transaction.atomic():
        ChainHead.objects.select_for_update().filter(id=1).first()
    before = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash")
    previous = before.filter(occurred_at__lt=start).first() or (0, GENESIS_HASH)
    last = before.filter(occurred_at__lt=end).values_list("sequence", flat=True).first() or 0
    return Period(
        start=start,
        end=end,
        previous_sequence=previous[0],
        previous_hash=previous[1],
        last_sequence=max(last, previous[0]),
    )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


# --- Writing one export ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path
    digest_path: Path
    period: Period
    digest: dict[str, Any]
    digest_bytes: bytes
    file_sha256: str
    file_size: int

    @property
    def digest_sha256(self) -> str:
        return hashlib.sha256(self.digest_bytes).hexdigest()

    @property
    def event_count(self) -> int:
        return int(self.digest["event_count"])

    @property
    def first_sequence(self) -> int | None:
        return self.digest["first_sequence"]

    @property
    def last_sequence(self) -> int | None:
        return self.digest["last_sequence"]


def digest_path_of(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


class _HashingWriter:
    """Passes gzip's output to the file, hashing and counting it on the way."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _line(record_bytes: bytes, record_hash_hex: str) -> bytes:
    # audit.chain.export_line, with the record already encoded: it is encoded once, both to
    # check its hash and to write it.
    return b'{"hash":"' + record_hash_hex.encode() + b'","record":' + record_bytes + b"}\n"


def _write_events(period: Period, writer: _HashingWriter) -> ChainCheck:
    """Streams the period's events into gzip, checking each one's hash and link as it goes:
    a digest is never signed over a chain that does not hold."""
    check = ChainCheck(after_sequence=period.previous_sequence, after_hash=period.previous_hash)
    rows = (
        AuditEvent.objects.filter(
            sequence__gt=period.previous_sequence, sequence__lte=period.last_sequence
        )
        .order_by("sequence")
        .values_list(*STORED_COLUMNS)
    )
    sha256, add = hashlib.sha256, check.add
    batch: list[bytes] = []
    # No file name and mtime 0 in the gzip header: the same events always give the same bytes.
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=writer, compresslevel=GZIP_LEVEL, mtime=0
    ) as compressed:
        for row in rows.iterator(chunk_size=CHUNK_SIZE):
            sequence, prev_hash, stored, body = stored_record(row)
            add(sequence, prev_hash, stored, sha256(body).hexdigest())
            if check.failure is not None:
                break
            batch.append(_line(body, stored))
            if len(batch) >= 1000:
                compressed.write(b"".join(batch))
                batch.clear()
        compressed.write(b"".join(batch))
    check.finish(last_sequence=period.last_sequence)
    if check.failure is not None:
        raise ExportError(
            f"the audit chain in the database does not hold, so no digest is signed over it: "
            f"{check.failure}. Run `manage.py audit_verify`."
        )
    return check


def _exclusive_temp(folder: Path, name: str) -> tuple[Path, Any]:
    path = folder / f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return path, os.fdopen(fd, "wb", buffering=_READ_BYTES)


def export_write(
    *, start: datetime, end: datetime, out: Path, previous_digest_sha256: str | None
) -> ExportResult:
    """Writes [start, end)'s events to `out` (gzip JSON Lines) and its digest, signed with the
    audit key, to `out`.digest.json. An empty period gives an empty gzip file and its digest.

    Both are written to temporary files in out's folder and put in place with a hard link,
    which fails rather than replace a file: a crash leaves no half file under either name,
    and an existing file is never overwritten (ExportError)."""
    period = period_resolve(start=start, end=end)
    folder, digest_path = out.parent, digest_path_of(out)
    if not folder.is_dir():
        raise ExportError(f"the folder {folder} does not exist")
    for target in (out, digest_path):
        if target.exists():
            raise ExportError(f"{target} already exists; exports are never overwritten")
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.AUDIT))
    temporary: list[Path] = []
    try:
        file_tmp, handle = _exclusive_temp(folder, out.name)
        temporary.append(file_tmp)
        # In a transaction, so that PostgreSQL streams the rows through a cursor that is not
        # held (materialised) past the statement.
        with handle, transaction.atomic():
            writer = _HashingWriter(handle)
            check = _write_events(period, writer)
            handle.flush()
            os.fsync(handle.fileno())
        digest = digest_sign(
            {
                "version": DIGEST_VERSION,
                "type": DIGEST_TYPE,
                "period_start": format_time(period.start),
                "period_end": format_time(period.end),
                "file": out.name,
                "file_sha256": writer.sha256.hexdigest(),
                "event_count": check.count,
                "previous_sequence": period.previous_sequence,
                "previous_hash": period.previous_hash,
                "first_sequence": check.first_sequence,
                "first_hash": check.first_hash,
                "last_sequence": check.last_sequence,
                "last_hash": check.last_hash,
                "previous_digest_sha256": previous_digest_sha256,
                "key_id": signer.kid,
            },
            signer.sign,
        )
        digest_bytes = digest_encode(digest)
        digest_tmp, handle = _exclusive_temp(folder, digest_path.name)
        temporary.append(digest_tmp)
        with handle:
            handle.write(digest_bytes)
            handle.flush()
            os.fsync(handle.fileno())
        for source, target in ((file_tmp, out), (digest_tmp, digest_path)):
            source.chmod(0o644)
            try:
                os.link(source, target)
            except FileExistsError:
                raise ExportError(
                    f"{target} appeared while the export was written; it was left as it is"
                ) from None
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return ExportResult(
        path=out,
        digest_path=digest_path,
        period=period,
        digest=digest,
        digest_bytes=digest_bytes,
        file_sha256=writer.sha256.hexdigest(),
        file_size=writer.size,
    )


def previous_digest_for(start: datetime) -> str | None:
    """An ad-hoc export's predecessor: the registered daily export ending where it starts."""
    previous = AuditExport.objects.filter(period_end=start).values_list("digest_sha256").first()
    return previous[0] if previous else None


# --- Storing a daily export --------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    location: str
    retain_until: datetime | None
    digest_bytes: bytes  # what is stored: ours, or an equivalent one found there (see below)


def export_name(day: date) -> str:
    return f"audit-{day:%Y-%m-%d}.jsonl.gz"


def export_key(day: date) -> str:
    return f"{KEY_PREFIX}/{day:%Y/%m/%d}/{export_name(day)}"


def _same_digest(found: bytes, result: ExportResult) -> bool:
    """A stored digest stands for this export when it is byte-identical, or when it signs the
    same fields with another audit key that still verifies (the key rotated between the
    upload and the rerun that registers it)."""
    if found == result.digest_bytes:
        return True
    try:
        digest = json.loads(found)
    except ValueError:
        return False
    if not isinstance(digest, dict):
        return False
    unsigned = {"key_id", "signature"}
    ours = {key: value for key, value in result.digest.items() if key not in unsigned}
    theirs = {key: value for key, value in digest.items() if key not in unsigned}
    if ours != theirs or not isinstance(digest.get("key_id"), str):
        return False
    if not isinstance(digest.get("signature"), str) or found != digest_encode(digest):
        return False
    keys = public_keys_from_store(purpose=SigningKeyPurpose.AUDIT)
    return (
        signature_problem(digest_message(digest), digest["signature"], digest["key_id"], keys)
        is None
    )


def _conflict(where: str) -> ExportConflict:
    return ExportConflict(
        f"{where} already exists and differs from the export of the same day: the audit chain "
        "or the stored export was changed. Nothing was overwritten or registered; compare them "
        "with `manage.py audit_verify --export`."
    )


def _sha256_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _store_local(result: ExportResult, day: date, folder: Path) -> Stored:
    """Puts the staged files in place, read-only, never replacing one; a file already there
    (from a run that stopped before registering) is accepted only if it is the same."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / result.path.name
    digest_target = folder / result.digest_path.name
    stored_digest = result.digest_bytes
    for source, destination in ((result.path, target), (result.digest_path, digest_target)):
        source.chmod(0o444)
        try:
            os.link(source, destination)
            continue
        except FileExistsError:
            pass
        if destination == target:
            with destination.open("rb") as handle:
                found = hashlib.file_digest(handle, "sha256").hexdigest()
            if found != result.file_sha256:
                raise _conflict(str(destination))
        else:
            stored_digest = destination.read_bytes()
            if not _same_digest(stored_digest, result):
                raise _conflict(str(destination))
    return Stored(location=str(target), retain_until=None, digest_bytes=stored_digest)


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.AUDIT_S3_ENDPOINT_URL or None,
        region_name=settings.S3_REGION,
        config=Config(
            connect_timeout=10,
            read_timeout=120,
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )


def _s3_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _s3_head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _s3_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _s3_put_once(
    client: Any, bucket: str, key: str, source: Path, sha256_hex: str, retain_until: datetime
) -> dict[str, Any] | None:
    """Stores the object under COMPLIANCE retention unless the key already holds one; returns
    the existing object's HEAD in that case (and the caller compares it). If-None-Match closes
    the race between two runs: only one of them creates the object."""
    from botocore.exceptions import ClientError

    existing = _s3_head(client, bucket, key)
    if existing is not None:
        return existing
    try:
        with source.open("rb") as body:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentLength=source.stat().st_size,
                ContentType="application/json" if key.endswith(".json") else "application/gzip",
                # Object-lock puts need an integrity check; S3 also verifies the bytes against it.
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex)).decode(),
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
                IfNoneMatch="*",
            )
    except ClientError as exc:
        if _s3_error_code(exc) not in ("PreconditionFailed", "412"):
            raise
        return _s3_head(client, bucket, key)
    return None


def _s3_body(client: Any, bucket: str, key: str, version_id: str | None) -> Iterator[bytes]:
    extra = {"VersionId": version_id} if version_id else {}
    body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
    try:
        yield from body.iter_chunks(_READ_BYTES)
    finally:
        body.close()


def _store_s3(result: ExportResult, day: date, bucket: str) -> Stored:
    client = _s3_client()
    retain_until = timezone.now() + timedelta(days=settings.AUDIT_RETENTION_DAYS)
    key = export_key(day)
    digest_key = key + DIGEST_SUFFIX
    stored_digest = result.digest_bytes
    found_retention: datetime | None = None
    for source, object_key, sha256_hex in (
        (result.path, key, result.file_sha256),
        (result.digest_path, digest_key, hashlib.sha256(result.digest_bytes).hexdigest()),
    ):
        existing = _s3_put_once(client, bucket, object_key, source, sha256_hex, retain_until)
        if existing is None:
            continue
        where = f"s3://{bucket}/{object_key}"
        if existing.get("ObjectLockMode") != "COMPLIANCE":
            raise ExportConflict(
                f"{where} already exists without COMPLIANCE object lock; it was not written by "
                "the export and is left as it is. Nothing was registered."
            )
        body = _s3_body(client, bucket, object_key, existing.get("VersionId"))
        if object_key == key:
            if _sha256_of(body) != sha256_hex:
                raise _conflict(where)
            found_retention = existing.get("ObjectLockRetainUntilDate")
        else:
            stored_digest = b"".join(body)
            if not _same_digest(stored_digest, result):
                raise _conflict(where)
    return Stored(
        location=f"s3://{bucket}/{key}",
        retain_until=found_retention or retain_until,
        digest_bytes=stored_digest,
    )


# --- The daily export --------------------------------------------------------------------------


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
            stored = _store_s3(result, day, settings.AUDIT_BUCKET)
        else:
            stored = _store_local(result, day, Path(settings.AUDIT_EXPORT_DIR) / f"{day:%Y/%m/%d}")
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
