"""The audit log: an append-only, hash-chained table of events, the chained and signed
checkpoints of its head, and the register of daily exports.

Events, checkpoints and exports refuse update and delete here. On PostgreSQL, triggers
(migrations 0002 and 0004) refuse UPDATE, DELETE and TRUNCATE on their tables, with one
exception: sealing an event, which the trigger lets through only as the next link of the chain
and which moves the chain head itself (docs/audit.md, "Sealing"). The chain's encoding lives in
audit.chain; appends go through audit.services.audit_append, sealing through audit.sealer.
"""

from typing import Any, NoReturn

from django.db import models
from django.utils import timezone

from audit.chain import GENESIS_HASH
from marketplace.actors import ActorType


class AppendOnly(Exception):
    """Something tried to change or remove an audit record."""


def _refuse(what: str) -> NoReturn:
    raise AppendOnly(f"audit records are append-only: {what} is refused")


class AppendOnlyQuerySet(models.QuerySet[Any]):
    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def delete(self) -> NoReturn:
        _refuse("delete")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("update")


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse(f"changing {self._meta.verbose_name} {self.pk}")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(f"deleting {self._meta.verbose_name} {self.pk}")


class AuditEventQuerySet(AppendOnlyQuerySet):
    def sealed(self) -> "AuditEventQuerySet":
        return self.filter(sequence__isnull=False)

    def unsealed(self) -> "AuditEventQuerySet":
        return self.filter(sequence__isnull=True)


class AuditEvent(AppendOnlyModel):
    """One event. `id` is the order of insertion (with gaps: rolled-back inserts use numbers
    too). Sealing gives the event its place in the chain: `sequence`, gapless from 1, and
    `hash`, which covers the record and `prev_hash`. Until then the three are null."""

    id = models.BigAutoField(primary_key=True, editable=False)
    sequence = models.PositiveBigIntegerField(null=True, unique=True, editable=False)
    occurred_at = models.DateTimeField(editable=False)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices, editable=False)
    actor_id = models.CharField(
        max_length=64, blank=True, editable=False, help_text="A user's uuid, or a service name."
    )
    action = models.CharField(max_length=64, editable=False)
    subject_type = models.CharField(max_length=32, editable=False)
    subject_id = models.CharField(max_length=64, editable=False)
    data = models.JSONField(default=dict, editable=False)
    # Null, not "", until sealed: the check constraint below ties the three together.
    prev_hash = models.CharField(max_length=64, null=True, editable=False)  # noqa: DJ001
    hash = models.CharField(max_length=64, null=True, editable=False)  # noqa: DJ001

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        db_table = "audit_event"
        verbose_name = "audit event"
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(sequence__isnull=True, prev_hash__isnull=True, hash__isnull=True)
                    | models.Q(sequence__isnull=False, prev_hash__isnull=False, hash__isnull=False)
                ),
                name="audit_event_sealed_whole",
                violation_error_message="an event is sealed with its sequence and both hashes",
            ),
        ]
        indexes = [
            # What the sealer reads: the unsealed events, in the order they were inserted.
            models.Index(
                fields=["id"], name="audit_event_unsealed", condition=models.Q(sequence=None)
            ),
            models.Index(fields=["occurred_at"], name="audit_event_time"),
            models.Index(fields=["action", "sequence"], name="audit_event_action"),
            models.Index(fields=["subject_type", "subject_id"], name="audit_event_subject"),
            models.Index(fields=["actor_type", "actor_id"], name="audit_event_actor"),
        ]

    def __str__(self) -> str:
        place = f"#{self.sequence}" if self.sequence is not None else f"unsealed ({self.id})"
        return f"{place} {self.action} {self.subject_type}:{self.subject_id}"

    @property
    def sealed(self) -> bool:
        return self.sequence is not None


class ChainHead(models.Model):
    """The last sealed event, one row. Only sealing moves it: on PostgreSQL the seal trigger
    does, in the statement that seals (the platform's role cannot write the row); on SQLite the
    append that seals inline does, under the database's write lock."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    sequence = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)
    occurred_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "audit_chain_head"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_head_one_row")]

    def __str__(self) -> str:
        return f"head at #{self.sequence}"


class Checkpoint(AppendOnlyModel):
    """A signature over the chain head: whoever holds the public key can tell that events up
    to `sequence` have not been rewritten since `signed_at`. Checkpoints form a chain of their
    own: each signs `previous`, the SHA-256 of the checkpoint before it (audit.chain.
    checkpoint_digest), so one removed from the middle breaks the next one's link. A copy of each
    is stored in the audit bucket, the witness of the last ones (docs/audit.md)."""

    sequence = models.PositiveBigIntegerField(unique=True, editable=False)
    hash = models.CharField(max_length=64, editable=False)
    # Null for checkpoints signed before chaining; unique, so the chain cannot fork.
    previous = models.CharField(  # noqa: DJ001
        max_length=64,
        unique=True,
        null=True,
        editable=False,
        help_text="SHA-256 of the previous checkpoint; null for those signed before chaining.",
    )
    signed_at = models.DateTimeField(editable=False)
    key_id = models.CharField(max_length=64, editable=False)
    signature = models.CharField(max_length=128, editable=False, help_text="Ed25519, base64url.")

    class Meta:
        db_table = "audit_checkpoint"
        ordering = ["-sequence"]

    def __str__(self) -> str:
        return f"checkpoint at #{self.sequence}"


class AuditExport(AppendOnlyModel):
    """A day's events, exported and stored under object lock. Registered only once both the
    file and its digest are stored, so a row always points at a complete export."""

    day = models.DateField(unique=True, editable=False)
    period_start = models.DateTimeField(editable=False)
    period_end = models.DateTimeField(editable=False)
    previous_sequence = models.PositiveBigIntegerField(editable=False)
    first_sequence = models.PositiveBigIntegerField(null=True, editable=False)
    last_sequence = models.PositiveBigIntegerField(null=True, editable=False)
    event_count = models.PositiveIntegerField(editable=False)
    file_sha256 = models.CharField(max_length=64, editable=False)
    file_size = models.PositiveBigIntegerField(editable=False)
    digest_sha256 = models.CharField(max_length=64, editable=False)
    key_id = models.CharField(max_length=64, editable=False)
    location = models.CharField(
        max_length=500, editable=False, help_text="s3://bucket/key or a local path."
    )
    retain_until = models.DateTimeField(null=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "audit_export"
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"audit export {self.day}"


class KernelCursor(models.Model):
    """How far the Kernel has acknowledged the chain. One row; the fan-out worker moves it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    acknowledged_sequence = models.PositiveBigIntegerField(default=0)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Failed pushes since the last ack.")
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "audit_kernel_cursor"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="audit_cursor_one_row")
        ]

    def __str__(self) -> str:
        return f"Kernel acknowledged #{self.acknowledged_sequence}"
