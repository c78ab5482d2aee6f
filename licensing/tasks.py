"""Licensing's work on the workers. `order_fulfil` and `order_revoke` are sent by
licensing.handover once orders hands over a released, refunded or disputed order."""

import logging
import traceback

from botocore.exceptions import BotoCoreError, ClientError
from celery import shared_task

from licensing.keys import DataKeyError, DataKeyUnavailable
from licensing.metrics import delivery_encrypt_failures
from licensing.models import Delivery, DeliveryStatus
from licensing.services import (
    LICENSING_WORKER,
    SUPERSEDED_ATTEMPT,
    AttemptSuperseded,
    PackagingFailed,
    delivery_failure_record,
    failed_attempt,
    fulfilment_due,
    revocations_due,
)
from licensing.services import (
    delivery_package as delivery_package_service,
)
from licensing.services import (
    delivery_spool_sweep as delivery_spool_sweep_service,
)
from licensing.services import (
    order_fulfil as order_fulfil_service,
)
from licensing.services import (
    order_revoke as order_revoke_service,
)
from marketplace.backoff import Backoff
from marketplace.keystore import KeyStoreUnavailable
from marketplace.maintenance import maintenance_on

logger = logging.getLogger(__name__)

# What a retry may cure: storage and KMS outages, the signer being away, a full disk.
# A signer that refuses (KeyStoreError) is not transient: only its being away is.
TRANSIENT = (OSError, BotoCoreError, ClientError, DataKeyUnavailable, KeyStoreUnavailable)


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def order_fulfil(order_id: str, reason: str = "released") -> dict:
    return order_fulfil_service(order_id=order_id)


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def order_revoke(order_id: str, reason: str = "revoked") -> dict:
    return order_revoke_service(order_id=order_id, reason=reason)


# Before packaging is tried again: 30 s, doubling, at most 30 minutes.
PACKAGING_BACKOFF = Backoff(base=30, cap=1800)


@shared_task(bind=True, acks_late=True, soft_time_limit=3300, time_limit=3600, max_retries=None)
def delivery_package(self, delivery_id: str) -> str:  # type: ignore[no-untyped-def]
    """Packages a delivery; safe to run twice (the service re-checks under a lock, an attempt
    holds the delivery while its heartbeat is fresh, and the package's bytes and name are fixed
    by the delivery). An attempt that lost its delivery to another (AttemptSuperseded, or a
    failure after it was taken over) stops and records nothing. Transient failures are retried with
    backoff until the delivery has had MARKETPLACE_DELIVERY_MAX_ATTEMPTS attempts, then it is
    suspended; a permanent one suspends it at once. Every failure is counted in
    marketplace_delivery_encrypt_failures_total."""
    try:
        return delivery_package_service(delivery_id=delivery_id, actor=LICENSING_WORKER)
    except AttemptSuperseded as exc:
        logger.warning("packaging delivery %s stopped: %s", delivery_id, exc)
        return SUPERSEDED_ATTEMPT
    except PackagingFailed as exc:
        delivery_encrypt_failures.labels(reason="artifact").inc()
        logger.error("packaging delivery %s cannot succeed: %s", delivery_id, exc)
        return delivery_failure_record(
            delivery_id=delivery_id,
            attempt=failed_attempt(exc),
            error=str(exc),
            permanent=True,
            actor=LICENSING_WORKER,
        )
    except DataKeyError as exc:
        delivery_encrypt_failures.labels(reason="data_key").inc()
        logger.error("packaging delivery %s cannot succeed: %s", delivery_id, exc)
        return delivery_failure_record(
            delivery_id=delivery_id,
            attempt=failed_attempt(exc),
            error=str(exc),
            permanent=True,
            actor=LICENSING_WORKER,
        )
    except TRANSIENT as exc:
        delivery_encrypt_failures.labels(reason=type(exc).__name__).inc()
        logger.warning("packaging delivery %s failed: %s", delivery_id, exc)
        status = delivery_failure_record(
            delivery_id=delivery_id,
            attempt=failed_attempt(exc),
            # The cause first: last_error is cut at 4,000 characters and the audit event keeps
            # its first line.
            error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=-6)}",
            permanent=False,
            actor=LICENSING_WORKER,
        )
        if status != DeliveryStatus.PENDING:
            return status
        attempts = Delivery.objects.filter(pk=delivery_id).values_list("attempts", flat=True)
        raise self.retry(
            exc=exc, countdown=PACKAGING_BACKOFF.seconds(attempts.first() or 1)
        ) from exc


@shared_task(soft_time_limit=50, time_limit=60)
def fulfilment_sweep() -> dict[str, int]:
    """Picks up released orders without a license or delivery, and pending deliveries: a lost
    hand-over, a crash between commit and enqueue, or the end of a maintenance window."""
    if maintenance_on():
        return {"orders": 0, "deliveries": 0}
    order_ids, delivery_ids = fulfilment_due()
    for order_id in order_ids:
        order_fulfil.delay(order_id)
    for delivery_id in delivery_ids:
        delivery_package.delay(delivery_id)
    return {"orders": len(order_ids), "deliveries": len(delivery_ids)}


@shared_task(soft_time_limit=50, time_limit=60)
def revocation_sweep() -> int:
    """Revokes what a lost revocation hand-over left active; runs in maintenance too, since
    it issues nothing."""
    due = revocations_due()
    for order_id, reason in due:
        order_revoke.delay(order_id, reason=reason)
    return len(due)


@shared_task(soft_time_limit=240, time_limit=280)
def delivery_spool_sweep() -> dict[str, int]:
    """Removes partial package files and S3 multipart uploads that killed workers left."""
    return delivery_spool_sweep_service()
