"""Artifacts: streamed to storage, then attached to their SKU in a short transaction."""

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils.text import get_valid_filename

from catalog.cache import catalog_changed
from catalog.exceptions import (
    ArtifactTooLarge,
    ArtifactUploadFailed,
    SkuLocked,
)
from catalog.models import (
    Artifact,
    Sku,
    SkuStatus,
)
from catalog.services.locks import sku_lock
from marketplace.models import User
from marketplace.streams import HashingReader, SizeLimitExceeded


@dataclass(frozen=True)
class StoredArtifact:
    storage_key: str
    filename: str
    content_type: str
    size: int
    sha256: str


def _safe_filename(filename: str) -> str:
    try:
        return get_valid_filename(filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])[:200]
    except SuspiciousFileOperation:
        return "artifact.bin"


def _discard(storage_key: str) -> None:
    # A failed upload may have left part of the file behind under its key.
    with contextlib.suppress(OSError, BotoCoreError, ClientError):
        default_storage.delete(storage_key)


def artifact_store(*, content: BinaryIO, filename: str, content_type: str = "") -> StoredArtifact:
    """Streams a file to storage under a fresh key, computing its SHA-256 and size on the way.

    Nothing is written to the database. On any failure, nothing is left under the key.
    """
    safe_name = _safe_filename(filename)
    storage_key = f"artifacts/{uuid.uuid4().hex}/{safe_name}"
    reader = HashingReader(content, max_bytes=settings.ARTIFACT_MAX_BYTES)
    try:
        storage_key = default_storage.save(storage_key, File(reader, name=safe_name))
    except SizeLimitExceeded:
        _discard(storage_key)
        raise ArtifactTooLarge(
            f"The artifact is larger than the {settings.ARTIFACT_MAX_BYTES} bytes allowed "
            "(MARKETPLACE_ARTIFACT_MAX_BYTES)."
        ) from None
    except (OSError, BotoCoreError, ClientError) as exc:
        _discard(storage_key)
        raise ArtifactUploadFailed(
            f"The upload of {safe_name} failed after {reader.size} bytes: {exc}. "
            "Nothing was kept; upload it again."
        ) from exc
    except BaseException:
        _discard(storage_key)
        raise
    if reader.size == 0:
        _discard(storage_key)
        raise ArtifactUploadFailed("The artifact is empty.")
    return StoredArtifact(
        storage_key=storage_key,
        filename=safe_name,
        content_type=content_type or "application/octet-stream",
        size=reader.size,
        sha256=reader.sha256,
    )


def _check_artifact_changeable(sku: Sku) -> None:
    if sku.status not in (SkuStatus.DRAFT, SkuStatus.SUSPENDED):
        raise SkuLocked(
            f"{sku.slug} is {sku.status}: its artifact can only change while it is a draft "
            "or suspended."
        )


@transaction.atomic
def sku_artifact_attach(
    *, sku_id: int, stored: StoredArtifact, uploaded_by: User | None = None
) -> Artifact:
    """Makes a stored file the SKU's artifact. The manifest must then name its hash."""
    sku = sku_lock(sku_id)
    _check_artifact_changeable(sku)
    artifact = Artifact.objects.create(
        sku=sku,
        storage_key=stored.storage_key,
        filename=stored.filename,
        content_type=stored.content_type,
        size=stored.size,
        sha256=stored.sha256,
        uploaded_by=uploaded_by,
    )
    sku.artifact = artifact
    sku.save(update_fields=["artifact", "updated_at"])
    catalog_changed()
    return artifact


def sku_artifact_upload(
    *,
    sku: Sku,
    content: BinaryIO,
    filename: str,
    content_type: str = "",
    uploaded_by: User | None = None,
) -> Artifact:
    """Stores a file and attaches it to the SKU; if attaching fails, the file is removed."""
    _check_artifact_changeable(sku)
    stored = artifact_store(content=content, filename=filename, content_type=content_type)
    try:
        return sku_artifact_attach(sku_id=sku.pk, stored=stored, uploaded_by=uploaded_by)
    except BaseException:
        _discard(stored.storage_key)
        raise


def _stored_artifact_keys() -> list[str]:
    try:
        folders, _ = default_storage.listdir("artifacts")
    except FileNotFoundError:
        return []
    return [
        f"artifacts/{folder}/{name}"
        for folder in folders
        for name in default_storage.listdir(f"artifacts/{folder}")[1]
    ]


def artifact_orphans_delete(*, older_than: datetime) -> list[str]:
    """Deletes stored artifact files that no artifact refers to and that are older than
    `older_than`: uploads whose admin form was sent back with errors, or whose transaction
    rolled back. Younger files are spared, as their upload may be about to be attached."""
    referenced = set(Artifact.objects.values_list("storage_key", flat=True))
    removed: list[str] = []
    for key in _stored_artifact_keys():
        if key in referenced or default_storage.get_modified_time(key) > older_than:
            continue
        default_storage.delete(key)
        removed.append(key)
    return removed
