"""Catalog work done by the workers. Tasks load by id and call the service they are named
after; running one twice is harmless because each service re-reads the current state under a
lock before writing. The beat sweeps find what is due and send those tasks."""

import logging
from datetime import timedelta

from celery import shared_task
from django.db.models import Q
from django.utils import timezone

from catalog import services
from catalog.models import ManifestStatus, Sku, SkuStatus
from catalog.moderation.backends import ModerationUnavailable
from marketplace.actors import Actor
from marketplace.backoff import Backoff
from marketplace.models import User

logger = logging.getLogger(__name__)

# Who the audit log names for what the catalog's workers change.
WORKER = Actor.service("catalog-worker")
# Long enough that no upload still waiting to be attached is taken for an orphan.
ORPHAN_GRACE = timedelta(days=1)
# Before a manifest the Kernel could not check is checked again: 30 s, doubling, at most
# 30 minutes.
MANIFEST_BACKOFF = Backoff(base=30, cap=1800)


@shared_task(
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
    max_retries=8,
)
def sku_manifest_verify(sku_id: int) -> str | None:
    """Verifies a SKU's manifest. A Kernel outage is recorded and retried with backoff; the
    10-minute sweep picks up whatever is still unverified after the last retry."""
    try:
        check = services.sku_manifest_verify(sku_id=sku_id, actor=WORKER)
    except Sku.DoesNotExist:
        return None
    if check is not None and check.status == ManifestStatus.UNAVAILABLE:
        countdown = MANIFEST_BACKOFF.seconds(sku_manifest_verify.request.retries + 1)
        raise sku_manifest_verify.retry(countdown=countdown)
    return check.status if check else None


# A manifest still unchecked this long after its SKU changed lost its check's enqueue (a
# broker outage after the commit, a crash).
MANIFEST_CHECK_LOST = timedelta(minutes=5)


@shared_task(soft_time_limit=60, time_limit=90)
def manifests_reverify_unavailable() -> int:
    """Checks again the manifests the Kernel could not check, and those whose check was never
    sent."""
    lost_before = timezone.now() - MANIFEST_CHECK_LOST
    sku_ids = list(
        Sku.objects.filter(
            Q(manifest_status=ManifestStatus.UNAVAILABLE)
            | Q(manifest_status=ManifestStatus.PENDING, updated_at__lt=lost_before)
        ).values_list("pk", flat=True)
    )
    for sku_id in sku_ids:
        sku_manifest_verify.delay(sku_id)
    return len(sku_ids)


@shared_task(acks_late=True, soft_time_limit=3000, time_limit=3600)
def artifact_integrity_check(artifact_id: int) -> bool | None:
    return services.artifact_integrity_check(artifact_id=artifact_id, actor=WORKER)


@shared_task(soft_time_limit=60, time_limit=90)
def artifacts_check_integrity() -> int:
    artifact_ids = list(
        Sku.objects.filter(status=SkuStatus.ACTIVE, artifact__isnull=False).values_list(
            "artifact_id", flat=True
        )
    )
    for artifact_id in artifact_ids:
        artifact_integrity_check.delay(artifact_id)
    return len(artifact_ids)


@shared_task(soft_time_limit=600, time_limit=900)
def artifact_orphans_delete() -> int:
    removed = services.artifact_orphans_delete(
        older_than=timezone.now() - ORPHAN_GRACE, actor=WORKER
    )
    if removed:
        logger.info("removed %d stored artifact file(s) that nothing refers to", len(removed))
    return len(removed)


# Before a moderation the backend could not give is asked again: 30 s, doubling, at most
# 30 minutes; activation asks again too.
MODERATION_BACKOFF = Backoff(base=30, cap=1800)


@shared_task(acks_late=True, soft_time_limit=120, time_limit=150, max_retries=8)
def sku_moderate(sku_id: int, submitted_by_uuid: str | None = None) -> int:
    """Asks moderation about what of a SKU has no verdict yet (services.sku_moderate); a run
    twice records nothing the second time. A backend that gives no verdict is retried with
    backoff. Returns the number of reviews made."""
    submitter = (
        User.objects.filter(uuid=submitted_by_uuid).values_list("pk", flat=True).first()
        if submitted_by_uuid
        else None
    )
    try:
        made = services.sku_moderate(sku_id=sku_id, actor=WORKER, submitted_by_id=submitter)
    except Sku.DoesNotExist:
        return 0
    except ModerationUnavailable as exc:
        logger.warning("moderation of SKU %s gave no verdict: %s", sku_id, exc)
        countdown = MODERATION_BACKOFF.seconds(sku_moderate.request.retries + 1)
        raise sku_moderate.retry(countdown=countdown) from exc
    return len(made)
