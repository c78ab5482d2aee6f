"""Checking the audit log in the database: every sealed event's hash and link, the chain head,
the checkpoints' chain and signatures, and the database against its outside witnesses (the
audit bucket's checkpoint copies and export digests, the Kernel's copy)."""

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection
from django.utils import timezone

from audit.chain import (
    GENESIS_HASH,
    STORED_COLUMNS,
    ChainCheck,
    Failure,
    checkpoint_link,
    checkpoint_message,
    digest_message,
    signature_problem,
    stored_record,
)
from audit.models import AuditEvent, ChainHead, Checkpoint
from audit.witnesses import Witness, witnesses_read
from marketplace.jwk import PublicKey
from marketplace.keystore import public_keys_from_store
from marketplace.models import SigningKeyPurpose

AUDIT_TABLES = ("audit_event", "audit_chain_head", "audit_checkpoint", "audit_export")


@dataclass
class ChainReport:
    events: int = 0
    last_sequence: int = 0
    checkpoints: int = 0
    unsealed: int = 0
    witnesses: list[Witness] = field(default_factory=list)
    witnessed_sequence: int = 0
    unwitnessed_events: int = 0
    unwitnessed_since: datetime | None = None
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

    def window(self) -> str:
        """The unwitnessed window, in words."""
        if not self.unwitnessed_events:
            return "every event is held by a witness"
        since = ""
        if self.unwitnessed_since is not None:
            age = (timezone.now() - self.unwitnessed_since).total_seconds()
            since = f", the oldest from {age:.1f} s ago"
        return (
            f"{self.unwitnessed_events} event(s) past #{self.witnessed_sequence} are held by no "
            f"witness yet{since}"
        )


def chain_verify(
    *,
    keys: dict[str, PublicKey] | None = None,
    chunk_size: int = 5000,
    witnesses: list[Witness] | None = None,
) -> ChainReport:
    """Reads the whole sealed chain once, in sequence order, with a server-side cursor.

    The log may be sealed further while it is read, so the chain is checked up to the head as
    read first: a seal moves the head in the statement that seals, so every event up to that
    head must be there. Events sealed meanwhile are left to the next check; one found past the
    head as read again afterwards was not sealed. `witnesses` defaults to reading them
    (audit.witnesses); pass [] to check the database alone."""
    if keys is None:
        keys = public_keys_from_store(purpose=SigningKeyPurpose.AUDIT)
    report = ChainReport()
    problems: list[tuple[str, str]] = []
    if witnesses is None:
        witnesses, problems = witnesses_read()
    report.witnesses = witnesses
    head = ChainHead.objects.filter(id=1).first()
    head_sequence = head.sequence if head else 0
    every_checkpoint = list(Checkpoint.objects.order_by("sequence"))
    checkpoints = [c for c in every_checkpoint if c.sequence <= head_sequence]
    beyond = [c for c in every_checkpoint if c.sequence > head_sequence]
    signed = {checkpoint.sequence: checkpoint for checkpoint in checkpoints}
    wanted = {witness.sequence for witness in witnesses}
    seen: dict[int, str] = {}

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
        if seq in wanted:
            seen[seq] = stored
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
    if report.failure is None:
        report.failure = (
            _head_problem(head, head_sequence, report, check.last_hash)
            or _beyond_problem(beyond)
            or _checkpoints_problem(checkpoints, keys, report)
            or _witness_problem(witnesses, seen, signed, keys, report)
        )
    if report.failure is None and problems:
        code, reason = problems[0]
        report.failure = Failure(code, reason)
    if report.failure is None:
        _window(report)
    report.notes += _role_notes()
    return report


def _head_problem(
    head: ChainHead | None, head_sequence: int, report: ChainReport, last_hash: str | None
) -> Failure | None:
    if head_sequence != report.last_sequence or (head and head.sequence and head.hash != last_hash):
        return Failure(
            "truncated",
            f"the chain head says event {head_sequence} is the last, but the table ends at "
            f"{report.last_sequence}: events were removed from the end",
            min(head_sequence, report.last_sequence) + 1,
        )
    # Read the last event first, then the head: an event sealed meanwhile has moved the head
    # past itself by the time the head is read.
    last_stored = AuditEvent.objects.sealed().order_by("-sequence")
    last_sequence = last_stored.values_list("sequence", flat=True).first() or 0
    head_now = ChainHead.objects.filter(id=1).values_list("sequence", flat=True).first() or 0
    if last_sequence > head_now:
        return Failure(
            "beyond_head",
            f"event {head_now + 1} is past the chain head (event {head_now}): it was written "
            "into the table, not sealed",
            head_now + 1,
        )
    return None


def _beyond_problem(beyond: list[Checkpoint]) -> Failure | None:
    """A checkpoint past the head as read first is fine only if the head has moved past it
    since (a checkpoint signed meanwhile); otherwise it signs events that are not there."""
    if not beyond:
        return None
    head_now = ChainHead.objects.filter(id=1).values_list("sequence", flat=True).first() or 0
    for checkpoint in beyond:
        if checkpoint.sequence > head_now:
            return Failure(
                "truncated",
                f"checkpoint {checkpoint.pk} signed event {checkpoint.sequence}, but the chain "
                f"ends at {head_now}: events were removed from the end, or the checkpoint "
                "was written into the table",
                head_now + 1,
            )
    return None


