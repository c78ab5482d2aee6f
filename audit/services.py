"""Writing the audit log: appending events."""

from typing import Any

from django.db import models, transaction
from django.utils import timezone

from audit.chain import record_hash, record_of
from audit.models import AuditEvent, ChainHead
from marketplace.actors import Actor

Subject = models.Model | tuple[str, Any]


def _subject(subject: Subject) -> tuple[str, str]:
    if isinstance(subject, models.Model):
        return subject._meta.model_name or "", str(subject.pk)
    kind, identifier = subject
    return kind, str(identifier)


def _head_lock() -> ChainHead:
    head = ChainHead.objects.select_for_update().filter(id=1).first()
    if head is not None:
        return head
    # First append ever (or after the row was lost): start from the last stored event, and let
    # a concurrent first append win the insert rather than fail on it.
    last = AuditEvent.objects.order_by("-sequence").values("sequence", "hash", "occurred_at")
    start = last.first()
    ChainHead.objects.bulk_create(
        [ChainHead(id=1, **start) if start else ChainHead(id=1)], ignore_conflicts=True
    )
    return ChainHead.objects.select_for_update().get(id=1)


def audit_append(
    *,
    actor: Actor,
    action: str,
    subject: Subject,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Appends one event inside the caller's transaction, so the event and the change it
    records commit or roll back together.

    Precondition: called inside ``transaction.atomic``. Takes the chain-head lock, which the
    caller then holds until it commits: keep the rest of that transaction short. `data` must be
    JSON without floats (marketplace.canonical); a value that is not is refused here.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_append must run inside the transaction of the change it records")
    subject_type, subject_id = _subject(subject)
    head = _head_lock()
    # Never earlier than the event before it, whatever the clocks of the hosts say: time and
    # sequence then order events the same way, which is what lets a day's export be a
    # contiguous run of the chain.
    occurred_at = max(timezone.now(), head.occurred_at)
    sequence = head.sequence + 1
    record = record_of(
        sequence=sequence,
        occurred_at=occurred_at,
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        data=data or {},
        prev_hash=head.hash,
    )
    event_hash = record_hash(record)
    event = AuditEvent(
        sequence=sequence,
        occurred_at=occurred_at,
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        data=record["data"],
        prev_hash=head.hash,
        hash=event_hash,
    )
    event.save()
    head.sequence, head.hash, head.occurred_at = sequence, event_hash, occurred_at
    head.save(update_fields=["sequence", "hash", "occurred_at"])
    _after_append()
    return event


def _after_append() -> None:
    from audit.fanout import kernel_push_soon

    transaction.on_commit(kernel_push_soon)
