"""The nightly audit export (audit.exports): days exported in order to the object-lock bucket
or to local files, their digests chained, reruns and failed runs, and the Celery task."""

import gzip
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from audit.chain import GENESIS_HASH
from audit.exports import (
    ExportConflict,
    ExportError,
    audit_export_day,
    audit_exports_catch_up,
    export_key,
)
from audit.models import AuditEvent, AuditExport, ChainHead
from audit.sealer import seals_later
from audit.services import audit_append
from audit.signing_keys import signing_key_active, signing_key_rotate
from audit.tasks import audit_exports_catch_up as export_task
from marketplace.actors import Actor
from marketplace.keystore import jwks_of
from marketplace.models import SigningKey, SigningKeyPurpose
from tests.support.audit import owner_tamper, redate_unsealed, seal_dated, sealing_held
from tests.support.moto import S3Bucket
from tests.support.net import free_port
from tests.support.worker import wait_until

# Transactional: on PostgreSQL the tables' owner dates the events on their days (seal_dated).
pytestmark = pytest.mark.django_db(transaction=True)


# --- Helpers -----------------------------------------------------------------------------------


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


@contextmanager
def clock_at(moment: datetime) -> Iterator[None]:
    """Appends date their events with timezone.now(): this places them on a chosen day."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timezone, "now", lambda: moment)
        yield


def append_at(moment: datetime, count: int = 1) -> list[AuditEvent]:
    events = []
    # A worker's sealer (some tests run one) must not seal them before they are dated.
    with sealing_held():
        with clock_at(moment):
            for index in range(count):
                with transaction.atomic():
                    events.append(
                        audit_append(
                            actor=Actor.system("test"),
                            action="sku.activated",
                            subject=("sku", index),
                            data={"index": index, "note": "ünïcode"},
                        )
                    )
        redate_unsealed(events, moment)
    # Sealed at once, as SQLite's appends are: a later append is never dated before them.
    seal_dated(events, moment)
    return events


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"marketplace_audit_export_{name}_total") or 0.0


def write_jwks(folder: Path) -> Path:
    path = folder / "jwks.json"
    keys = list(SigningKey.objects.filter(purpose=SigningKeyPurpose.AUDIT))
    path.write_text(json.dumps(jwks_of(keys)))
    return path


def verify(jwks: Path, *exports: Path) -> tuple[int, str]:
    """audit_verify --export ... as the command line runs it: (exit code, output)."""
    out = StringIO()
    arguments = [argument for path in exports for argument in ("--export", str(path))]
    try:
        call_command("audit_verify", *arguments, "--jwks", str(jwks), stdout=out)
    except CommandError as exc:
        return exc.returncode, str(exc)
    return 0, out.getvalue()


def download(bucket: S3Bucket, day: date, folder: Path) -> Path:
    key = export_key(day)
    path = folder / key.rsplit("/", 1)[1]
    for object_key, target in ((key, path), (key + ".digest.json", Path(f"{path}.digest.json"))):
        body = bucket.client.get_object(Bucket=bucket.name, Key=object_key)["Body"].read()
        target.write_bytes(body)
    return path


def versions(bucket: S3Bucket) -> list[tuple[str, str]]:
    listing = bucket.client.list_object_versions(Bucket=bucket.name)
    return sorted((v["Key"], v["VersionId"]) for v in listing.get("Versions", []))


class Rollback(Exception):
    pass


def export_then_lose_the_row(day: date) -> None:
    """A run that stores both objects and then dies before its row commits. (The audit key
    exists beforehand: a real crash would not take its creation back with the row.)"""
    signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    if seals_later():
        # An export seals first, in transactions of its own, so it cannot run inside one to be
        # rolled back: the run commits, and the tables' owner takes its row away.
        assert audit_export_day(day=day) is not None
        owner_tamper("DELETE FROM audit_export WHERE day = %s", [day], table="audit_export")
        return

    def run_then_die() -> None:
        with transaction.atomic():
            assert audit_export_day(day=day) is not None
            raise Rollback

    with pytest.raises(Rollback):
        run_then_die()


@pytest.fixture(autouse=True)
def _chain_head_in_the_past(db: None) -> None:
    """A new chain head is dated when it is created, and appends never date an event before
    the head: created in the past, it lets the tests place events on past days. On PostgreSQL
    the platform's role may not write the head, and none is needed: the first seal makes it,
    dated by the events it seals."""
    if seals_later():
        return
    ChainHead.objects.create(id=1, occurred_at=datetime(2000, 1, 1, tzinfo=UTC))


@pytest.fixture(autouse=True)
def export_dir(settings: Any, tmp_path: Path) -> Path:
    settings.AUDIT_BUCKET = ""
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit"
    return settings.AUDIT_EXPORT_DIR


@pytest.fixture
def audit_bucket(s3_bucket: S3Bucket, settings: Any) -> S3Bucket:
    settings.AUDIT_BUCKET = s3_bucket.name
    settings.AUDIT_S3_ENDPOINT_URL = s3_bucket.endpoint
    settings.AUDIT_RETENTION_DAYS = 30
    return s3_bucket


# --- The object-lock bucket --------------------------------------------------------------------


@pytest.mark.s3
def test_catch_up_exports_each_day_under_compliance_lock_and_the_chain_verifies(
    audit_bucket, tmp_path
):
    day1, day2 = today() - timedelta(days=2), today() - timedelta(days=1)
    first = append_at(at(day1, 9), 3)
    second = append_at(at(day2, 23, 59), 2)
    append_at(timezone.now())  # today's: not exported until the day is over
    successes = counter("success")

    exported = audit_exports_catch_up()

    assert [export.day for export in exported] == [day1, day2]
    assert counter("success") == successes + 2
    one, two = exported
    assert (one.previous_sequence, one.first_sequence, one.last_sequence) == (0, 1, 3)
    assert (two.previous_sequence, two.first_sequence, two.last_sequence) == (3, 4, 5)
    assert two.event_count == 2
    assert one.location == f"s3://{audit_bucket.name}/audit/{day1:%Y/%m/%d}/audit-{day1}.jsonl.gz"
    head = audit_bucket.client.head_object(Bucket=audit_bucket.name, Key=export_key(day1))
    assert head["ObjectLockMode"] == "COMPLIANCE"
    expected_until = timezone.now() + timedelta(days=30)
    assert abs(head["ObjectLockRetainUntilDate"] - expected_until) < timedelta(minutes=2)
    assert abs(one.retain_until - expected_until) < timedelta(minutes=2)
    digest_head = audit_bucket.client.head_object(
        Bucket=audit_bucket.name, Key=export_key(day1) + ".digest.json"
    )
    assert digest_head["ObjectLockMode"] == "COMPLIANCE"

    path1, path2 = download(audit_bucket, day1, tmp_path), download(audit_bucket, day2, tmp_path)
    assert hashlib.sha256(path1.read_bytes()).hexdigest() == one.file_sha256
    assert path1.stat().st_size == one.file_size
    digest1 = json.loads(Path(f"{path1}.digest.json").read_bytes())
    digest2 = json.loads(Path(f"{path2}.digest.json").read_bytes())
    assert digest1["previous_digest_sha256"] is None
    assert digest1["previous_hash"] == GENESIS_HASH
    assert (digest1["first_hash"], digest1["last_hash"]) == (first[0].hash, first[-1].hash)
    assert digest2["previous_digest_sha256"] == one.digest_sha256
    assert (digest2["previous_hash"], digest2["last_hash"]) == (first[-1].hash, second[-1].hash)
    assert digest2["key_id"] == two.key_id
    code, output = verify(write_jwks(tmp_path), path1, path2)
    assert code == 0, output
    assert "OK: the digest chain of 2 exports is unbroken" in output


@pytest.mark.s3
def test_a_locked_export_cannot_be_deleted(audit_bucket):
    append_at(at(today() - timedelta(days=1)))
    audit_exports_catch_up()
    key = export_key(today() - timedelta(days=1))
    version = audit_bucket.client.head_object(Bucket=audit_bucket.name, Key=key)["VersionId"]

    with pytest.raises(ClientError) as refused:
        audit_bucket.client.delete_object(Bucket=audit_bucket.name, Key=key, VersionId=version)

    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert audit_bucket.client.head_object(Bucket=audit_bucket.name, Key=key)["VersionId"] == (
        version
    )


@pytest.mark.s3
def test_an_empty_day_gets_its_digest_and_a_missing_day_breaks_the_chain(audit_bucket, tmp_path):
    day1, day2, day3 = (today() - timedelta(days=n) for n in (3, 2, 1))
    append_at(at(day1), 2)
    append_at(at(day3), 1)

    exported = audit_exports_catch_up()

    assert [(e.day, e.event_count) for e in exported] == [(day1, 2), (day2, 0), (day3, 1)]
    empty = exported[1]
    assert (empty.previous_sequence, empty.first_sequence, empty.last_sequence) == (2, None, None)
    paths = [download(audit_bucket, day, tmp_path) for day in (day1, day2, day3)]
    with gzip.open(paths[1]) as handle:
        assert handle.read() == b""
    digest = json.loads(Path(f"{paths[1]}.digest.json").read_bytes())
    assert digest["event_count"] == 0
    assert digest["previous_sequence"] == 2
    assert (digest["first_sequence"], digest["last_sequence"], digest["last_hash"]) == (
        None,
        None,
        None,
    )
    jwks = write_jwks(tmp_path)
    code, output = verify(jwks, *paths)
    assert code == 0, output
    assert "OK: the digest chain of 3 exports is unbroken" in output

    code, output = verify(jwks, paths[0], paths[2])

    assert code == 1
    assert "digest_chain" in output
    assert f"does not name audit-{day1}.jsonl.gz's digest as its predecessor" in output


@pytest.mark.s3
def test_a_rerun_stores_and_registers_nothing(audit_bucket):
    append_at(at(today() - timedelta(days=2)))
    append_at(at(today() - timedelta(days=1)))
    audit_exports_catch_up()
    stored, rows, successes = (
        versions(audit_bucket),
        list(AuditExport.objects.all()),
        counter("success"),
    )

    assert audit_exports_catch_up() == []
    assert audit_export_day(day=today() - timedelta(days=2)) is None

    assert len(stored) == 4
    assert versions(audit_bucket) == stored
    assert list(AuditExport.objects.all()) == rows
    assert counter("success") == successes


@pytest.mark.s3
def test_a_failed_upload_registers_nothing_is_counted_and_the_rerun_succeeds(
    audit_bucket, settings
):
    day = today() - timedelta(days=1)
    append_at(at(day), 2)
    failures = counter("failures")

    settings.AUDIT_BUCKET = "no-such-audit-bucket"
    with pytest.raises(ClientError, match="NoSuchBucket"):
        audit_exports_catch_up()
    settings.AUDIT_BUCKET = audit_bucket.name
    settings.AUDIT_S3_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointConnectionError):
        audit_exports_catch_up()

    assert counter("failures") == failures + 2
    assert not AuditExport.objects.exists()
    assert versions(audit_bucket) == []

    settings.AUDIT_S3_ENDPOINT_URL = audit_bucket.endpoint
    [export] = audit_exports_catch_up()

    assert (export.day, export.event_count) == (day, 2)
    assert len(versions(audit_bucket)) == 2


@pytest.mark.s3
def test_objects_stored_by_a_run_that_died_are_registered_not_written_again(audit_bucket):
    day = today() - timedelta(days=1)
    append_at(at(day), 3)
    export_then_lose_the_row(day)
    stored = versions(audit_bucket)
    assert len(stored) == 2
    assert not AuditExport.objects.exists()

    export = audit_export_day(day=day)

    assert export is not None
    assert versions(audit_bucket) == stored
    digest = audit_bucket.client.get_object(
        Bucket=audit_bucket.name, Key=export_key(day) + ".digest.json"
    )["Body"].read()
    assert export.digest_sha256 == hashlib.sha256(digest).hexdigest()
    head = audit_bucket.client.head_object(Bucket=audit_bucket.name, Key=export_key(day))
    assert export.retain_until == head["ObjectLockRetainUntilDate"]


@pytest.mark.s3
def test_a_digest_stored_before_the_key_rotated_is_registered_as_it_is(audit_bucket):
    day = today() - timedelta(days=1)
    append_at(at(day))
    export_then_lose_the_row(day)
    old_key = SigningKey.objects.get(purpose=SigningKeyPurpose.AUDIT)
    signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)

    export = audit_export_day(day=day)

    assert export is not None
    assert export.key_id == old_key.kid
    assert len(versions(audit_bucket)) == 2


@pytest.mark.s3
def test_a_different_object_under_the_days_key_is_refused_and_left_alone(audit_bucket):
    day = today() - timedelta(days=1)
    append_at(at(day))
    key = export_key(day)
    planted = gzip.compress(b'{"hash":"forged"}\n', mtime=0)
    audit_bucket.client.put_object(
        Bucket=audit_bucket.name,
        Key=key,
        Body=planted,
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=timezone.now() + timedelta(days=1),
        ChecksumAlgorithm="SHA256",
    )
    failures = counter("failures")

    with pytest.raises(ExportConflict, match="already exists and differs"):
        audit_exports_catch_up()

    assert counter("failures") == failures + 1
    assert not AuditExport.objects.exists()
    body = audit_bucket.client.get_object(Bucket=audit_bucket.name, Key=key)["Body"].read()
    assert body == planted
    assert [k for k, _ in versions(audit_bucket)] == [key]


# --- Local files -------------------------------------------------------------------------------


def test_without_a_bucket_days_are_written_read_only_to_the_export_folder(export_dir, tmp_path):
    day1, day2 = today() - timedelta(days=2), today() - timedelta(days=1)
    append_at(at(day1), 2)
    append_at(at(day2), 1)

    exported = audit_exports_catch_up()

    paths = [export_dir / f"{d:%Y/%m/%d}" / f"audit-{d}.jsonl.gz" for d in (day1, day2)]
    assert [export.location for export in exported] == [str(path) for path in paths]
    assert [export.retain_until for export in exported] == [None, None]
    for path in paths:
        for stored in (path, Path(f"{path}.digest.json")):
            assert stat.S_IMODE(stored.stat().st_mode) == 0o444
    assert sorted(p.name for p in export_dir.iterdir()) == [f"{day1:%Y}"]  # no staging left
    code, output = verify(write_jwks(tmp_path), *paths)
    assert code == 0, output


def test_local_files_left_by_a_run_that_died_are_registered_and_never_overwritten(
    export_dir,
):
    day = today() - timedelta(days=1)
    append_at(at(day), 2)
    export_then_lose_the_row(day)
    path = export_dir / f"{day:%Y/%m/%d}" / f"audit-{day}.jsonl.gz"
    before = (path.read_bytes(), path.stat().st_ino)

    export = audit_export_day(day=day)

    assert export is not None
    assert export.location == str(path)
    assert (path.read_bytes(), path.stat().st_ino) == before


def test_a_different_local_file_is_refused_and_left_alone(export_dir):
    day = today() - timedelta(days=1)
    append_at(at(day))
    folder = export_dir / f"{day:%Y/%m/%d}"
    folder.mkdir(parents=True)
    planted = folder / f"audit-{day}.jsonl.gz"
    planted.write_bytes(b"not the export")

    with pytest.raises(ExportConflict, match="already exists and differs"):
        audit_export_day(day=day)

    assert planted.read_bytes() == b"not the export"
    assert not Path(f"{planted}.digest.json").exists()
    assert not AuditExport.objects.exists()


# --- Refusals ----------------------------------------------------------------------------------


def test_a_day_that_is_not_over_is_not_exported():
    with pytest.raises(ExportError, match="in the future"):
        audit_export_day(day=today())
    assert not AuditExport.objects.exists()


def test_days_export_in_order_only():
    day1 = today() - timedelta(days=3)
    append_at(at(day1))
    assert audit_export_day(day=day1) is not None

    with pytest.raises(ExportError, match="is not exported: export the days in order"):
        audit_export_day(day=day1 + timedelta(days=2))
    assert audit_export_day(day=day1 + timedelta(days=1)) is not None
    with pytest.raises(ExportError, match="a later day than"):
        audit_export_day(day=day1 - timedelta(days=1))


def test_with_no_events_at_all_yesterday_gets_an_empty_export():
    [export] = audit_exports_catch_up()

    assert export.day == today() - timedelta(days=1)
    assert (export.event_count, export.previous_sequence, export.last_sequence) == (0, 0, None)


# --- The task, on a real worker ----------------------------------------------------------------


@pytest.fixture
def worker_audit_bucket(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """The worker process reads its settings from the environment it is started with."""
    monkeypatch.setenv("MARKETPLACE_AUDIT_BUCKET", s3_bucket.name)
    monkeypatch.setenv("MARKETPLACE_AUDIT_S3_ENDPOINT_URL", s3_bucket.endpoint)
    return s3_bucket


@pytest.mark.worker
@pytest.mark.s3
def test_the_nightly_task_exports_yesterday_on_the_worker(worker_audit_bucket, celery_worker):
    day = today() - timedelta(days=1)
    append_at(at(day), 2)

    export_task.delay()

    wait_until(lambda: AuditExport.objects.filter(day=day).exists(), worker=celery_worker)
    export = AuditExport.objects.get(day=day)
    assert export.event_count == 2
    assert export.location.startswith(f"s3://{worker_audit_bucket.name}/")
    head = worker_audit_bucket.client.head_object(
        Bucket=worker_audit_bucket.name, Key=export_key(day)
    )
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert "audit.tasks.audit_exports_catch_up" in celery_worker.log()
    assert os.environ["MARKETPLACE_AUDIT_BUCKET"] == worker_audit_bucket.name
