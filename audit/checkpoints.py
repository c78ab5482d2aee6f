"""Signing the chain's head: a checkpoint pins every sealed event up to it to the audit key.

Checkpoints are chained (each signs `previous`, the link to the one before it) and each is
copied to the audit bucket once committed, where the database's owner cannot reach it
(audit.witnesses). How long sealed events wait for a checkpoint is what
`marketplace_audit_unwitnessed_seconds` measures.
"""

import logging

from django.db import DatabaseError, transaction
from django.utils import timezone
from prometheus_client import Gauge

from audit.chain import GENESIS_HASH, checkpoint_link, checkpoint_message
from audit.models import AuditEvent, ChainHead, Checkpoint
from audit.sealer import seal_all
from audit.signing_keys import signing_key_active
from audit.witnesses import (
    WitnessInvalid,
    WitnessUnavailable,
    checkpoint_witness_latest,
    checkpoint_witness_store,
)
from marketplace.jwk import b64url
from marketplace.keystore import signer_for
from marketplace.models import SigningKeyPurpose

logger = logging.getLogger(__name__)

unwitnessed_events = Gauge(
    "marketplace_audit_unwitnessed_events",
    "Audit events (sealed or not) past the one the audit bucket's last checkpoint copy holds, "
    "read back from the bucket after each checkpoint run.",
    multiprocess_mode="livemostrecent",
)
unwitnessed_seconds = Gauge(
    "marketplace_audit_unwitnessed_seconds",
    "Age of the oldest audit event no witness holds yet (0 when every event is witnessed).",
    multiprocess_mode="livemostrecent",
)


def checkpoint_create() -> Checkpoint | None:
    """Seals what is pending, signs the head with the audit key and stores the checkpoint's
    witness copy. None when the head is already signed."""
    seal_all()
    # The key first: creating it appends an event, which this checkpoint then covers.
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.AUDIT))
    seal_all()
    head = ChainHead.objects.filter(id=1).values("sequence", "hash").first()
    if not head or not head["sequence"]:
        return None
    last = Checkpoint.objects.order_by("-sequence").first()
    if last is not None and last.sequence >= head["sequence"]:
        _store_witness(last)
        return None
    signed_at = timezone.now()
    previous = checkpoint_link(last.signature) if last is not None else GENESIS_HASH
    message = checkpoint_message(
        sequence=head["sequence"],
        chain_hash=head["hash"],
        signed_at=signed_at,
        key_id=signer.kid,
        previous=previous,
    )
    checkpoint = Checkpoint(
        sequence=head["sequence"],
        hash=head["hash"],
        previous=previous,
        signed_at=signed_at,
        key_id=signer.kid,
        signature=b64url(signer.sign(message)),
    )
    try:
        with transaction.atomic():
            checkpoint.save()
    except DatabaseError:
        # Two beats raced to sign: the unique constraints or, on PostgreSQL, the link trigger
        # (the other checkpoint came first, so this one's `previous` is stale) refuse the
        # second. The other one's checkpoint is as good; anything else is raised.
        if Checkpoint.objects.filter(sequence__gte=checkpoint.sequence).exists():
            return None
        raise
    _store_witness(checkpoint)
    return checkpoint


def _store_witness(checkpoint: Checkpoint) -> None:
    try:
        checkpoint_witness_store(checkpoint)
    except Exception:
        # The checkpoint stands; its copy is stored by the next run (which finds the head
        # signed and stores the last checkpoint's copy again, a no-op once it is there).
        logger.exception("audit: the copy of checkpoint %s was not stored", checkpoint.sequence)
    unwitnessed_update()


def unwitnessed_update() -> tuple[int, float]:
    """Sets the gauges from what the bucket holds, read back (a copy that failed to store, or
    a bucket that cannot be read, shows as a window that grows); returns (events, seconds)."""
    try:
        witness = checkpoint_witness_latest()
    except (WitnessUnavailable, WitnessInvalid, OSError):
        witness = None
    witnessed = witness.sequence if witness is not None else 0
    head = ChainHead.objects.filter(id=1).values_list("sequence", flat=True).first() or 0
    # By the indexes: sequence for the sealed, the unsealed events' own for the rest.
    unsealed = AuditEvent.objects.unsealed()
    count = max(head - witnessed, 0) + unsealed.count()
    times = [
        AuditEvent.objects.filter(sequence=witnessed + 1).values_list("occurred_at", flat=True),
        unsealed.order_by("id").values_list("occurred_at", flat=True)[:1],
    ]
    found = [moment for query in times for moment in query]
    oldest = min(found) if found else None
    seconds = max((timezone.now() - oldest).total_seconds(), 0.0) if oldest else 0.0
    unwitnessed_events.set(count)
    unwitnessed_seconds.set(seconds)
    return count, seconds
