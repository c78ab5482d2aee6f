"""Artifacts: streamed to storage, then attached to their SKU in a short transaction."""

import contextlib
import hashlib
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, NoReturn

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core import signing
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from audit.services import audit_append
from catalog.cache import catalog_changed
from catalog.exceptions import (
    ArtifactTooLarge,
    ArtifactUploadFailed,
    KeptUploadRefused,
    SkuLocked,
)
from catalog.models import (
    Artifact,
    Sku,
    SkuStatus,
)
from catalog.services.locks import sku_lock
from catalog.services.moderation import sku_moderation_enqueue
from catalog.services.status import sku_status_change
from catalog.services.verdicts import signed_manifest_recheck
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.streams import HashingReader, SizeLimitExceeded

logger = logging.getLogger(__name__)

# How long a form sent back with errors keeps its upload. Well inside the grace the orphan sweep
# gives stored files (catalog.tasks.ORPHAN_GRACE, a day), so a kept file is never swept while a
# form may still use it, and is swept once none can.
KEPT_UPLOAD_MAX_AGE = timedelta(hours=6)
_KEPT_UPLOAD_SALT = "catalog.artifact-kept-upload"


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


def artifact_keep(*, stored: StoredArtifact, user: User) -> str:
    """A token that lets `user`, and only them, attach this stored file later (for
    KEPT_UPLOAD_MAX_AGE), so a form sent back with errors need not ask for the file again.
    It is signed: what it says about the file (key, size, SHA-256) cannot be changed."""
    return signing.dumps({"user": user.pk, **asdict(stored)}, salt=_KEPT_UPLOAD_SALT)


def artifact_kept(*, token: str, user: User) -> StoredArtifact:
    """The stored file a token of artifact_keep stands for. Raises KeptUploadRefused (naming
    `artifact_file`) for a token that was changed, has expired, is another user's, or whose
    file is gone or already attached."""
    try:
        kept = signing.loads(
            token, salt=_KEPT_UPLOAD_SALT, max_age=KEPT_UPLOAD_MAX_AGE.total_seconds()
        )
    except signing.SignatureExpired:
        _refuse_kept("The kept upload has expired; choose the file again.")
    except signing.BadSignature:
        _refuse_kept("The kept upload cannot be used; choose the file again.")
    if kept.pop("user") != user.pk:
        _refuse_kept("The kept upload was made by another user; choose the file again.")
    stored = StoredArtifact(**kept)
    if Artifact.objects.filter(storage_key=stored.storage_key).exists():
        _refuse_kept(f"{stored.filename} is already attached to a SKU; choose the file again.")
    if not default_storage.exists(stored.storage_key):
        _refuse_kept(f"{stored.filename} is no longer in storage; choose the file again.")
    return stored


def _refuse_kept(message: str) -> NoReturn:
    raise KeptUploadRefused(message, errors={"artifact_file": [message]})


def _check_artifact_changeable(sku: Sku) -> None:
    if not sku.files_can_change():
        raise SkuLocked(
            f"{sku.slug} is {sku.status}: its artifact can only change while it is a draft "
            "or suspended."
        )


@transaction.atomic
def sku_artifact_attach(
    *, sku_id: int, stored: StoredArtifact, actor: Actor, uploaded_by: User | None = None
) -> Artifact:
    """Makes a stored file the SKU's artifact. The manifest must then name its hash: a verified
    manifest that names other bytes becomes a mismatch, and a mismatch whose manifest names the
    new bytes is verified again (catalog.services.verdicts). Records `sku.artifact_uploaded`,
    then the manifest's new verdict if it changed; moderation judges the new bytes once this
    commits (sku_moderation_enqueue)."""
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
    replaced = sku.artifact.sha256 if sku.artifact else None
    sku.artifact = artifact
    audit_append(
        actor=actor,
        action="sku.artifact_uploaded",
        subject=sku,
        data={
            "artifact_id": artifact.pk,
            "filename": artifact.filename,
            "size": artifact.size,
            "sha256": artifact.sha256,
            "replaced_sha256": replaced,
        },
    )
    fields = ["artifact", "updated_at", *signed_manifest_recheck(sku, actor=actor)]
    sku.save(update_fields=fields)
    catalog_changed(sku)
    sku_moderation_enqueue(sku_id=sku.pk, actor=actor)
    return artifact


def sku_artifact_upload(
    *,
    sku: Sku,
    content: BinaryIO,
    filename: str,
    content_type: str = "",
    actor: Actor,
    uploaded_by: User | None = None,
) -> Artifact:
    """Stores a file and attaches it to the SKU; if attaching fails, the file is removed."""
    _check_artifact_changeable(sku)
    stored = artifact_store(content=content, filename=filename, content_type=content_type)
    try:
        return sku_artifact_attach(
            sku_id=sku.pk, stored=stored, actor=actor, uploaded_by=uploaded_by
        )
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