def _checkpoints_problem(
    checkpoints: list[Checkpoint], keys: dict[str, PublicKey], report: ChainReport
) -> Failure | None:
    """Each checkpoint's signature, and the link from each chained one to the one before."""
    before: Checkpoint | None = None
    for checkpoint in checkpoints:
        message = checkpoint_message(
            sequence=checkpoint.sequence,
            chain_hash=checkpoint.hash,
            signed_at=checkpoint.signed_at,
            key_id=checkpoint.key_id,
            previous=checkpoint.previous,
        )
        problem = signature_problem(message, checkpoint.signature, checkpoint.key_id, keys)
        if problem is not None:
            return Failure(
                "unknown_key" if checkpoint.key_id not in keys else "bad_signature",
                f"checkpoint {checkpoint.pk} is {problem}",
                checkpoint.sequence,
            )
        if checkpoint.previous is not None:
            expected = checkpoint_link(before.signature) if before else GENESIS_HASH
            if checkpoint.previous != expected:
                after = f"the one at event {before.sequence}" if before else "none"
                return Failure(
                    "checkpoint_chain",
                    f"checkpoint at event {checkpoint.sequence} does not follow {after}: a "
                    "checkpoint between them was deleted or replaced",
                    checkpoint.sequence,
                )
        elif before is not None and before.previous is not None:
            return Failure(
                "checkpoint_chain",
                f"checkpoint at event {checkpoint.sequence} has no link, after chained ones",
                checkpoint.sequence,
            )
        if checkpoint.sequence > report.last_sequence:
            return Failure(
                "truncated",
                f"checkpoint {checkpoint.pk} signed event {checkpoint.sequence}, but the chain "
                f"ends at {report.last_sequence}: events were removed from the end",
                report.last_sequence + 1,
            )
        before = checkpoint
        report.checkpoints += 1
    return None


def _witness_problem(
    witnesses: list[Witness],
    seen: dict[int, str],
    signed: dict[int, Checkpoint],
    keys: dict[str, PublicKey],
    report: ChainReport,
) -> Failure | None:
    for witness in witnesses:
        if witness.sequence > report.last_sequence:
            return Failure(
                "witness_truncated",
                f"{witness.name} holds event {witness.sequence}, but the database's chain ends "
                f"at {report.last_sequence}: events it saw were deleted",
                report.last_sequence + 1,
            )
        if seen.get(witness.sequence) != witness.hash:
            return Failure(
                "witness_mismatch",
                f"{witness.name} holds event {witness.sequence} with hash {witness.hash[:16]}…, "
                "the database another: the chain was rewritten after the witness saw it",
                witness.sequence,
            )
        if witness.digest is not None:
            digest = witness.digest
            problem = signature_problem(
                digest_message(digest),
                str(digest.get("signature")),
                str(digest.get("key_id")),
                keys,
            )
            if problem is not None:
                return Failure("bad_signature", f"{witness.name} is {problem}", witness.sequence)
        document = witness.checkpoint
        if document is None:
            continue
        message = checkpoint_message(
            sequence=witness.sequence,
            chain_hash=witness.hash,
            signed_at=datetime.fromisoformat(str(document.get("signed_at"))),
            key_id=str(document.get("key_id")),
            previous=document.get("previous"),
        )
        problem = signature_problem(
            message, str(document.get("signature")), str(document.get("key_id")), keys
        )
        if problem is not None:
            return Failure("bad_signature", f"{witness.name} is {problem}", witness.sequence)
        stored = signed.get(witness.sequence)
        if stored is None or stored.signature != document.get("signature"):
            return Failure(
                "checkpoint_missing",
                f"{witness.name} (event {witness.sequence}) is not among the database's "
                "checkpoints: it was deleted or replaced",
                witness.sequence,
            )
    return None


def _window(report: ChainReport) -> None:
    report.witnessed_sequence = max((w.sequence for w in report.witnesses), default=0)
    unsealed = AuditEvent.objects.unsealed()
    report.unsealed = unsealed.count()
    report.unwitnessed_events = report.last_sequence - report.witnessed_sequence + report.unsealed
    times = list(
        AuditEvent.objects.filter(sequence=report.witnessed_sequence + 1).values_list(
            "occurred_at", flat=True
        )
    ) + list(unsealed.order_by("id").values_list("occurred_at", flat=True)[:1])
    report.unwitnessed_since = min(times) if times else None


def _role_notes() -> list[str]:
    """A warning when the platform runs as the owner of the audit tables."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s) "
            "AND pg_has_role(current_user, relowner, 'USAGE')",
            [list(AUDIT_TABLES)],
        )
        owned = sorted(row[0] for row in cursor.fetchall())
    if not owned:
        return []
    return [
        f"this database role owns {', '.join(owned)}: it could disable the triggers that "
        "guard them; run the platform as a role that does not (docs/deploy.md#database-roles)"
    ]
