"""Catalog work done by the workers. Tasks load by id and call a service; running one twice is
harmless because each service re-reads the current state under a lock before writing."""

import hashlib
import logging
from datetime import timedelta

from celery import shared_task
from django.core.files.storage import default_storage
from django.utils import timezone

from catalog.models import Artifact, ManifestStatus, Sku, SkuStatus
from catalog.services import (
    artifact_integrity_record,
    artifact_orphans_delete,
    sku_manifest_verify,
)
from marketplace.actors import Actor

logger = logging.getLogger(__name__)

INTEGRITY_CHUNK_BYTES = 1024 * 1024
# Who the audit log names for what the catalog's workers change.
WORKER = Actor.service("catalog-worker")
# Long enough that no upload still waiting to be attached is taken for an orphan.
ORPHAN_GRACE = timedelta(days=1)


@shared_task(
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
    max_retries=8,
)
def sku_verify_manifest(sku_id: int) -> str | None:
    """Verifies a SKU's manifest. A Kernel outage is recorded and retried with backoff; the
    10-minute sweep picks up whatever is still unverified after the last retry."""
    try:
        check = sku_manifest_verify(sku_id=sku_id, actor=WORKER)
    except Sku.DoesNotExist:
        return None
    if check is not None and check.status == ManifestStatus.UNAVAILABLE:
        countdown = min(30 * 2**sku_verify_manifest.request.retries, 1800)
        raise sku_verify_manifest.retry(countdown=countdown)
    return check.status if check else None


@shared_task(soft_time_limit=60, time_limit=90)
def manifests_reverify_unavailable() -> int:
    sku_ids = list(
        Sku.objects.filter(manifest_status=ManifestStatus.UNAVAILABLE).values_list("pk", flat=True)
    )
    for sku_id in sku_ids:
        sku_verify_manifest.delay(sku_id)
    return len(sku_ids)


def _stored_sha256(storage_key: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with default_storage.open(storage_key, "rb") as stored:
        while chunk := stored.read(INTEGRITY_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@shared_task(acks_late=True, soft_time_limit=3000, time_limit=3600)
def artifact_check_integrity(artifact_id: int) -> bool | None:
    """Re-reads one stored artifact and compares it with the hash recorded at upload. A SKU on
    sale whose artifact changed in storage is suspended: buyers must not receive other bytes
    than the ones the partner signed."""
    artifact = Artifact.objects.filter(pk=artifact_id).first()
    if artifact is None:
        return None
    try:
        sha256, size = _stored_sha256(artifact.storage_key)
    except FileNotFoundError:
        sha256, size = "", 0
    intact = artifact_integrity_record(
        artifact_id=artifact_id, sha256=sha256, size=size, actor=WORKER
    )
    if not intact:
        logger.error(
            "artifact %s (%s) no longer matches its recorded hash",
            artifact.uuid,
            artifact.storage_key,
        )
    return intact


@shared_task(soft_time_limit=60, time_limit=90)
def artifacts_check_integrity() -> int:
    artifact_ids = list(
        Sku.objects.filter(status=SkuStatus.ACTIVE, artifact__isnull=False).values_list(
            "artifact_id", flat=True
        )
    )
    for artifact_id in artifact_ids:
        artifact_check_integrity.delay(artifact_id)
    return len(artifact_ids)


@shared_task(soft_time_limit=600, time_limit=900)
def artifacts_sweep_orphans() -> int:
    removed = artifact_orphans_delete(older_than=timezone.now() - ORPHAN_GRACE, actor=WORKER)
    if removed:
        logger.info("removed %d stored artifact file(s) that nothing refers to", len(removed))
    return len(removed)
