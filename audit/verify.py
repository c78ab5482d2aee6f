"""Checking the audit log in the database: every event's hash and link, the chain head, and
every checkpoint's signature against the hash it signed."""

import hashlib
from dataclasses import dataclass, field

from audit.chain import (
    STORED_COLUMNS,
    ChainCheck,
    Failure,
    checkpoint_message,
    signature_problem,
    stored_record,
)
from audit.models import AuditEvent, ChainHead, Checkpoint
from marketplace.jwk import PublicKey
from marketplace.keystore import public_keys_from_store
from marketplace.models import SigningKeyPurpose


@dataclass
class ChainReport:
    events: int = 0
    last_sequence: int = 0
    checkpoints: int = 0
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def summary(self) -> str:
        if self.failure is not None:
            return f"FAILED at {self.failure}"
        return (
            f"OK: {self.events} events (last #{self.last_sequence}) chain, "
            f"{self.checkpoints} checkpoint signature(s) verify"
        )


def chain_verify(
    *, keys: dict[str, PublicKey] | None = None, chunk_size: int = 5000
) -> ChainReport:
    """Reads the whole chain once, in sequence order, with a server-side cursor.

    The log may be appended to while it is read (each statement sees what had committed when
    it began), so the chain is checked up to the head as read first: an append commits its
    event and the head together, so every event up to that head must be there. Events
    appended meanwhile are left to the next check; one found past the head as read again
    afterwards did not come through audit_append."""
    if keys is None:
        keys = public_keys_from_store(purpose=SigningKeyPurpose.AUDIT)
    report = ChainReport()
    head = ChainHead.objects.filter(id=1).first()
    head_sequence = head.sequence if head else 0
    checkpoints = list(Checkpoint.objects.filter(sequence__lte=head_sequence).order_by("sequence"))
    signed = {checkpoint.sequence: checkpoint for checkpoint in checkpoints}

    check = ChainCheck()
    sha256 = hashlib.sha256
    rows = (
        AuditEvent.objects.filter(sequence__lte=head_sequence)
        .order_by("sequence")
        .values_list(*STORED_COLUMNS)
    )
    for row in rows.iterator(chunk_size=chunk_size):
        seq, prev, stored, body = stored_record(row)
        check.add(seq, prev, stored, sha256(body).hexdigest())
        if check.settled:
            break
        checkpoint = signed.get(seq)
        if checkpoint is not None and checkpoint.hash != stored and check.failure is None:
            check.failure = Failure(
                "hash_mismatch",
                f"the event's hash is not the one checkpoint {checkpoint.pk} signed at "
                f"{checkpoint.signed_at:%Y-%m-%d %H:%M:%S} UTC: the chain was rewritten from "
                "here on",
                seq,
            )
            break
    check.finish()
    report.events = check.count
    report.last_sequence = check.last_sequence or 0
    report.failure = check.failure
    if report.failure is not None:
        return report

    if head_sequence != report.last_sequence or (
        head and head.sequence and head.hash != check.last_hash
    ):
        report.failure = Failure(
            "truncated",
            f"the chain head says event {head_sequence} is the last, but the table ends at "
            f"{report.last_sequence}: events were removed from the end",
            min(head_sequence, report.last_sequence) + 1,
        )
        return report

    # Read the last event first, then the head: an event appended meanwhile has moved the
    # head past itself by the time the head is read.
    last_stored = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True)
    last_sequence = last_stored.first() or 0
    head_now = ChainHead.objects.filter(id=1).values_list("sequence", flat=True).first() or 0
    if last_sequence > head_now:
        report.failure = Failure(
            "beyond_head",
            f"event {head_now + 1} is past the chain head (event {head_now}): it was written "
            "into the table, not appended to the log",
            head_now + 1,
        )
        return report

    for checkpoint in checkpoints:
        message = checkpoint_message(
            sequence=checkpoint.sequence,
            chain_hash=checkpoint.hash,
            signed_at=checkpoint.signed_at,
            key_id=checkpoint.key_id,
        )
        problem = signature_problem(message, checkpoint.signature, checkpoint.key_id, keys)
        if problem is not None:
            report.failure = Failure(
                "unknown_key" if checkpoint.key_id not in keys else "bad_signature",
                f"checkpoint {checkpoint.pk} is {problem}",
                checkpoint.sequence,
            )
            return report
        if checkpoint.sequence > report.last_sequence:
            report.failure = Failure(
                "truncated",
                f"checkpoint {checkpoint.pk} signed event {checkpoint.sequence}, but the chain "
                f"ends at {report.last_sequence}: events were removed from the end",
                report.last_sequence + 1,
            )
            return report
        report.checkpoints += 1
    return report
