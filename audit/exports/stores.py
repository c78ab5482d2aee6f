"""Where exports are kept: the audit bucket under object lock, or read-only local files; a
rerun finds what it would store already there, byte for byte, or refuses."""

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit.chain import (
    digest_encode,
    digest_message,
    signature_problem,
)
from audit.exports.files import DIGEST_SUFFIX, KEY_PREFIX, READ_BYTES, ExportConflict, ExportResult
from marketplace.keystore import public_keys_from_store
from marketplace.models import SigningKeyPurpose
from marketplace.objectlock import object_lock_put, s3_head


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


def export_store_local(result: ExportResult, day: date, folder: Path) -> Stored:
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


def _s3_put_once(
    client: Any, bucket: str, key: str, source: Path, sha256_hex: str, retain_until: datetime
) -> dict[str, Any] | None:
    """Stores the object under COMPLIANCE retention unless the key already holds one; returns
    the existing object's HEAD in that case (and the caller compares it). If-None-Match closes
    the race between two runs: only one of them creates the object."""
    existing = s3_head(client, bucket=bucket, key=key)
    if existing is not None:
        return existing
    with source.open("rb") as body:
        created = object_lock_put(
            client,
            bucket=bucket,
            key=key,
            body=body,
            retain_until=retain_until,
            content_type="application/json" if key.endswith(".json") else "application/gzip",
            create_only=True,
            sha256=bytes.fromhex(sha256_hex),
        )
    return None if created else s3_head(client, bucket=bucket, key=key)


def _s3_body(client: Any, bucket: str, key: str, version_id: str | None) -> Iterator[bytes]:
    extra = {"VersionId": version_id} if version_id else {}
    body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
    try:
        yield from body.iter_chunks(READ_BYTES)
    finally:
        body.close()


def export_store_s3(result: ExportResult, day: date, bucket: str) -> Stored:
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
