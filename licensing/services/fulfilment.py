"""What licensing does when orders hands an order over (orders.handover): a released order
gets its license and its delivery; a refunded or disputed one loses both."""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from licensing.models import CURRENT_DELIVERY, Delivery, DeliveryStatus, License, LicenseStatus
from licensing.services.deliveries import deliveries_withdraw_for_order, delivery_create
from licensing.services.licenses import license_issue, licenses_revoke_for_order
from marketplace.actors import Actor
from marketplace.maintenance import maintenance_on
from orders.models import REVOKING, Order

LICENSING_WORKER = Actor.service("licensing-worker")


def _sweep_thresholds() -> tuple[timedelta, timedelta, timedelta]:
    """MARKETPLACE_DELIVERY_NEVER_STARTED_SECONDS, MARKETPLACE_DELIVERY_ABANDONED_SECONDS and
    MARKETPLACE_DELIVERY_STALE_SECONDS."""
    return (
        timedelta(seconds=settings.DELIVERY_NEVER_STARTED_SECONDS),
        timedelta(seconds=settings.DELIVERY_ABANDONED_SECONDS),
        timedelta(seconds=settings.DELIVERY_STALE_SECONDS),
    )


def order_fulfil(*, order_id: Any, actor: Actor = LICENSING_WORKER) -> dict[str, Any]:
    """Issues the order's license and creates its delivery, each once. While
    MAINTENANCE_MODE is on nothing is issued: the sweep comes back for it afterwards."""
    if maintenance_on():
        return {"order": str(order_id), "skipped": "maintenance"}
    license = license_issue(order_id=order_id, actor=actor)
    delivery = delivery_create(order_id=order_id, actor=actor)
    return {
        "order": str(order_id),
        "license": str(license.pk) if license else None,
        "delivery": str(delivery.pk) if delivery else None,
    }


def order_revoke(*, order_id: Any, reason: str, actor: Actor = LICENSING_WORKER) -> dict[str, int]:
    """Revokes the order's licenses and withdraws its packages (a refund, a dispute)."""
    return {
        "licenses": licenses_revoke_for_order(order_id=order_id, reason=reason, actor=actor),
        "deliveries": deliveries_withdraw_for_order(order_id=order_id, reason=reason, actor=actor),
    }


def fulfilment_due(*, limit: int = 500) -> tuple[list[str], list[str]]:
    """Released orders still without a license or a delivery, and pending deliveries: what a
    lost hand-over, a crash or maintenance left behind. A pending delivery is due when it was
    never started, when the attempt on it stopped beating (its worker died), or when its last
    attempt failed long ago and no retry came (the retry was lost); not while an attempt on it
    is alive, however long it takes."""
    orders = (
        Order.objects.deliverable()
        .exclude(pk__in=License.objects.values("order_id"))
        .values_list("pk", flat=True)[:limit]
    )
    orders_without_delivery = (
        Order.objects.deliverable()
        .exclude(pk__in=Delivery.objects.values("order_id"))
        .values_list("pk", flat=True)[:limit]
    )
    now = timezone.now()
    never_started, abandoned, stale = _sweep_thresholds()
    pending = (
        Delivery.objects.filter(status=DeliveryStatus.PENDING)
        .filter(
            Q(attempted_at__isnull=True, created_at__lt=now - never_started)
            | Q(heartbeat_at__lt=now - stale)
            # A failed attempt lets go of its heartbeat; its task retries after a backoff.
            | Q(heartbeat_at__isnull=True, attempted_at__lt=now - abandoned)
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    order_ids = sorted({str(pk) for pk in orders} | {str(pk) for pk in orders_without_delivery})
    return order_ids, [str(pk) for pk in pending]


def revocations_due(*, limit: int = 500) -> list[tuple[str, str]]:
    """(order id, reason) of refunded or disputed orders that still have an active license or
    a current delivery: a revocation whose hand-over was lost (a broker outage after the
    refund's commit, a crash). Downloads and the license check refuse such an order already;
    this makes its licenses and packages say so too."""
    with_license = License.objects.filter(status=LicenseStatus.ACTIVE).values("order_id")
    with_delivery = Delivery.objects.filter(status__in=CURRENT_DELIVERY).values("order_id")
    rows = (
        Order.objects.filter(status__in=REVOKING)
        .filter(Q(pk__in=with_license) | Q(pk__in=with_delivery))
        .order_by("updated_at")
        .values_list("pk", "status")[:limit]
    )
    return [(str(pk), str(status)) for pk, status in rows]