ORPHAN_KEYS_RECORDED = 100


def artifact_orphans_delete(*, older_than: datetime, actor: Actor) -> list[str]:
    """Deletes stored artifact files that no artifact refers to and that are older than
    `older_than`: uploads kept for an admin form sent back with errors and never used, or whose
    transaction rolled back. Younger files are spared, as their upload may be about to be
    attached.

    Records `artifact.orphans_deleted` after the files are gone (storage is no transaction):
    the count, and the first ORPHAN_KEYS_RECORDED keys. Nothing when nothing was deleted.
    """
    referenced = set(Artifact.objects.values_list("storage_key", flat=True))
    removed: list[str] = []
    for key in _stored_artifact_keys():
        if key in referenced or default_storage.get_modified_time(key) > older_than:
            continue
        default_storage.delete(key)
        removed.append(key)
    if removed:
        with transaction.atomic():
            audit_append(
                actor=actor,
                action="artifact.orphans_deleted",
                subject=("storage", "artifacts"),
                data={"count": len(removed), "keys": sorted(removed)[:ORPHAN_KEYS_RECORDED]},
            )
    return removed


INTEGRITY_CHUNK_BYTES = 1024 * 1024


def artifact_integrity_check(*, artifact_id: int, actor: Actor) -> bool | None:
    """Re-reads one stored artifact (in chunks: memory independent of its size), compares it
    with the hash recorded at upload and records the result (artifact_integrity_record).
    None when there is no such artifact. Reads storage outside any transaction."""
    artifact = Artifact.objects.filter(pk=artifact_id).first()
    if artifact is None:
        return None
    digest = hashlib.sha256()
    size = 0
    try:
        with default_storage.open(artifact.storage_key, "rb") as stored:
            while chunk := stored.read(INTEGRITY_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
    except FileNotFoundError:
        sha256, size = "", 0
    intact = artifact_integrity_record(
        artifact_id=artifact_id, sha256=sha256, size=size, actor=actor
    )
    if not intact:
        logger.error(
            "artifact %s (%s) no longer matches its recorded hash",
            artifact.uuid,
            artifact.storage_key,
        )
    return intact


@transaction.atomic
def artifact_integrity_record(*, artifact_id: int, sha256: str, size: int, actor: Actor) -> bool:
    """Records what a re-read of a stored artifact found (`sha256` and `size` of the stored
    bytes; "" and 0 if the file is gone). A SKU on sale whose artifact changed in storage is
    suspended: buyers must not receive other bytes than the ones the partner signed.

    Records `artifact.integrity_failed` and a `sku.suspended` per SKU taken off sale; an
    intact artifact records nothing. Returns whether the artifact is intact.
    """
    # NO KEY: SKUs referring to the artifact keep their foreign-key share lock compatible.
    artifact = (
        Artifact.objects.select_for_update(no_key=True, of=("self",))
        .select_related("sku")
        .get(pk=artifact_id)
    )
    intact = sha256 == artifact.sha256 and size == artifact.size
    artifact.integrity_ok = intact
    artifact.integrity_checked_at = timezone.now()
    artifact.save(update_fields=["integrity_ok", "integrity_checked_at"])
    if intact:
        return True
    candidates = Sku.objects.filter(artifact=artifact, status=SkuStatus.ACTIVE).order_by("pk")
    locked = [sku_lock(sku_id) for sku_id in candidates.values_list("pk", flat=True)]
    on_sale = [sku for sku in locked if sku.status == SkuStatus.ACTIVE]  # re-read under lock
    audit_append(
        actor=actor,
        action="artifact.integrity_failed",
        subject=artifact,
        data={
            "sku": artifact.sku.slug,
            "storage_key": artifact.storage_key,
            "expected_sha256": artifact.sha256,
            "actual_sha256": sha256,
            "expected_size": artifact.size,
            "actual_size": size,
            "skus_suspended": [sku.slug for sku in on_sale],
        },
    )
    reason = f"artifact {artifact.filename} changed in storage since upload"
    for sku in on_sale:
        fields = sku_status_change(
            sku,
            target=SkuStatus.SUSPENDED,
            reason=reason,
            actor=actor,
            at=artifact.integrity_checked_at,
        )
        sku.save(update_fields=[*fields, "updated_at"])
    if on_sale:
        catalog_changed(*on_sale)
    return False
