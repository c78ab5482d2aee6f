"""Writing an export: a period's events as gzip JSON Lines and the signed digest beside them."""

import gzip
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.chain import (
    DIGEST_TYPE,
    DIGEST_VERSION,
    GENESIS_HASH,
    STORED_COLUMNS,
    ChainCheck,
    digest_encode,
    digest_sign,
    format_time,
    stored_record,
)
from audit.models import AuditEvent, AuditExport, ChainHead
from audit.sealer import seal_all, seals_later
from audit.services import audit_append
from audit.signing_keys import signing_key_active
from marketplace.actors import Actor
from marketplace.keystore import signer_for
from marketplace.models import SigningKeyPurpose

CHUNK_SIZE = 5000
# zlib level 6: within a few percent of level 9's size at about a third of its time.
GZIP_LEVEL = 6
KEY_PREFIX = "audit"
DIGEST_SUFFIX = ".digest.json"
READ_BYTES = 1024 * 1024
SYSTEM_AUDIT_ACTOR = Actor.system("audit")


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
    _close_before(end)
    before = AuditEvent.objects.sealed().order_by("-sequence").values_list("sequence", "hash")
    previous = before.filter(occurred_at__lt=start).first() or (0, GENESIS_HASH)
    last = before.filter(occurred_at__lt=end).values_list("sequence", flat=True).first() or 0
    return Period(
        start=start,
        end=end,
        previous_sequence=previous[0],
        previous_hash=previous[1],
        last_sequence=max(last, previous[0]),
    )


def _close_before(end: datetime) -> None:
    """Makes sure no event dated before `end` can still join the chain.

    SQLite: appends seal under the head lock and date their event after taking it, so taking
    the lock once waits for any append in flight, and every later one is dated after now >= end.

    PostgreSQL: sealing dates an event no earlier than the head, so once the head is dated at or
    after `end`, every event sealed later is too. Everything committed is sealed first; if the
    head is still dated before `end` (a quiet platform), an `audit.period_closed` event, dated
    now, is appended and sealed to move it there. An event still in flight then is sealed after
    it, dated after `end`: it belongs to the next period."""
    if not seals_later():
        with transaction.atomic():
            ChainHead.objects.select_for_update().filter(id=1).first()
        return
    seal_all()
    head_time = ChainHead.objects.filter(id=1).values_list("occurred_at", flat=True).first()
    if head_time is not None and head_time >= end:
        return
    with transaction.atomic():
        audit_append(
            actor=SYSTEM_AUDIT_ACTOR,
            action="audit.period_closed",
            subject=("audit_period", format_time(end)),
            data={"before": format_time(end)},
        )
    seal_all()
    head_time = ChainHead.objects.filter(id=1).values_list("occurred_at", flat=True).first()
    if head_time is None or head_time < end:
        raise ExportError(
            "the audit events before the period's end could not all be sealed (another "
            "sealer holds the seal lock): try again shortly"
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
    return path, os.fdopen(fd, "wb", buffering=READ_BYTES)


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
