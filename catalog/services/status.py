"""A SKU's status change and its audit event, shared by every service that moves one."""

from datetime import datetime

from audit.services import audit_append
from catalog.models import Sku, SkuStatus
from marketplace.actors import Actor

REASON_MAX = 300
STATUS_FIELDS = ["status", "status_reason", "status_changed_at"]


def sku_status_change(
    sku: Sku, *, target: SkuStatus, reason: str, actor: Actor, at: datetime
) -> list[str]:
    """Moves `sku` to `target` and records `sku.<target>` with where it came from and why.

    Precondition: the caller holds the SKU's lock in its transaction and has checked the
    transition. Returns the changed fields; the caller saves them, with any of its own.
    """
    reason = reason[:REASON_MAX]
    audit_append(
        actor=actor,
        action=f"sku.{target}",
        subject=sku,
        data={"from": str(sku.status), "reason": reason},
    )
    sku.status = target
    sku.status_reason = reason
    sku.status_changed_at = at
    return STATUS_FIELDS
