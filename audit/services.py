"""Writing the audit log: appending events.

On PostgreSQL an append inserts the event unsealed and returns: no lock is taken, so writers in
many processes do not wait for one another. The sealer (audit.sealer) gives committed events
their sequence and hash shortly after. On SQLite, which admits one writer at a time anyway, an
append seals its event at once under the chain-head lock, as before sealing existed.
"""

from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from audit.chain import record_hash, record_of
from audit.models import AuditEvent, ChainHead
from marketplace.actors import Actor
from marketplace.canonical import canonical_check

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

    Precondition: called inside ``transaction.atomic``. `data` must be JSON without floats
    (marketplace.canonical); a value that is not is refused here, since sealing later must not
    fail. On PostgreSQL the event comes back unsealed (`sequence` None); on SQLite, sealed.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_append must run inside the transaction of the change it records")
    subject_type, subject_id = _subject(subject)
    data = data or {}
    if connection.vendor == "postgresql":
        canonical_check(data)
        event = AuditEvent(
            occurred_at=timezone.now(),
            actor_type=actor.type,
            actor_id=actor.id,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            data=data,
        )
        event.save()
        transaction.on_commit(_seal_soon)
        return event
    return _append_sealed(actor, action, subject_type, subject_id, data)


def _append_sealed(
    actor: Actor, action: str, subject_type: str, subject_id: str, data: dict[str, Any]
) -> AuditEvent:
    """The SQLite path: the event is sealed in the transaction that records it. The head lock
    is held until that transaction commits; SQLite holds its write lock as long anyway."""
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
        data=data,
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
    from audit.fanout import kernel_push_soon

    transaction.on_commit(kernel_push_soon)
    return event


def _seal_soon() -> None:
    from audit.sealer import seal_soon

    seal_soon()
